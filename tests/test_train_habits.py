"""`srtool train` as a shell user runs it: plain progress lines when stderr is a log file, Ctrl-C/SIGTERM
acknowledged at once (SIGTERM exits 143), `--resume RUN --set train.epochs=N` extends a finished run, runs
without validation export best = last, and a preset with odd strings survives the run directory."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_runner import run_cli
from srtool.config import load_preset
from srtool.models.export import read_state_dict
from srtool.train import TrainOptions, train

TINY = ["model.generator.n_blocks=1", "model.generator.n_feats=16", "train.batch_size=2", "train.hr_crop=32",
        "train.num_workers=0", "validation.datasets=[]", "log.every=1", "checkpoint.every=2",
        "train.iters_per_epoch=2"]


@pytest.fixture(scope="module")
def t91_subset(shared_data, tmp_path_factory) -> Path:
    """Eight T91 images prepared by srtool prepare (a real, small training store)."""
    from srtool.prepare import prepare_folder

    src = tmp_path_factory.mktemp("t91-subset")
    for image in sorted((shared_data / "train" / "T91").glob("*.png"))[:8]:
        (src / image.name).symlink_to(image)
    return prepare_folder([src], tmp_path_factory.mktemp("prepared") / "t91", scale=4, workers=1, progress=False)


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """The real command with stderr a pipe (as under nohup, CI or `2> log`)."""
    return subprocess.run([sys.executable, "-m", "srtool", *args], capture_output=True, text=True, timeout=300, **kw)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finished_run_extends_with_resume_set_epochs_and_keeps_odd_preset_strings(t91_subset, tmp_path):
    odd = ['description="two\\nlines \\"quoted\\" \\u0007bell"', 'name="tab\\tname"']
    run = tmp_path / "run"
    first = train(TrainOptions(preset="srresnet", data=[t91_subset], out=run, overrides=[*TINY, *odd, "train.epochs=1"],
                               progress=False))
    assert first.iteration == 2
    # no validation: the best export is the last one (same weights), not missing
    assert {p.name for p in (run / "exports").glob("*.safetensors")} == {"best.safetensors", "last.safetensors"}
    best, last = tensors(run / "exports" / "best.safetensors"), tensors(run / "exports" / "last.safetensors")
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    saved = load_preset(str(run / "preset.toml"))  # the run's preset.toml loads back exactly
    assert saved.description == 'two\nlines "quoted" \x07bell' and saved.name == "tab\tname"
    assert run_cli("presets", "show", str(run / "preset.toml")) == 0

    res = cli("train", "--resume", str(run), "--set", "train.epochs=2")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    # not a terminal: one plain progress line per log interval (iteration, losses, it/s, ETA), no live display
    plain = [line for line in lines if line.startswith("iter ")]
    assert [line.split()[1] for line in plain] == ["3/4", "4/4"], res.stderr
    assert all("pixel " in line and "it/s" in line and "ETA" in line for line in plain)
    assert "\x1b[" not in res.stderr and "\r" not in res.stderr
    assert lines[-1].startswith(f"{run}: iteration 4/4"), res.stderr  # the summary on its own line
    assert load_preset(str(run / "preset.toml")).train.epochs == 2

    straight = train(TrainOptions(preset="srresnet", data=[t91_subset], out=tmp_path / "straight",
                                  overrides=[*TINY, *odd, "train.epochs=2"], progress=False))
    assert straight.iteration == 4
    extended, reference = tensors(run / "exports" / "last.safetensors"), tensors(straight.exports["last"])
    assert all(torch.equal(extended[k], reference[k]) for k in reference)  # as if it had been that long


def test_resume_set_refuses_fields_other_than_the_schedule_length(t91_subset, tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainOptions(preset="srresnet", data=[t91_subset], out=run, overrides=[*TINY, "train.epochs=1"],
                       progress=False))
    before = digest(run)
    code = run_cli("train", "--resume", str(run), "--set", "train.lr=1e-3", "--set", "train.epochs=3",
                   "--set", "model.generator.n_feats=8")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "refused: model.generator.n_feats, train.lr" in err and "train.epochs" in err
    assert digest(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_is_acknowledged_at_once_and_checkpoints(t91_subset, tmp_path, sig, code):
    run = tmp_path / "run"
    # iterations of a few tenths of a second: long enough to signal in the middle of one
    slow = [*TINY, "train.batch_size=8", "train.hr_crop=64", "model.generator.n_feats=48", "model.generator.n_blocks=2",
            "train.iters_per_epoch=10000", "checkpoint.every=10000", "log.every=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "srtool", "train", "--preset", "srresnet", "--data", str(t91_subset),
                             "--out", str(run), *[a for s in slow for a in ("--set", s)]],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # wait until training runs
        lines.append(line)
        if line.startswith("iter 1/"):
            break
    sent = time.monotonic()
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == code, "".join(lines) + rest
    assert "finishing this iteration, then checkpointing" in rest
    ack = rest.index("finishing this iteration")
    assert ack < rest.index("interrupted")
    assert "iter " not in rest[:ack]  # said while the interrupted iteration was still running
    assert time.monotonic() - sent < 60
    saved = sorted(p.name for p in (run / "checkpoints").glob("iter_*.pt"))
    assert len(saved) == 1 and (run / "exports" / "last.safetensors").is_file()


def test_quiet_run_validating_on_a_flat_hr_folder(t91_subset, shared_data, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in sorted((shared_data / "benchmarks" / "Set5" / "HR").iterdir())[:2]:
        (flat / image.name).symlink_to(image)
    sets = [*TINY, "train.epochs=1", f"validation.datasets=['{flat}']", "validation.every=2"]
    code = run_cli("train", "--preset", "srresnet", "--data", str(t91_subset), "--out", str(tmp_path / "run"), "-q",
                   *[a for s in sets for a in ("--set", s)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == "" and captured.out == ""  # -q: not even the validation lines or the summary
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"flat/psnr"' in log  # the plain folder was the validation set (LR made on the fly)
    assert (tmp_path / "run" / "exports" / "best.safetensors").is_file()


def plain_folder_with_its_cache(shared_data: Path, tmp_path: Path, monkeypatch) -> Path:
    """A plain folder of two T91 images (links), its training cache in tmp_path/cache."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for image in sorted((shared_data / "train" / "T91").glob("*.png"))[:2]:
        (plain / image.name).symlink_to(image)
    monkeypatch.setenv("SRTOOL_CACHE_DIR", str(tmp_path / "cache"))
    return plain


