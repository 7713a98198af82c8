"""srtool sweep on real images: a 2x2 grid of tiny SRResNet runs on a T91 subset, end to end.

The table equals srtool eval on each point's export; a sweep killed with SIGKILL in the middle of its
second point and run again ends with exports bitwise equal to an uninterrupted sweep; a point that
hits a non-finite loss is recorded while the others finish; a bad grid fails before any training;
--dry-run prints the ordinary `srtool train` commands.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srtool.errors import UserError
from srtool.threads import usable_cores
from srtool.evaluate import run_eval
from srtool.sweep import SweepOptions, SweepRunner, point_name, read_manifest, run_sweep, split_values, visible_gpus
from srtool.sweep_report import evaluate_sweep
from cli_runner import run_cli

T91_IMAGES = ["t1.png", "t2.png", "t3.png", "t5.png", "t8.png", "t10.png", "t11.png", "t12.png"]
EVAL_IMAGES = ["bird", "head"]
GRID = ["model.generator.n_blocks=1,2", "train.hr_crop=32,48"]


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory) -> dict[str, Path]:
    """A prepared T91 subset for training and a two-image Set5 subset for validation and the table."""
    from srtool.prepare import prepare_folder

    root = tmp_path_factory.mktemp("sweep-data")
    t91 = root / "T91sub"
    t91.mkdir()
    for name in T91_IMAGES:
        (t91 / name).symlink_to(shared_data / "train" / "T91" / name)
    train = prepare_folder([t91], root / "train", scale=4, workers=1, progress=False)
    mini = root / "Set5mini"
    for sub in ("HR", "LR_bicubic/X4"):
        (mini / sub).mkdir(parents=True)
        for name in EVAL_IMAGES:
            (mini / sub / f"{name}.png").symlink_to(shared_data / "benchmarks" / "Set5" / sub / f"{name}.png")
    return {"train": train, "eval": mini}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # deterministic and light on a shared 2-core machine; the points' processes inherit it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def common(data: dict[str, Path]) -> list[str]:
    return ["model.generator.n_feats=8", "train.batch_size=2", "train.epochs=1", "train.iters_per_epoch=6",
            "train.num_workers=0", "checkpoint.every=2", "log.every=1", "validation.every=6",
            f"validation.datasets=['{data['eval']}']", "train.lr=1e-3", "train.ema_decay=0.5"]


def sweep_options(data, out: Path, grid=GRID, extra=(), **kw) -> SweepOptions:
    return SweepOptions(preset="srresnet", data=[data["train"]], out=out, grid=list(grid),
                        overrides=[*common(data), *extra], evals=[str(data["eval"])], progress=False, **kw)


def cli_args(data, out: Path, grid=GRID, extra=()) -> list[str]:
    args = ["sweep", "--preset", "srresnet", "--data", str(data["train"]), "--out", str(out), "--no-progress",
            "--eval", str(data["eval"])]
    for item in grid:
        args += ["--grid", item]
    for item in [*common(data), *extra]:
        args += ["--set", item]
    return args


NAMES = ["n_blocks=1,hr_crop=32,seed=0", "n_blocks=1,hr_crop=48,seed=0",
         "n_blocks=2,hr_crop=32,seed=0", "n_blocks=2,hr_crop=48,seed=0"]


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> Path:
    """An uninterrupted 2x2 sweep."""
    out = tmp_path_factory.mktemp("whole") / "sweep"
    messages: list[str] = []
    result = run_sweep(sweep_options(data, out), say=messages.append)
    assert result.completed and result.count("done") == 4, messages
    return out


def export_tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(run_dir / "exports" / f"{name}.safetensors") for name in ("best", "last")}


# ----------------------------------------------------------------------------------- cheap checks


def test_values_split_on_top_level_commas_and_names_are_safe():
    assert split_values("8,16, 32") == ["8", "16", "32"]
    assert split_values("['a','b,c'],['d']") == ["['a','b,c']", "['d']"]
    assert point_name({"model.generator.n_blocks": "8", "train.seed": "0"},
                      {"model.generator.n_blocks": "n_blocks", "train.seed": "seed"}) == "n_blocks=8,seed=0"
    odd = point_name({"validation.datasets": "['/x/y']"}, {"validation.datasets": "datasets"})
    assert "/" not in odd and not odd.startswith(".") and odd.startswith("datasets=__")
    assert odd != point_name({"validation.datasets": "['/x/z']"}, {"validation.datasets": "datasets"})


def test_invalid_grid_value_or_field_fails_before_any_training(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = run_cli(*cli_args(data, out, grid=["model.generator.n_blocks=1,abc", "train.hr_crop=32,48"]))
    err = capsys.readouterr().err
    assert code == 2 and "n_blocks=abc" in err and "model.generator.n_blocks" in err and "Traceback" not in err
    assert not out.exists()
    code = run_cli(*cli_args(data, out, grid=["model.generator.n_blokcs=1,2"]))
    err = capsys.readouterr().err
    assert code == 2 and "n_blokcs" in err and "unknown field" in err and not out.exists()
    code = run_cli(*cli_args(data, out, grid=["train.hr_crop=32,50"]))  # 50 is not a multiple of the scale
    err = capsys.readouterr().err
    assert code == 2 and "hr_crop=50" in err and "multiple of the scale" in err and not out.exists()


def test_grid_values_that_mean_the_same_are_refused_before_any_training(data, tmp_path, capsys):
    """`--grid train.lr=0.0001,1e-4` spells one value twice: two identical trainings (twice the time, two
    equal rows in the table). Refused, exit 2, naming both points, like a literally repeated value."""
    out = tmp_path / "sweep"
    code = run_cli(*cli_args(data, out, grid=["train.lr=0.0001,1e-4"]), "--dry-run")
    err = capsys.readouterr().err
    assert code == 2 and "lr=0.0001,seed=0" in err and "lr=1e-4,seed=0" in err and "same" in err
    assert "Traceback" not in err and not out.exists()


def test_out_with_a_tilde_is_the_home_folder(data, tmp_path, capsys, monkeypatch):
    """`--out=~/sweeps/a` (bash leaves a ~ after `=` alone) planned runs under a folder literally named `~`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert run_cli(*cli_args(data, Path("~/sweeps/a"), grid=["train.lr=1e-3,2e-3"]), "--dry-run") == 0
    outs = [shlex.split(line)[shlex.split(line).index("--out") + 1] for line in capsys.readouterr().out.splitlines()]
    assert outs == [str(tmp_path / "home" / "sweeps" / "a" / f"lr={v},seed=0") for v in ("1e-3", "2e-3")]


