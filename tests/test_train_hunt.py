"""The researcher's path under adversarial use (trainhunt): two trainings on one run directory, keys of one
preset's networks given to another, a run resumed from elsewhere. Tiny networks on a real T91 store."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from cli_runner import run_cli, run_cli_err
from test_train_habits import t91_subset  # noqa: F401  (the prepared T91 subset fixture)
from srtool.train import TrainOptions
from srtool.train.engine import Trainer

TINY = ["model.generator.n_blocks=1", "model.generator.n_feats=8", "train.batch_size=2", "train.hr_crop=32",
        "train.num_workers=0", "validation.datasets=[]", "log.every=1", "checkpoint.every=2",
        "train.iters_per_epoch=2", "train.epochs=1"]


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store(t91_subset) -> Path:
    """Eight T91 images prepared by srtool prepare (a real, small training store)."""
    return t91_subset


@pytest.fixture(scope="module")
def finished_run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    code = run_cli("train", "--preset", "srresnet", "--data", str(store), "--out", str(out), "--device", "cpu",
                   "--no-progress", "-q", *sets(TINY))
    assert code == 0
    return out


def test_a_second_training_on_a_run_in_progress_is_refused_and_the_first_loses_nothing(finished_run, store, tmp_path,
                                                                                       capsys):
    """Two `--resume RUN --set train.epochs=N` at once (or `--out RUN --overwrite` next to a running run) both
    trained: each rewrote log.jsonl under the other (one's records lost), both wrote the same checkpoints and
    --overwrite deleted the running one's folders. Now the second is one line, exit 2, nothing touched."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    first = Trainer(TrainOptions(resume=run, overrides=["train.epochs=2"], device="cpu", progress=False, quiet=True))
    try:
        before = digest(run)
        for args in (["--resume", str(run), "--set", "train.epochs=3"],
                     ["--preset", "srresnet", "--data", str(store), "--out", str(run), "--overwrite", *sets(TINY)]):
            code, err = run_cli_err(capsys, "train", *args, "--device", "cpu", "--no-progress")
            assert code == 2, err
            assert f"{run}: another srtool train is training in this run directory" in err
            assert "Traceback" not in err
            assert digest(run) == before
        result = first.run()
    finally:
        first.close()
    assert result.iteration == 4
    records = (run / "log.jsonl").read_text().splitlines()
    assert [int(line.split('"iter": ')[1].split(",")[0]) for line in records] == [1, 2, 3, 4]
    # finished (or killed: the kernel drops the lock), the run is free again
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--set", "train.epochs=3", "--device", "cpu",
                            "--no-progress", "-q")
    assert code == 0, err


def test_discriminator_keys_on_a_psnr_preset_say_which_presets_take_them(store, tmp_path, capsys):
    """`--set model.discriminator.n_blocks=2` on srresnet said "model.discriminator: Unable to extract tag
    using discriminator 'arch'" (pydantic's words)."""
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(store), "--out", str(tmp_path / "r"),
                            "--set", "model.discriminator.n_blocks=2")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "model.discriminator.arch is missing (one of vgg_discriminator, vgg_style_128)" in lines[0]
    assert "gan-stage presets (srgan, esrgan)" in lines[0]
    assert not (tmp_path / "r").exists()


