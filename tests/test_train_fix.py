"""The researcher's path, defects left by the trainhunt (trainfix): exports of a discarded timeline on
``--resume``, a validation failing mid-run, sweep notices, one-line refusals. Tiny networks on a real T91 store
and real Set5 images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_runner import run_cli, run_cli_err
from test_train_habits import t91_subset  # noqa: F401  (the prepared T91 subset fixture)
from srtool.model_files import read_export_metadata
from srtool.train.checkpoint import load_checkpoint

TINY = ["model.generator.n_blocks=1", "model.generator.n_feats=8", "train.batch_size=2", "train.hr_crop=32",
        "train.num_workers=0", "log.every=1", "train.epochs=1"]


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def val_folder(where: Path, shared_data: Path, names=("bird", "head")) -> Path:
    """A validation folder of real Set5 images (symlinks: nothing of /work/shared is copied)."""
    for sub in ("HR", "LR_bicubic/X4"):
        (where / sub).mkdir(parents=True)
        for name in names:
            (where / sub / f"{name}.png").symlink_to(shared_data / "benchmarks" / "Set5" / sub / f"{name}.png")
    return where


def validated(overrides: list[str], val: Path) -> list[str]:
    return [*TINY, f'validation.datasets=["{val}"]', 'validation.metrics=["psnr"]', *overrides]


def run_with_a_discarded_best(t91_subset, val: Path, run: Path, capsys) -> None:
    """A three-iteration run (validated every iteration, checkpoint 2) left as killed after iteration 3's
    validation made it best (best.pt and the best export written) but before its checkpoint."""
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(t91_subset), "--out", str(run),
                            "--device", "cpu", "--no-progress", "-q",
                            *sets(validated(["train.iters_per_epoch=3", "validation.every=1", "checkpoint.every=2",
                                             "checkpoint.keep_last=5"], val)))
    assert code == 0, err
    ckpt, exports = run / "checkpoints", run / "exports"
    shutil.copyfile(ckpt / "iter_00000003.pt", ckpt / "best.pt")
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(exports / f"last{suffix}", exports / f"best{suffix}")
    (ckpt / "iter_00000003.pt").unlink()
    assert read_export_metadata(exports / "best.safetensors")["iterations"] == 3


def test_resume_sets_aside_a_best_export_from_a_discarded_timeline(t91_subset, shared_data, tmp_path, capsys):
    """Killed after the validation at iteration 3 made it best (best.pt and exports/best.safetensors written)
    but before checkpoint 3: `--resume` goes back to checkpoint 2, and best.safetensors kept iteration 3's
    weights, which the resumed run never produced (on a GPU its redone scores can stay below them). Now those
    files are kept aside under a clear name, announced in one line, and the best export is the resumed
    timeline's own."""
    run = tmp_path / "run"
    run_with_a_discarded_best(t91_subset, val_folder(tmp_path / "val", shared_data), run, capsys)
    ckpt, exports = run / "checkpoints", run / "exports"
    # the resumed run ends where its checkpoint is (iteration 2): nothing redoes iteration 3
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--set", "train.iters_per_epoch=2",
                            "--device", "cpu", "--no-progress", "-q")
    assert code == 0, err
    assert "Traceback" not in err
    notice = [line for line in err.splitlines() if "came after the checkpoint" in line]
    assert len(notice) == 1, err
    assert "exports/best.safetensors (iteration 3)" in notice[0] and "checkpoints/best.pt (iteration 3)" in notice[0]
    assert "best.discarded-iter3.safetensors" in notice[0] and "best.discarded-iter3.pt" in notice[0]
    # the discarded files are kept, under names nothing picks up as the run's export or best checkpoint
    assert read_export_metadata(exports / "best.discarded-iter3.safetensors")["iterations"] == 3
    assert (exports / "best.discarded-iter3.json").is_file() and (ckpt / "best.discarded-iter3.pt").is_file()
    # the run that ended has a best export, and it names weights of its own timeline
    best_it = read_export_metadata(exports / "best.safetensors")["iterations"]
    assert best_it <= 2
    assert json.loads((exports / "best.json").read_text())["iterations"] == best_it
    assert load_checkpoint(ckpt / "best.pt")["iteration"] == best_it
    from srtool.models.export import read_state_dict

    resumed = load_checkpoint(ckpt / "iter_00000002.pt")
    if best_it == 2:  # bit-equal to the EMA of the resumed checkpoint
        best = read_state_dict(exports / "best.safetensors")
        assert all(bool((best[k] == v).all()) for k, v in resumed["ema"].items())
    # running the same command again finds nothing to set aside
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--set", "train.iters_per_epoch=2",
                            "--device", "cpu", "--no-progress", "-q")
    assert code == 0, err
    assert "came after the checkpoint" not in err


