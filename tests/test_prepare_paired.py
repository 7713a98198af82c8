"""``srtool prepare folder HR --lr LR``: a training store from the user's own LR/HR pairs (issue 14 item 19).

Real pairs: Set5 HR with its LR images, degraded by the test (noise + JPEG) so that a store built
from MATLAB bicubic instead of the given LR would differ. Names are matched (``baby.png`` or
DIV2K-style ``babyx4.png``), the scale is checked exactly, and ``train`` runs on the result unchanged.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli
from srtool.prepare import TrainingStore


def degraded_lr(benchmarks_dir: Path, folder: Path) -> Path:
    """Set5's LR x4 with noise and JPEG artefacts, saved as PNG (some with DIV2K's NAMEx4 naming)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, src in enumerate(sorted((benchmarks_dir / "Set5" / "LR_bicubic" / "X4").glob("*.png"))):
        arr = np.asarray(Image.open(src).convert("RGB")).astype(np.int16)
        arr = np.clip(arr + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=40)
        name = f"{src.stem}x4.png" if i % 2 else src.name
        Image.open(buf).save(folder / name)
    return folder


def test_paired_store_uses_the_given_lr(benchmarks_dir, tmp_path, capsys):
    hr = benchmarks_dir / "Set5" / "HR"
    lr = degraded_lr(benchmarks_dir, tmp_path / "lr")
    out = tmp_path / "pairs"
    code = run_cli("prepare", "folder", str(hr), "--lr", str(lr), "--out", str(out), "--no-progress", "--workers", "1")
    assert code == 0, capsys.readouterr().err  # today: no such option
    store = TrainingStore.open(out, 4)
    assert store.num_images == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "folder-paired" and "given" in manifest["recipe"]["function"]
    for i in range(len(store)):
        name = store.image_name(i)
        given = lr / (f"{name}.png" if (lr / f"{name}.png").exists() else f"{name}x4.png")
        given_px = np.asarray(Image.open(given).convert("RGB"))
        hr_px = np.asarray(Image.open(hr / f"{name}.png").convert("RGB"))
        y, x, h, w = store.window(i)
        assert np.array_equal(store.lr(i), given_px[y // 4: (y + h) // 4, x // 4: (x + w) // 4]), name  # not bicubic
        assert np.array_equal(store.hr(i), hr_px[y: y + h, x: x + w])
        assert np.array_equal(np.asarray(Image.open(out / "LR_bicubic" / "X4" / f"{name}.png").convert("RGB")), given_px)
    # a re-run reuses everything
    assert run_cli("prepare", "folder", str(hr), "--lr", str(lr), "--out", str(out), "--no-progress") == 0
    assert "5" in capsys.readouterr().out


@pytest.mark.slow  # ~20 s on a busy 2-core machine, mostly importing and building the trainer
def test_train_uses_a_paired_store_unchanged(benchmarks_dir, tmp_path, capsys):
    from srtool.prepare import prepare_folder
    from srtool.train import TrainOptions, train

    out = prepare_folder([benchmarks_dir / "Set5" / "HR"], tmp_path / "pairs", scale=4, workers=1, progress=False,
                         lr_dir=degraded_lr(benchmarks_dir, tmp_path / "lr"))

    overrides = ["train.num_workers=0", "validation.datasets=[]", "log.every=1", "checkpoint.every=2",
                 "train.epochs=1", "train.iters_per_epoch=2", "model.generator.n_blocks=1",
                 "model.generator.n_feats=16", "train.batch_size=2", "train.hr_crop=32"]
    result = train(TrainOptions(preset="srresnet", data=[out], out=tmp_path / "run", overrides=overrides, progress=False))
    assert result.iteration == 2


def test_pairs_are_checked_before_any_work(benchmarks_dir, tmp_path, capsys):
    hr = benchmarks_dir / "Set5" / "HR"
    lr = degraded_lr(benchmarks_dir, tmp_path / "lr")
    (lr / "birdx4.png").unlink(missing_ok=True)
    (lr / "bird.png").unlink(missing_ok=True)
    code = run_cli("prepare", "folder", str(hr), "--lr", str(lr), "--out", str(tmp_path / "o1"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "no LR image for bird.png" in err and not (tmp_path / "o1").exists()
    shutil.copy(lr / "baby.png", lr / "bird.png")
    shutil.copy(lr / "baby.png", lr / "extra.png")
    code = run_cli("prepare", "folder", str(hr), "--lr", str(lr), "--out", str(tmp_path / "o2"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "extra.png has no HR image" in err
    (lr / "extra.png").unlink()
    # bird.png is now baby's LR (128x128), not 1/4 of bird's 288x288 HR: that pair is refused, named
    code = run_cli("prepare", "folder", str(hr), "--lr", str(lr), "--out", str(tmp_path / "o3"), "--no-progress")
    err = capsys.readouterr().err
    assert code != 0 and "bird.png: LR 128x128 is not exactly 1/4 of its HR bird.png 288x288" in err.replace("\n", " "), err


def test_given_lr_inside_the_outputs_lr_folder_is_refused_even_with_overwrite(benchmarks_dir, tmp_path, capsys):
    """`prepare folder HR --lr OUT/LR_bicubic/X4 --out OUT --overwrite` re-encoded the user's LR inputs in
    place (a 16-bit LR would become 8-bit): the given LR folder is an input, refused like HR's (exit 2)."""
    out = tmp_path / "out"
    lr = out / "LR_bicubic" / "X4"
    lr.mkdir(parents=True)
    for src in sorted((benchmarks_dir / "Set5" / "LR_bicubic" / "X4").glob("*.png"))[:2]:
        arr = np.asarray(Image.open(src).convert("RGB")).astype(np.uint16) * 257
        Image.fromarray(arr[..., 0]).save(lr / src.name)  # 16-bit gray: the writer would make it 8-bit
    hr = tmp_path / "hr"
    hr.mkdir()
    for src in sorted((benchmarks_dir / "Set5" / "HR").glob("*.png"))[:2]:
        Image.open(src).convert("L").save(hr / src.name)
    before = {p.name: p.read_bytes() for p in lr.iterdir()}
    code = run_cli("prepare", "folder", str(hr), "--lr", str(lr), "--out", str(out), "--overwrite",
                   "--workers", "1", "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "would write into the source folder" in err and str(lr) in err, err
    assert {p.name: p.read_bytes() for p in lr.iterdir()} == before