def test_resume_from_another_directory_validates_on_the_folder_the_run_started_with(store, shared_data, tmp_path,
                                                                                   monkeypatch, capsys):
    """`validation.datasets=["val"]` (a relative folder) stayed as typed: `--resume` from another working
    directory failed ("no such folder") or, where that directory has its own `val/`, validated and picked the
    best export on other images without a word."""
    import json

    def val_folder(where: Path, names: list[str], set_name: str) -> None:
        for sub in ("HR", "LR_bicubic/X4"):
            (where / "val" / sub).mkdir(parents=True)
            for name in names:
                (where / "val" / sub / f"{name}.png").symlink_to(shared_data / "benchmarks" / set_name / sub / f"{name}.png")

    first, other = tmp_path / "first", tmp_path / "other"
    val_folder(first, ["bird", "head"], "Set5")
    val_folder(other, ["baboon", "zebra"], "Set14")
    run = tmp_path / "run"
    monkeypatch.chdir(first)
    overrides = [*TINY, 'validation.datasets=["val"]', 'validation.metrics=["psnr"]', "validation.every=2"]
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(store), "--out", str(run),
                            "--device", "cpu", "--no-progress", "-q", *sets(overrides))
    assert code == 0, err
    monkeypatch.chdir(other)
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--set", "train.epochs=2", "--device", "cpu",
                            "--no-progress", "-q")
    assert code == 0, err
    logged = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "val"]
    assert [r["iter"] for r in logged] == [2, 4]
    # the value logged at iteration 4 is the started-with folder's score of that iteration's export
    report = tmp_path / "eval.json"
    code, err = run_cli_err(capsys, "eval", "-m", str(run / "exports" / "last.safetensors"), "--data",
                            str(first / "val"), "--metric", "psnr", "--device", "cpu", "--no-progress", "-q",
                            "--json", str(report))
    assert code == 0, err
    assert json.loads(report.read_text())["results"][0]["psnr"] == logged[-1]["val/psnr"]
    # that folder gone: one line naming the run's record, not a silent switch to ./val
    shutil.move(first / "val", tmp_path / "moved")
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--set", "train.epochs=3", "--device", "cpu",
                            "--no-progress")
    assert code == 2
    assert f"{run / 'run.json'}: the recorded validation dataset 'val' ({first / 'val'}) is missing" in err


def test_crop_larger_than_every_image_suggests_a_crop_that_fits(shared_data, tmp_path, capsys):
    """T91's two smallest images (78 and 105 px) with the presets' 128 px crop: the advice was always
    `--set train.hr_crop=96`, which is still too large for a 78 px image set; now the largest that fits."""
    from srtool.prepare import prepare_folder

    src = tmp_path / "small"
    src.mkdir()
    for name in ("t20.png", "t9.png"):
        (src / name).symlink_to(shared_data / "train" / "T91" / name)
    data = prepare_folder([src], tmp_path / "prepared", scale=4, workers=1, progress=False)
    args = ["train", "--preset", "srresnet", "--data", str(data), "--device", "cpu", "--no-progress", "-q",
            *sets([o for o in TINY if not o.startswith("train.hr_crop")])]
    code, err = run_cli_err(capsys, *args, "--out", str(tmp_path / "a"), "--set", "train.hr_crop=128")
    assert code == 2 and "Traceback" not in err
    assert "lower train.hr_crop (--set train.hr_crop=104 or less) or add larger images" in err
    code, err = run_cli_err(capsys, *args, "--out", str(tmp_path / "b"), "--set", "train.hr_crop=104")
    assert code == 0, err
    assert "skipped 1 of 2 training sub-images smaller than the 104 px crop" in err


@pytest.mark.parametrize("metrics, small, message", [
    ('["psnr", "niqe"]', "t20", "76x76 is too small for NIQE"),
    ('["psnr", "ssim"]', "crop16", "16x16 is too small to score"),
])
def test_a_validation_image_too_small_for_its_metrics_is_refused_before_training(store, shared_data, tmp_path, capsys,
                                                                                 metrics, small, message):
    """Found only at the first validation (`validation.every` iterations in, before that iteration's
    checkpoint: the iterations were lost), and NIQE's as "internal error: ValueError", exit 1."""
    from PIL import Image

    val = tmp_path / "val"
    val.mkdir()
    (val / "bird.png").symlink_to(shared_data / "benchmarks" / "Set5" / "HR" / "bird.png")
    if small == "t20":  # T91's smallest image: 78x78, no two 96x96 NIQE blocks
        (val / "t20.png").symlink_to(shared_data / "train" / "T91" / "t20.png")
    else:  # a 16x16 piece of a real image: after the 4 px border crop no 11x11 SSIM window fits
        Image.open(shared_data / "benchmarks" / "Set5" / "HR" / "baby.png").crop((200, 200, 216, 216)).save(
            val / "crop16.png")
    run = tmp_path / "run"
    overrides = [*TINY, f"validation.datasets=[{str(val)!r}]", f"validation.metrics={metrics}", "validation.every=2"]
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(store), "--out", str(run),
                            "--device", "cpu", "--no-progress", "-q", *sets(overrides))
    assert code == 2, err
    assert f"{val / (small + '.png')}: {message}" in err
    assert "internal error" not in err and "Traceback" not in err
    assert not run.exists()  # refused before the run directory was made, let alone trained