def test_a_validation_failing_mid_run_checkpoints_first_and_resume_validates_there(t91_subset, shared_data, tmp_path,
                                                                                   capsys):
    """A validation image deleted during training stopped the run at its next validation, which runs before
    that iteration's checkpoint: the iterations since the last checkpoint were lost. Now the run checkpoints,
    says so in the one-line error, and `--resume` validates that iteration first, then goes on."""
    from srtool.errors import UserError
    from srtool.train import TrainOptions
    from srtool.train.engine import Trainer

    val = val_folder(tmp_path / "val", shared_data)
    run = tmp_path / "run"
    overrides = validated(["train.iters_per_epoch=4", "validation.every=1", "checkpoint.every=4"], val)
    trainer = Trainer(TrainOptions(preset="srresnet", data=[t91_subset], out=run, overrides=overrides, device="cpu",
                                   progress=False, quiet=True))
    try:
        trainer.run(until=1)
        (val / "HR" / "head.png").unlink()  # deleted while the run trains
        with pytest.raises(UserError) as caught:
            trainer.run()
    finally:
        trainer.close()
    message = str(caught.value)
    assert "\n" not in message and "validation at iteration 2" in message
    assert str(val / "LR_bicubic" / "X4" / "head.png") in message
    assert f"checkpoint saved at iteration 2; fix that and continue with `srtool train --resume {run}`" in message
    assert load_checkpoint(run / "checkpoints" / "iter_00000002.pt")["iteration"] == 2
    (val / "HR" / "head.png").symlink_to(shared_data / "benchmarks" / "Set5" / "HR" / "head.png")
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--device", "cpu", "--no-progress", "-q")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "val"] == [1, 2, 3, 4]


def test_sweep_says_when_the_grid_or_seeds_replace_a_set_value_and_dry_run_prints_absolute_paths(
        t91_subset, tmp_path, capsys, monkeypatch):
    """`--seeds 0,1 --set train.seed=5` and `--grid train.lr=... --set train.lr=...`: the point's value silently
    replaced the --set one. The base-plus-variation behaviour stays; one notice line per key says so.
    --dry-run printed --out (and a preset file) relative to the working directory, unlike the data paths."""
    import shlex

    monkeypatch.chdir(tmp_path)
    preset = tmp_path / "my.toml"
    from srtool.config import dump_toml, load_preset

    preset.write_text(dump_toml(load_preset("srresnet")))
    code = run_cli("sweep", "--preset", "my.toml", "--data", str(t91_subset), "--out", "sw",
                            "--grid", "train.lr=1e-3,2e-3", "--seeds", "0,1", "--set", "train.lr=5e-4",
                            "--set", "train.seed=5", "--set", "train.hr_crop=32", "--set", "validation.datasets=[]",
                            "--dry-run")
    captured = capsys.readouterr()
    err = captured.err
    assert code == 0, err
    notices = [line for line in err.splitlines() if "is replaced in every point" in line]
    assert notices == ["--set train.lr=5e-4 is replaced in every point: --grid varies train.lr",
                       "--set train.seed=5 is replaced in every point: --seeds varies train.seed"]
    lines = captured.out.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        argv = shlex.split(line)
        assert Path(argv[argv.index("--out") + 1]).parent == tmp_path / "sw"
        assert argv[argv.index("--preset") + 1] == str(preset)
    # the base plus variations: each point trains with its own grid value and seed
    assert "--set train.lr=1e-3" in lines[0] and "--set train.seed=0" in lines[0]
    assert not (tmp_path / "sw").exists()