def test_dry_run_prints_each_points_train_command(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_cli(*cli_args(data, out), "--dry-run") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and not out.exists()
    for line, name in zip(lines, NAMES):
        argv = shlex.split(line)
        assert argv[:4] == ["srtool", "train", "--preset", "srresnet"]
        assert argv[argv.index("--out") + 1] == str(out / name)
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        assert sets[-3:] == [f"model.generator.n_blocks={name[9]}", f"train.hr_crop={name[19:21]}", "train.seed=0"]


def test_random_vgg_smoke_test_option_reaches_each_point(data, tmp_path, capsys):
    """train refuses --vgg-weights random unless --allow-random-vgg, and says so; sweep must accept that option
    too and pass it to every point (it did not exist there: a GAN sweep's points failed asking for it)."""
    out = tmp_path / "sweep"
    args = ["sweep", "--preset", "srgan", "--data", str(data["train"]), "--out", str(out),
            "--grid", "model.generator.n_blocks=1,2", "--set", "validation.datasets=[]", "--vgg-weights", "random",
            "--allow-random-vgg", "--dry-run"]
    assert run_cli(*args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        argv = shlex.split(line)
        assert argv[argv.index("--vgg-weights") + 1] == "random" and "--allow-random-vgg" in argv


# --------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_table_equals_srtool_eval_on_each_export_and_rerun_is_a_no_op(data, whole, capsys):
    report = evaluate_sweep(whole, progress=False)
    assert [row.points for row in report.rows] == [[n] for n in NAMES]
    assert report.axes == ["model.generator.n_blocks", "train.hr_crop", "train.seed"]
    for row, name in zip(report.rows, NAMES):
        assert row.values == {"model.generator.n_blocks": name[9], "train.hr_crop": name[19:21]}
        export = whole / name / "exports" / "best.safetensors"
        reference = run_eval([str(export)], [str(data["eval"])], "y", "cpu", progress=False)
        cell = reference.results[0]
        assert row.cells[("Set5mini", "psnr")].values == [cell.psnr]
        assert row.cells[("Set5mini", "ssim")].values == [cell.ssim]
    doc = json.loads((whole / "report.json").read_text())
    assert doc["schema"] == "srtool-sweep-report/1" and doc["rows"][0]["scores"]["Set5mini"]["psnr"]["std"] is None
    assert "| n_blocks | hr_crop | seeds | Set5mini PSNR | Set5mini SSIM |" in (whole / "report.md").read_text()
    assert (whole / "report.csv").read_text().count("(mean)") == 4
    for figure in ("curves.png", "comparison.png"):
        from PIL import Image

        with Image.open(whole / figure) as image:
            assert image.format == "PNG" and image.width > 400
    # the manifest records every point's resolved config
    manifest = read_manifest(whole)
    assert [p["status"] for p in manifest["points"]] == ["done"] * 4
    assert manifest["points"][3]["config"]["model"]["generator"]["n_blocks"] == 2
    # the same command again: nothing trains, nothing changes
    before = {p: p.stat().st_mtime_ns for p in whole.glob("*/exports/*.safetensors")}
    messages: list[str] = []
    result = run_sweep(sweep_options(data, whole), say=messages.append)
    assert result.count("done") == 4 and not any(m.startswith("starting") for m in messages)
    assert {p: p.stat().st_mtime_ns for p in whole.glob("*/exports/*.safetensors")} == before
    # a wider grid adds points only; a changed config is an error naming the field
    assert run_cli(*cli_args(data, whole, grid=["model.generator.n_blocks=1,2,3", "train.hr_crop=32,48"]), "--dry-run") == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(c)[shlex.split(c).index("--out") + 1] for c in printed] == [
        str(whole / "n_blocks=3,hr_crop=32,seed=0"), str(whole / "n_blocks=3,hr_crop=48,seed=0")]
    with pytest.raises(UserError, match=r"n_blocks=1,hr_crop=32,seed=0: its resolved config differs.*train\.lr"):
        run_sweep(sweep_options(data, whole, extra=["train.lr=2e-3"]))


def test_failing_point_is_recorded_and_the_others_finish(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["loss.pixel.weight=1,1e300", "model.generator.n_blocks=1"]  # 1e300 makes the loss infinite
    assert run_cli(*cli_args(data, out, grid=grid, extra=["train.hr_crop=32"]), "--jobs", "2") == 1
    err = capsys.readouterr().err
    assert "1 done, 1 failed" in err and "failed: weight=1e300,n_blocks=1,seed=0" in err
    points = {p["name"]: p for p in read_manifest(out)["points"]}
    assert points["weight=1,n_blocks=1,seed=0"]["status"] == "done"
    failed = points["weight=1e300,n_blocks=1,seed=0"]
    assert failed["status"] == "failed" and "non-finite loss at iteration 1" in failed["reason"]
    report = evaluate_sweep(out, progress=False)
    assert report.rows[1].scored == [] and "FAILED" in report.rows[1].notes[0]
    assert "FAILED (non-finite loss" in (out / "report.md").read_text()
    # re-running skips the failed point (its failure is deterministic) unless --retry
    messages: list[str] = []
    result = run_sweep(sweep_options(data, out, grid=grid, extra=["train.hr_crop=32"]), say=messages.append)
    assert result.count("failed") == 1 and not any(m.startswith("starting") for m in messages)


@pytest.mark.slow
def test_sigkill_in_the_second_point_then_rerun_matches_an_uninterrupted_sweep(data, whole, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "srtool", *cli_args(data, out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    second = out / NAMES[1] / "checkpoints"
    deadline = time.monotonic() + 300
    while not (second / "iter_00000002.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before the kill"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running point, without warning
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (second / "iter_00000006.pt").exists(), "the kill came too late to test anything"
    assert {p["name"]: p["status"] for p in read_manifest(out)["points"]}[NAMES[1]] == "running"
    messages: list[str] = []
    result = run_sweep(sweep_options(data, out), say=messages.append)
    assert result.count("done") == 4
    assert any(m.startswith(f"resuming {NAMES[1]}") for m in messages)
    assert not any(NAMES[0] in m for m in messages if m.startswith(("starting", "resuming")))
    for name in NAMES:
        a, b = export_tensors(whole / name), export_tensors(out / name)
        for which in ("best", "last"):
            assert a[which].keys() == b[which].keys()
            assert all(torch.equal(a[which][k], b[which][k]) for k in a[which]), (name, which)


def test_max_minutes_ends_a_point_with_a_checkpoint_and_an_export(data, tmp_path):
    out = tmp_path / "sweep"
    budget = ["train.iters_per_epoch=1000000", "validation.datasets=[]", "checkpoint.every=1000000", "train.hr_crop=32"]
    options = sweep_options(data, out, grid=["model.generator.n_blocks=1"], extra=budget, max_minutes=0.03)
    result = run_sweep(options, say=lambda m: None)
    point = result.points[0]
    assert point.status == "stopped" and "time budget of 0.03 min" in point.reason
    run_dir = out / point.name
    assert 0 < point.iteration < 1000000
    assert (run_dir / "checkpoints" / f"iter_{point.iteration:08d}.pt").is_file()
    assert (run_dir / "exports" / "last.safetensors").is_file()
    assert read_manifest(out)["points"][0]["status"] == "stopped"
    messages: list[str] = []  # a stopped point is finished for a re-run (--retry continues it)
    assert run_sweep(options, say=messages.append).points[0].status == "stopped"
    assert not any(m.startswith(("starting", "resuming")) for m in messages)


def test_jobs_give_each_point_its_own_gpu_or_a_share_of_the_cpu(data, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus("auto") == ["0", "1"] and visible_gpus("cpu") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert visible_gpus("auto") == []  # one GPU: every point uses it
    runner = SweepRunner(sweep_options(data, tmp_path, jobs=2), [], {"points": []})
    assert runner._environment(None)["OMP_NUM_THREADS"] == str(max(1, usable_cores() // 2))
    assert runner._environment("1")["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.slow  # ~15 s: a sweep process and its training child start torch
def test_sigterm_ends_the_sweep_with_143_and_the_point_resumable(data, tmp_path):
    """`kill PID` / `timeout` / a scheduler's SIGTERM: the sweep stopped its points properly but exited 130
    (the Ctrl-C status); `srtool train` exits 143 (128 + SIGTERM) for it. Now the sweep does too."""
    out = tmp_path / "sweep"
    args = cli_args(data, out, grid=["train.lr=1e-3"], extra=["train.iters_per_epoch=5000", "validation.every=5000"])
    proc = subprocess.Popen([sys.executable, "-m", "srtool", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = out / "lr=1e-3,seed=0" / "checkpoints" / "iter_00000002.pt"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read()
    assert [p["status"] for p in read_manifest(out)["points"]] == ["interrupted"]


def test_manifest_keeps_eval_and_data_folders_absolute_so_a_report_runs_from_anywhere(data, tmp_path, monkeypatch):
    """`srtool sweep --eval sets/mine` from one folder, `srtool sweep report` from another: the relative
    path was stored as typed and no longer found."""
    import dataclasses

    from srtool.sweep import manifest_document

    (tmp_path / "sets" / "mine").mkdir(parents=True)
    (tmp_path / "t").mkdir()
    (tmp_path / "Set5").mkdir()  # a flat folder named like a known set: eval reads the data dir's Set5
    (tmp_path / "Set14" / "HR").mkdir(parents=True)  # ... unless the folder is a dataset (HR/): then this one
    monkeypatch.chdir(tmp_path)
    options = dataclasses.replace(sweep_options(data, tmp_path / "sw"), evals=["sets/mine", "Set5", "Set14"],
                                  data=[Path("t")])
    doc = manifest_document(options, [], None)
    assert doc["eval"] == [str(tmp_path / "sets" / "mine"), "Set5", str(tmp_path / "Set14")]
    assert doc["data"] == [str(tmp_path / "t")]
