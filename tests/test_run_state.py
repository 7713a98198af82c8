"""Damaged run state, under the rule: a user error is one line naming the file or field (exit 2); a damaged
run is never silently restarted and never loses its good checkpoints.

Every test works on a copy of one real run directory made by a tiny training run on a T91 subset (module
fixture), drives the CLI, and checks the exit code, the one-line message and the hashes of what the user had.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_runner import run_cli
from test_train import vgg_file  # noqa: F401  (the random-weight VGG19 file fixture)

TINY = ["train.num_workers=0", "validation.datasets=[]", "log.every=1", "checkpoint.every=2", "checkpoint.keep_last=3",
        "train.epochs=1", "train.iters_per_epoch=6", "model.generator.n_blocks=1", "model.generator.n_feats=8",
        "train.batch_size=2", "train.hr_crop=32", "train.lr=1e-3", "train.ema_decay=0.5"]


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory) -> Path:
    from srtool.prepare import prepare_folder

    src = tmp_path_factory.mktemp("t91")
    for p in sorted((shared_data / "train" / "T91").glob("*.png"))[:6]:
        shutil.copy(p, src / p.name)
    return prepare_folder([src], tmp_path_factory.mktemp("prepared") / "t6", scale=4, workers=1, progress=False)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    """An uninterrupted 6-iteration run with checkpoints at 2, 4 and 6."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert run_cli("train", "--preset", "srresnet", "--data", str(store), "--out", str(out), "--no-progress",
                   *sets(TINY)) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "iter_00000002.pt", "iter_00000004.pt", "iter_00000006.pt"]
    return out


@pytest.fixture
def copy(run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def resume(path: Path, *extra: str) -> int:
    return run_cli("train", "--resume", str(path), "--no-progress", *extra)


def same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# -------------------------------------------------------------------------- item 15: checkpoints


def _drop_ema(state):
    del state["ema"]


def _other_architecture(state):
    from srtool.models import build_network
    from srtool.models.registry import generator_config_from_dict

    cfg = generator_config_from_dict({"arch": "srresnet", "scale": 4, "n_blocks": 1, "n_feats": 16})
    state["generator"] = build_network(cfg).state_dict()


def _bogus_rng(state):
    state["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)


def _bogus_numpy_rng(state):
    state["rng"]["numpy"]["keys"] = torch.zeros(3, dtype=torch.int64)


DAMAGE = {"lacks-ema": _drop_ema, "other-architecture": _other_architecture, "bogus-torch-rng": _bogus_rng,
          "bogus-numpy-rng": _bogus_numpy_rng}


@pytest.mark.parametrize("damage", [*DAMAGE, "not-a-checkpoint"])
def test_damaged_latest_checkpoint_resumes_from_the_newest_good_one(run, copy, damage, capsys):
    latest = copy / "checkpoints" / "iter_00000006.pt"
    if damage == "not-a-checkpoint":
        latest.write_bytes(b"PK\x03\x04 truncated")
    else:
        state = torch.load(latest, weights_only=True)
        DAMAGE[damage](state)
        torch.save(state, latest)
    good = {n: h for n, h in hashes(copy / "checkpoints").items() if n != latest.name}
    assert resume(copy) == 0
    err = capsys.readouterr().err
    assert "iter_00000006.pt is damaged" in err and "resuming from the newest good checkpoint" in err
    assert "iter_00000004.pt" in err
    # the damaged file is kept aside, the good ones are untouched, and the run ends where the uninterrupted one did
    assert (copy / "checkpoints" / "iter_00000006.pt.damaged").is_file()
    after = hashes(copy / "checkpoints")
    assert all(after[n] == h for n, h in good.items())
    assert same_tensors(run / "exports" / "last.safetensors", copy / "exports" / "last.safetensors")
    a = torch.load(run / "checkpoints" / "iter_00000006.pt", weights_only=True)
    b = torch.load(copy / "checkpoints" / "iter_00000006.pt", weights_only=True)
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])


def test_no_usable_checkpoint_is_one_line_and_nothing_is_lost(copy, capsys):
    for p in (copy / "checkpoints").iterdir():
        p.write_bytes(b"garbage")
    before = hashes(copy / "exports")
    assert resume(copy) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "no usable checkpoint" in lines[0] and "--restart" in lines[0]
    assert hashes(copy / "exports") == before
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == [
        "iter_00000002.pt.damaged", "iter_00000004.pt.damaged", "iter_00000006.pt.damaged"]


# ------------------------------------------------------------------------------ item 16: run files


@pytest.mark.parametrize("content, message", [
    ("[1, 2]\n", "expected a JSON object, found a list"),
    ('{"preset_source": "srresnet"}\n', "lacks 'data'"),
])
def test_damaged_run_json_is_one_line_naming_it(copy, content, message, capsys):
    (copy / "run.json").write_text(content)
    before = hashes(copy)
    assert resume(copy) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(copy / "run.json") in lines[0] and message in lines[0]
    assert hashes(copy) == before