def test_a_store_prepared_with_another_recipe_names_only_the_fields_that_differ(shared_data, tmp_path, capsys):
    """The refusal printed the old recipe as a Python dict ({'edge': 'replicate', ..., 'store': {...}})."""
    src = tmp_path / "t91"
    src.mkdir()
    (src / "t1.png").symlink_to(shared_data / "train" / "T91" / "t1.png")
    out = tmp_path / "store"
    code, err = run_cli_err(capsys, "prepare", "folder", str(src), "--out", str(out), "--tile", "64", "--step", "64",
                            "--workers", "1", "--no-progress")
    assert code == 0, err
    code, err = run_cli_err(capsys, "prepare", "folder", str(src), "--out", str(out), "--tile", "48", "--step", "64",
                            "--workers", "1", "--no-progress")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "{" not in lines[0], err
    assert "prepared with a different recipe (on disk vs now: tile 64 vs 48); use another --out" in lines[0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_train_on_a_missing_gpu_repeats_the_device_as_typed(t91_subset, tmp_path, capsys):
    """`--device cuda:3` without a GPU said `--device cuda: no CUDA GPU ...`."""
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(t91_subset), "--out",
                            str(tmp_path / "run"), "--device", "cuda:3", "--no-progress", *sets([*TINY, "validation.datasets=[]"]))
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--device cuda:3: no CUDA GPU is available" in lines[0], err
    # a sweep says so before any point runs (each point failed with it, exit 1)
    code, err = run_cli_err(capsys, "sweep", "--preset", "srresnet", "--data", str(t91_subset), "--out",
                            str(tmp_path / "sweep"), "--grid", "train.lr=1e-3,2e-3", "--device", "cuda:3",
                            "--no-progress", *sets([*TINY, "validation.datasets=[]"]))
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--device cuda:3: no CUDA GPU is available" in lines[0], err
    assert not (tmp_path / "sweep").exists()