def test_init_from_a_run_directory_records_the_export_it_started_from(finished_run, store, tmp_path, capsys):
    """`--init-from PSNR_RUN` recorded the folder (sha256 null) in run.json and the exports: once the PSNR run
    trained on (a new best export), nothing said which weights the GAN started from, and `--restart`
    silently started from the new ones."""
    import json

    from srtool.atomic import sha256_file

    psnr = tmp_path / "psnr"
    shutil.copytree(finished_run, psnr)
    started = psnr / "exports" / "best.safetensors"
    digest_then = sha256_file(started)
    gan = tmp_path / "gan"  # (a PSNR-stage fine-tune takes the same path as a GAN run, without VGG19's cost)
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(store), "--out", str(gan),
                            "--init-from", str(psnr), "--device", "cpu", "--no-progress", "-q", *sets(TINY))
    assert code == 0, err
    info = json.loads((gan / "run.json").read_text())
    assert (info["init_from"], info["init_from_sha256"]) == (str(started.resolve()), digest_then)
    export_info = json.loads((gan / "exports" / "last.json").read_text())
    assert export_info["init_from"] == {"path": str(started.resolve()), "sha256": digest_then}
    # the PSNR run goes on: its best export is replaced
    code, err = run_cli_err(capsys, "train", "--resume", str(psnr), "--set", "train.epochs=2", "--device", "cpu",
                            "--no-progress", "-q")
    assert code == 0, err
    assert sha256_file(started) != digest_then
    code, err = run_cli_err(capsys, "train", "--resume", str(gan), "--restart", "--device", "cpu", "--no-progress")
    assert code == 2
    assert f"the recorded --init-from {started.resolve()} has changed since the run started" in err


def test_a_sweep_from_a_relative_init_from_runs_again(finished_run, store, tmp_path, monkeypatch,
                                                                      capsys):
    """`srtool sweep --preset srgan --init-from psnr ...` run again (to resume it, or as a no-op) said "the run
    on disk started from --init-from '/abs/psnr', not 'psnr'" (run.json records the path absolute) and
    refused the sweep."""
    import json

    shutil.copytree(finished_run, tmp_path / "psnr")
    monkeypatch.chdir(tmp_path)
    # a PSNR-stage sweep fine-tuning from a run takes the same path as a GAN sweep, without VGG19's cost
    args = ["sweep", "--preset", "srresnet", "--data", str(store), "--out", "gans", "--init-from", "psnr",
            "--grid", "train.lr=1e-4", "--device", "cpu", "--no-progress", *sets(TINY)]
    code, err = run_cli_err(capsys, *args)
    assert code == 0, err
    run_json = next((tmp_path / "gans").glob("*/run.json"))
    assert json.loads(run_json.read_text())["init_from"] == str(tmp_path / "psnr" / "exports" / "best.safetensors")
    code, err = run_cli_err(capsys, *args)
    assert code == 0, err
    assert "0 to run, 1 finished" in err


def test_a_run_that_ends_where_it_stopped_validates_its_last_weights(store, shared_data, tmp_path, capsys):
    """Stopped on an iteration that does not validate (Ctrl-C/SIGTERM there, or `Trainer.run(until=N)`), then
    `--resume --set train.iters_per_epoch=N` (shortened down to where it is) or stopped on its very last
    iteration: the run ended "N/N" without the final validation every finished run has, so its last weights
    were never scored nor considered for exports/best.safetensors."""
    import json

    val = tmp_path / "val"
    for sub in ("HR", "LR_bicubic/X4"):
        (val / sub).mkdir(parents=True)
        (val / sub / "bird.png").symlink_to(shared_data / "benchmarks" / "Set5" / sub / "bird.png")
    run = tmp_path / "run"
    overrides = [*[o for o in TINY if not o.startswith("train.iters_per_epoch")], "train.iters_per_epoch=8",
                 f"validation.datasets=[{str(val)!r}]", 'validation.metrics=["psnr"]', "validation.every=4"]
    trainer = Trainer(TrainOptions(preset="srresnet", data=[store], out=run, overrides=overrides, device="cpu",
                                   progress=False, quiet=True))
    try:
        assert trainer.run(until=6).iteration == 6  # checkpointed at 6, validated at 4 only
    finally:
        trainer.close()
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--set", "train.iters_per_epoch=6", "--device", "cpu",
                            "--no-progress", "-q")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "val"] == [4, 6]
    best = json.loads((run / "exports" / "best.json").read_text())
    chosen = max((r["val/psnr"], r["iter"]) for r in records if r["kind"] == "val")
    assert best["iterations"] == chosen[1]