def test_log_line_that_is_not_an_object_is_skipped_with_a_warning(copy, capsys):
    log = copy / "log.jsonl"
    lines = log.read_text().splitlines()
    lines.insert(1, "[1, 2, 3]")
    log.write_text("\n".join(lines) + "\n")
    (copy / "checkpoints" / "iter_00000006.pt").unlink()
    assert resume(copy) == 0
    err = capsys.readouterr().err
    assert f"{log}: line 2 is not a log record" in err
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(isinstance(r, dict) for r in records) and records[-1]["iter"] == 6


@pytest.mark.parametrize("index, message", [
    ([1, 2], "expected a JSON object, found a list"),
    ({"format": "srtool-training-store", "version": 1, "scale": 4}, "'tile' is missing"),
    ({"format": "srtool-training-store", "version": 1, "scale": 4, "tile": 480, "step": 240,
      "images": [{"name": "../../etc", "shape": [8, 8], "tiles": [[0, 0, 8, 8]]}]}, "lacks a plain file name"),
])
def test_damaged_store_index_is_one_line_naming_it(store, tmp_path, index, message, capsys):
    data = tmp_path / "data"
    shutil.copytree(store, data)
    (data / "store" / "index.json").write_text(json.dumps(index))
    before = hashes(data)
    assert run_cli("train", "--preset", "srresnet", "--data", str(data), "--out", str(tmp_path / "r"),
                   "--no-progress", *sets(TINY)) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(data / "store" / "index.json") in lines[0] and message in lines[0]
    assert hashes(data) == before


# ------------------------------------------------------------------------------ item 17: --out a file