def test_plain_hr_folder_is_prepared_once_into_the_cache_without_a_bar_under_no_progress(shared_data, tmp_path,
                                                                                        monkeypatch, capsys):
    """README: `--data` takes a plain folder of HR images, prepared once into $SRTOOL_CACHE_DIR/train-folders/<key>;
    `--no-progress` means no live display, the implicit prepare's bar included."""
    plain = plain_folder_with_its_cache(shared_data, tmp_path, monkeypatch)
    args = ["train", "--preset", "srresnet", "--data", str(plain), "--no-progress",
            *[a for s in [*TINY, "train.epochs=1"] for a in ("--set", s)]]
    assert run_cli(*args, "--out", str(tmp_path / "run1")) == 0
    err = capsys.readouterr().err
    assert "preparing it once into the cache" in err and str(tmp_path / "cache" / "train-folders") in err
    assert "prepare folder" not in err and "images" not in err, err  # no progress bar
    assert len(list((tmp_path / "cache" / "train-folders").iterdir())) == 1
    assert run_cli(*args, "--out", str(tmp_path / "run2")) == 0  # the same folder again: the cached store
    assert "preparing" not in capsys.readouterr().err


def test_a_prepared_read_only_cache_is_used_without_taking_its_lock(shared_data, tmp_path, monkeypatch, capsys):
    """A plain folder's cache, once prepared, is only read: a read-only cache (a shared, read-only mount)
    failed with "cannot open the lock" because the lock file was created before checking the cache.
    The read-only file system is simulated where it bites: creating the lock file fails with EROFS."""
    import errno

    plain = plain_folder_with_its_cache(shared_data, tmp_path, monkeypatch)
    args = ["train", "--preset", "srresnet", "--data", str(plain), "-q",
            *[a for s in [*TINY, "train.epochs=1"] for a in ("--set", s)]]
    assert run_cli(*args, "--out", str(tmp_path / "run1")) == 0
    for lock in (tmp_path / "cache").rglob(".srtool-cache.lock"):
        lock.unlink()
    real_open = os.open

    def read_only_cache(path, flags, *rest, **kw):
        if str(path).startswith(str(tmp_path / "cache")) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *rest, **kw)

    monkeypatch.setattr(os, "open", read_only_cache)
    code = run_cli(*args, "--out", str(tmp_path / "run2"))
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run2" / "exports" / "last.safetensors").is_file()