def test_two_trainings_on_one_plain_image_folder_share_its_cache(shared_data, tmp_path, monkeypatch, capsys):
    """`srtool sweep --jobs 2 --data photos/` (or two `srtool train --data photos/` at once): the second found the
    first preparing the folder's cache and failed, "--out ~/.cache/srtool/train-folders/KEY: another srtool
    prepare (pid N) is writing there" (an --out the user never gave). Now it waits and uses the same cache."""
    import os
    import subprocess
    import sys
    import time

    from srtool.train.data import _folder_key

    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((shared_data / "train" / "BSD200").iterdir())[:40]:
        (photos / image.name).symlink_to(image)
    monkeypatch.setenv("SRTOOL_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--preset", "srresnet", "--data", str(photos), "--device", "cpu", "--no-progress", "-q", *sets(TINY)]
    first = subprocess.Popen([sys.executable, "-m", "srtool", "train", *common, "--out", str(tmp_path / "a")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    lock = tmp_path / "cache" / "train-folders" / _folder_key(photos, 4) / ".srtool-prepare" / "lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.stat().st_size) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first training ended before it prepared the cache"
    code, err = run_cli_err(capsys, "train", *common, "--out", str(tmp_path / "b"))
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert code == 0, err
    assert "waiting for another srtool that is preparing it into the cache" in err
    assert "preparing it once" not in err  # the first one's cache was used, not made again


def test_a_nan_validation_score_does_not_stay_best(store, shared_data, tmp_path):
    """NIQE of a flat image is NaN: a tiny ESRGAN run on Set5 validated `NIQE nan` at its first validation (its
    random generator gave black images). With `validation.select = "niqe"` that NaN became the best score, and
    as nothing compares better than NaN, no later validation could ever replace exports/best.safetensors."""
    import json

    val = tmp_path / "val"
    for sub in ("HR", "LR_bicubic/X4"):
        (val / sub).mkdir(parents=True)
        (val / sub / "baby.png").symlink_to(shared_data / "benchmarks" / "Set5" / sub / "baby.png")
    overrides = [*TINY, f"validation.datasets=[{str(val)!r}]", 'validation.metrics=["psnr", "niqe"]',
                 'validation.select="niqe"', "validation.every=1"]
    trainer = Trainer(TrainOptions(preset="srresnet", data=[store], out=tmp_path / "run", overrides=overrides,
                                   device="cpu", progress=False, quiet=True))
    try:
        trainer.iteration = 1
        trainer._after_validation({"val": {"psnr": 5.0, "niqe": float("nan")}})  # the flat first output's scores
        trainer.iteration = 2
        trainer._after_validation(trainer.validate())  # a real validation of the network: a finite NIQE
    finally:
        trainer.close()
    assert trainer.best["iteration"] == 2 and trainer.best["score"] == trainer.best["scores"]["val"]["niqe"]
    assert json.loads((tmp_path / "run" / "exports" / "best.json").read_text())["iterations"] == 2


def test_a_run_made_in_a_new_out_while_another_sets_up_is_not_replaced(store, tmp_path, monkeypatch, capsys):
    """Two `srtool train --out NEW` started together: both found NEW empty; the one still opening its data
    when the other finished took the folder over (rewrote preset.toml/run.json, deleted its log.jsonl).
    Here the other training runs, for real, while this one opens its training store."""
    import srtool.train.engine as engine

    run = tmp_path / "run"
    args = ["train", "--preset", "srresnet", "--data", str(store), "--out", str(run), "--device", "cpu",
            "--no-progress", "-q", *sets(TINY)]
    real_open = engine.open_stores
    first: list[int] = []
    made: dict[str, str] = {}

    def open_while_another_trains(*a, **kw):
        if not first:
            first.append(-1)  # (the other training's own open_stores is the real one)
            first[0] = run_cli(*args)  # the other srtool train, into the same new --out, start to end
            made.update(digest(run))
        return real_open(*a, **kw)

    monkeypatch.setattr(engine, "open_stores", open_while_another_trains)
    code, err = run_cli_err(capsys, *args)
    assert first == [0]
    assert code == 2, err
    assert f"--out {run}: another srtool train made a run there while this one was setting up" in err
    assert digest(run) == made and "log.jsonl" in made