def test_out_naming_an_existing_file_is_refused(store, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert run_cli("train", "--preset", "srresnet", "--data", str(store), "--out", str(target), "--no-progress",
                   *sets(TINY)) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"--out {target}: exists and is not a folder" in lines[0]
    assert target.read_text() == "mine"


# --------------------------------------------------------------------- item 21: checkpoints/ gone


def test_resume_without_checkpoints_refuses_then_restart_keeps_the_old_files(copy, capsys):
    shutil.rmtree(copy / "checkpoints")
    before = hashes(copy)
    assert resume(copy) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(copy / "checkpoints") in lines[0] and "--restart" in lines[0]
    assert hashes(copy) == before
    assert resume(copy, "--restart") == 0
    kept_exports = [p for p in copy.iterdir() if p.name.startswith("exports.")]
    kept_logs = [p for p in copy.iterdir() if p.name.startswith("log.") and p.name != "log.jsonl"]
    assert len(kept_exports) == 1 and len(kept_logs) == 1
    assert hashes(kept_exports[0]) == {k.removeprefix("exports/"): v for k, v in before.items() if k.startswith("exports/")}
    assert hashlib.sha256(kept_logs[0].read_bytes()).hexdigest() == before["log.jsonl"]
    # the restarted run is the same run again: bitwise the same export
    assert same_tensors(kept_exports[0] / "last.safetensors", copy / "exports" / "last.safetensors")


def test_checkpoint_files_deleted_but_exports_present_also_refuses(copy, capsys):
    for p in (copy / "checkpoints").iterdir():
        p.unlink()
    before = hashes(copy)
    assert resume(copy) == 2
    assert "iter_*.pt" in error_lines(capsys.readouterr().err)[0]
    assert hashes(copy) == before


# ------------------------------------------------------------------ item 22: store files, disk full


def test_truncated_store_file_is_one_line_naming_it(store, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(store, data)
    victim = sorted((data / "store" / "lr_x4").glob("*.npy"))[1]
    os.truncate(victim, victim.stat().st_size - 100)
    before = hashes(data)
    assert run_cli("train", "--preset", "srresnet", "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress",
                   *sets([*TINY, "train.num_workers=2"])) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(victim) in lines[0] and "truncated" in lines[0] and "srtool prepare" in lines[0]
    assert hashes(data) == before


def test_store_file_damaged_after_start_is_one_line_from_a_loader_worker(store, tmp_path):
    from srtool.errors import UserError
    from srtool.prepare import TrainingStore
    from srtool.train.data import CropSource, KeyedCropDataset, make_loader
    from srtool.train.runstate import loader_errors

    data = tmp_path / "data"
    shutil.copytree(store, data)
    opened = TrainingStore.open(data, 4)  # passes: the damage comes after the run started
    dataset = KeyedCropDataset(CropSource([opened], ["t6"], 32, 4), seed=1)
    for p in (data / "store" / "lr_x4").glob("*.npy"):
        p.write_bytes(p.read_bytes()[:64])
    with pytest.raises(UserError) as info:
        for _ in loader_errors(make_loader(dataset, 0, 4, 2, num_workers=1), [opened]):
            pass
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "lr_x4" in message and "srtool prepare" in message


def test_disk_full_while_checkpointing_is_one_line_and_resume_finishes(run, store, tmp_path, monkeypatch, capsys):
    from srtool.train import checkpoint

    # the fault: the disk fills up during the second checkpoint (iteration 4), after 1000 of its bytes
    class FullDisk:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data):
            if self.written + len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.fh.write(data)

        def flush(self):
            self.fh.flush()

    real_init, saves = checkpoint._Writer.__init__, []

    def writer_init(self, fh):
        saves.append(fh.name)
        real_init(self, FullDisk(fh) if len(saves) == 2 else fh)

    monkeypatch.setattr(checkpoint._Writer, "__init__", writer_init)
    out = tmp_path / "r"
    assert run_cli("train", "--preset", "srresnet", "--data", str(store), "--out", str(out), "--no-progress",
                   *sets(TINY)) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith(f"error: disk full at {out / 'checkpoints' / 'iter_00000004.pt'}, free ")
    assert lines[0].endswith(f"MB and --resume {out}")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_00000002.pt"]  # no temp left behind
    good = hashes(out / "checkpoints")
    monkeypatch.setattr(checkpoint._Writer, "__init__", real_init)
    assert resume(out) == 0
    assert hashes(out / "checkpoints")["iter_00000002.pt"] == good["iter_00000002.pt"]
    assert same_tensors(run / "exports" / "last.safetensors", out / "exports" / "last.safetensors")


# ------------------------------------------------------ issue 14 items 4 and 22: recorded paths, VGG19


TINY_GAN = [*TINY, "train.iters_per_epoch=2", "checkpoint.every=1",
            "model.discriminator.n_blocks=4", "model.discriminator.base_channels=8",
            "model.discriminator.max_channels=16", "model.discriminator.pool_size=2", "model.discriminator.hidden=16",
            "model.generator.batch_norm=true", "model.generator.trunk_batch_norm=true"]


def test_paths_are_recorded_absolute_with_hashes_and_resume_works_from_elsewhere(run, store, vgg_file, tmp_path,
                                                                                monkeypatch, capsys):
    from srtool.atomic import sha256_file

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(vgg_file, work / "vgg.pth")
    shutil.copytree(run, work / "psnr")
    monkeypatch.chdir(work)
    gan_sets = [o for o in TINY_GAN if not o.startswith("model.generator.")] + [
        "model.generator.n_blocks=1", "model.generator.n_feats=8"]
    rc = run_cli("train", "--preset", "srgan", "--data", str(store), "--out", "gan", "--no-progress",
                 "--init-from", "psnr/exports/last.safetensors", "--vgg-weights", "vgg.pth", *sets(gan_sets))
    assert rc == 0, capsys.readouterr().err
    info = json.loads((work / "gan" / "run.json").read_text())
    init = work / "psnr" / "exports" / "last.safetensors"
    assert info["init_from"] == str(init) and info["init_from_sha256"] == sha256_file(init)
    assert info["vgg_weights"] == str(work / "vgg.pth") and info["vgg_weights_sha256"] == sha256_file(vgg_file)
    assert all(Path(p).is_absolute() for p in info["data"])
    export = json.loads((work / "gan" / "exports" / "last.json").read_text())
    assert export["vgg_weights"] == {"source": "file", "path": str(work / "vgg.pth"), "sha256": sha256_file(vgg_file)}
    assert export["init_from"] == {"path": str(init), "sha256": sha256_file(init)}
    # --resume from another working directory (the last checkpoint removed, so it really trains)
    (work / "gan" / "checkpoints" / "iter_00000002.pt").unlink()
    monkeypatch.chdir(tmp_path)
    assert resume(work / "gan") == 0, capsys.readouterr().err
    # a recorded file that went missing is named
    (work / "vgg.pth").rename(work / "vgg-moved.pth")
    before = hashes(work / "gan")
    assert resume(work / "gan") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"recorded --vgg-weights {work / 'vgg.pth'} is missing" in lines[0]
    assert hashes(work / "gan") == before


def test_random_vgg_is_refused_for_training_unless_allowed(store, tmp_path, capsys):
    gan_sets = [o for o in TINY_GAN if not o.startswith("model.generator.")] + [
        "model.generator.n_blocks=1", "model.generator.n_feats=8", "train.iters_per_epoch=1"]
    args = ["train", "--preset", "srgan", "--data", str(store), "--out", str(tmp_path / "g"), "--no-progress",
            "--vgg-weights", "random", *sets(gan_sets)]
    assert run_cli(*args) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--vgg-weights random" in lines[0] and "--allow-random-vgg" in lines[0]
    assert not (tmp_path / "g").exists()
    assert run_cli(*args, "--allow-random-vgg") == 0
    export = json.loads((tmp_path / "g" / "exports" / "last.json").read_text())
    assert export["vgg_weights"] == {"source": "random", "path": None, "sha256": None}