def test_a_cache_folder_that_is_a_file_is_one_line_naming_it(shared_data, tmp_path, monkeypatch, capsys):
    """SRTOOL_CACHE_DIR naming a file: the cache folder cannot be made; that was an internal
    NotADirectoryError, now one line naming the folder and the variable, exit 2."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.png").symlink_to(sorted((shared_data / "train" / "T91").glob("*.png"))[0])
    (tmp_path / "cachefile").write_text("not a folder")
    monkeypatch.setenv("SRTOOL_CACHE_DIR", str(tmp_path / "cachefile"))
    code = run_cli("train", "--preset", "srresnet", "--data", str(plain), "--out", str(tmp_path / "run"), "-q",
                   *[a for s in [*TINY, "train.epochs=1"] for a in ("--set", s)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cache folder" in err and str(tmp_path / "cachefile") in err and "SRTOOL_CACHE_DIR" in err
    assert "Traceback" not in err
    from srtool.errors import UserError
    from srtool.train.data import open_stores

    with pytest.raises(UserError, match="give a writable cache_dir") as refused:  # Python's own way to set it
        open_stores([plain], 4, cache_dir=tmp_path / "cachefile", progress=False)
    assert "SRTOOL_CACHE_DIR" not in str(refused.value)


def test_overwrite_never_deletes_a_folder_that_holds_no_run(t91_subset, tmp_path, capsys):
    """`--out proj` where proj is a user's folder with its own exports/, checkpoints/ and log.jsonl (but no
    run: srtool writes preset.toml first): --overwrite used to delete them ("already holds a run").
    Now one line, exit 2, with or without --overwrite, and every file kept."""
    proj = tmp_path / "proj"
    (proj / "exports").mkdir(parents=True)
    (proj / "checkpoints").mkdir()
    (proj / "exports" / "paper_model.onnx").write_bytes(b"precious")
    (proj / "checkpoints" / "README").write_text("notes")
    (proj / "log.jsonl").write_text('{"mine": 1}\n')
    before = digest(proj)
    for extra in ((), ("--overwrite",)):
        code = run_cli("train", "--preset", "srresnet", "--data", str(t91_subset), "--out", str(proj),
                       *(a for s in TINY for a in ("--set", s)), "--no-progress", *extra)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--out {proj}" in err and "no srtool run" in err and "--resume" not in err
        assert digest(proj) == before


def test_out_and_resume_with_a_tilde_go_to_the_home_folder(t91_subset, tmp_path, monkeypatch):
    """`--out=~/runs/x` (bash leaves a ~ after `=` alone) made a folder literally named `~` in the working
    directory; --data and `srtool prepare --out` already expanded it. Now --out and --resume expand ~."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    sets = [a for s in [*TINY, "train.epochs=1", "train.iters_per_epoch=1"] for a in ("--set", s)]
    assert run_cli("train", "--preset", "srresnet", "--data", str(t91_subset), "--out=~/runs/x", *sets, "-q") == 0
    assert (home / "runs" / "x" / "exports" / "last.safetensors").is_file() and not (cwd / "~").exists()
    assert run_cli("train", "--resume", "~/runs/x", "--set", "train.epochs=2", "-q") == 0
    assert (home / "runs" / "x" / "checkpoints" / "iter_00000002.pt").is_file() and not (cwd / "~").exists()


@pytest.mark.parametrize("second", ["t91", "./t91", "t91/", "ABSOLUTE", "link", "t91/store", "~/t91"])
def test_the_same_training_set_given_twice_is_refused_naming_both_spellings(t91_subset, tmp_path, monkeypatch,
                                                                            capsys, second):
    from cli_runner import run_cli_err

    monkeypatch.chdir(t91_subset.parent)
    monkeypatch.setenv("HOME", str(t91_subset.parent))
    link = tmp_path / "link"
    link.symlink_to(t91_subset)
    second = second.replace("ABSOLUTE", str(t91_subset)).replace("link", str(link))
    run = tmp_path / "run"
    code, err = run_cli_err(capsys, "train", "--preset", "srresnet", "--data", "t91", "--data", second, "--out", str(run),
                            *[x for item in [*TINY, "train.epochs=1"] for x in ("--set", item)])
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    alias = "" if second == "t91" else " (also as t91)"
    assert len(lines) == 1 and f"--data {second}: given twice{alias}; give each training set once" in lines[0]
    assert not run.exists()  # refused before anything is written
    # the sweep refuses it the same way, before its folder exists
    code, err = run_cli_err(capsys, "sweep", "--preset", "srresnet", "--data", "t91", "--data", second,
                            "--out", str(tmp_path / "sweep"), "--grid", "train.lr=1e-3,2e-3", "--dry-run")
    assert code == 2 and f"--data {second}: given twice{alias}" in err and not (tmp_path / "sweep").exists()


def test_a_plain_image_folder_twice_is_refused_and_distinct_sets_are_not(t91_subset, shared_data, tmp_path):
    from srtool.errors import UserError
    from srtool.train.data import check_distinct_data

    plain = tmp_path / "hr"
    plain.mkdir()
    (plain / "t1.png").symlink_to(shared_data / "train" / "T91" / "t1.png")
    with pytest.raises(UserError, match=rf"--data {plain}/\.: given twice \(also as {plain}\)"):
        train(TrainOptions(preset="srresnet", data=[plain, f"{plain}/."], out=tmp_path / "run",
                           overrides=[*TINY, "train.epochs=1"], progress=False))
    assert not (tmp_path / "run").exists()
    check_distinct_data([t91_subset, plain, tmp_path / "missing"])  # distinct (a missing one is named later)