def test_a_hand_edited_preset_toml_follows_the_resume_set_rule(t91_subset, tmp_path, capsys):
    """`--resume RUN --set train.lr=...` is refused, but the same change made in RUN/preset.toml by hand was used
    silently. Now the file is checked against the preset run.json recorded: other fields are refused in one
    line naming the file and the change; the schedule's length is taken, as with --set."""
    run = tmp_path / "run"
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(t91_subset), "--out", str(run),
                            "--device", "cpu", "--no-progress", "-q",
                            *sets([*TINY, "validation.datasets=[]", "train.iters_per_epoch=1"]))
    assert code == 0, err
    preset = run / "preset.toml"
    original = preset.read_text()
    assert "\nlr = 0.0001  #" in original and "\nepochs = 1  #" in original
    preset.write_text(original.replace("\nlr = 0.0001  #", "\nlr = 0.001  #", 1))
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--device", "cpu", "--no-progress", "-q")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{preset}: edited since the run wrote it (train.lr 0.0001 -> 0.001)" in lines[0]
    assert before == {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    # the schedule's length is what --resume --set may change: by hand too
    preset.write_text(original.replace("\nepochs = 1  #", "\nepochs = 2  #", 1))
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--device", "cpu", "--no-progress", "-q")
    assert code == 0, err
    assert "train.epochs edited by hand" in err
    assert load_checkpoint(run / "checkpoints" / "iter_00000002.pt")["iteration"] == 2
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--device", "cpu", "--no-progress", "-q")
    assert code == 0 and "edited" not in err, err


def test_the_not_prepared_advice_gives_commands_that_paste(shared_data, tmp_path, monkeypatch, capsys):
    """"run `srtool prepare benchmark --download Set5 (or SET5_HR_DIR --out DIR) --scale 4`": parentheses inside
    the backticks, not a command. Now two commands, each one a shell line srtool accepts as it is."""
    import re
    import shlex

    data = tmp_path / "my data"  # a space: the folder is quoted in the advice
    monkeypatch.setenv("SRTOOL_DATA_DIR", str(data))
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "--data", "Set5", "--no-progress")
    assert code == 2
    line = " ".join(err.split())
    commands = re.findall(r"`([^`]+)`", line)
    assert commands == ["srtool prepare benchmark --download Set5 --scale 4",
                        f"srtool prepare benchmark SET5_HR_DIR --out {shlex.quote(str(data / 'Set5'))} --scale 4"], line
    # the second, with a real folder in place of SET5_HR_DIR, prepares what the first names by name
    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "bird.png").symlink_to(shared_data / "benchmarks" / "Set5" / "HR" / "bird.png")
    argv = shlex.split(commands[1].replace("SET5_HR_DIR", shlex.quote(str(hr))))
    code, err = run_cli_err(capsys, *argv[1:], "--workers", "1", "--no-progress")
    assert code == 0, err
    assert (data / "Set5" / "HR" / "bird.png").is_file()


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_again_with_its_best_aside(
        t91_subset, shared_data, tmp_path, capsys):
    """Killed after its first validations (best.pt and a best export written) but before the first checkpoint:
    `--resume` was refused as if the checkpoints had been deleted ("... is missing, so the run cannot
    continue"). The run has nothing to lose: it starts again from iteration 0, its best kept aside."""
    val = val_folder(tmp_path / "val", shared_data, names=("bird",))
    run = tmp_path / "run"
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", str(t91_subset), "--out", str(run),
                            "--device", "cpu", "--no-progress", "-q",
                            *sets(validated(["train.iters_per_epoch=2", "validation.every=1", "checkpoint.every=2"],
                                            val)))
    assert code == 0, err
    # as killed after the validations of iterations 1 and 2, before checkpoint 2 (which writes last.safetensors)
    (run / "checkpoints" / "iter_00000002.pt").unlink()
    for suffix in (".safetensors", ".json"):
        (run / "exports" / f"last{suffix}").unlink()
    discarded = read_export_metadata(run / "exports" / "best.safetensors")["iterations"]
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--device", "cpu", "--no-progress", "-q")
    assert code == 0, err
    assert "came after its start" in err and f"best.discarded-iter{discarded}.safetensors" in err
    assert (run / "exports" / f"best.discarded-iter{discarded}.safetensors").is_file()
    assert load_checkpoint(run / "checkpoints" / "iter_00000002.pt")["iteration"] == 2
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "val"] == [1, 2]
    assert read_export_metadata(run / "exports" / "best.safetensors")["iterations"] in (1, 2)


def test_resume_picks_best_again_when_the_resumed_best_weights_are_gone(t91_subset, shared_data, tmp_path, capsys):
    """The resumed checkpoint's best (iteration 1, never checkpointed) had its weights only in best.safetensors,
    which the discarded timeline overwrote: nothing on disk holds them. The run's own validations pick best
    again, and the export it ends with names one of them (the checkpoint's best dict is rewritten to say
    iteration 1 with a score nothing beats, as a GPU run's redone scores could)."""
    from srtool.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    run_with_a_discarded_best(t91_subset, val_folder(tmp_path / "val", shared_data, names=("bird",)), run, capsys)
    ckpt, exports = run / "checkpoints", run / "exports"
    state = load_checkpoint(ckpt / "iter_00000002.pt")
    state["best"] = {"iteration": 1, "metric": "psnr", "score": 99.0, "scores": {"val": {"psnr": 99.0}}}
    save_checkpoint(ckpt / "iter_00000002.pt", {k: v for k, v in state.items() if k != "format"})
    code, err = run_cli_err(capsys, "train", "--resume", str(run), "--device", "cpu", "--no-progress", "-q")
    assert code == 0, err
    assert "the resumed run's validations pick the best export again" in " ".join(err.split())
    # the run's record of its best and its best export name the same, redone iteration
    assert read_export_metadata(exports / "best.safetensors")["iterations"] == 3
    assert load_checkpoint(ckpt / "iter_00000003.pt")["best"]["iteration"] == 3
    assert load_checkpoint(ckpt / "best.pt")["best"]["score"] != 99.0
    assert (exports / "best.discarded-iter3.safetensors").is_file()
