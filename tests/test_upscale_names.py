"""srtool upscale: whose file an output name is, and what WebP keeps (session 9, iofix).

Inputs sharing an output name are refused together before any work; ``--overwrite`` never replaces a
file among the inputs that srtool did not write; ``--format keep`` keeps a lossless WebP lossless.
Inputs are real Set14 LR images (small, so the MATLAB-bicubic "model" is cheap)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srtool.imageio import read_image, read_software, webp_is_lossless
from srtool.loading import load_model

from test_upscale_paths import run_cli, tree

LR = ("benchmarks", "Set14", "LR_bicubic", "X4")


@pytest.fixture()
def set14(shared_data) -> Path:
    return shared_data.joinpath(*LR)


def _copy(set14: Path, name: str, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    if to.suffix == ".png":
        shutil.copy(set14 / name, to)
    else:
        Image.open(set14 / name).convert("RGB").save(to)
    return to


def test_inputs_sharing_an_output_name_are_refused_together(set14, tmp_path, capsys):
    """a.png + a.jpg (-> a_x4.png): one line naming both, before any work, suggesting --format keep,
    which then writes each (a_x4.png, a_x4.jpg); the re-run skips them all. Before: the first in name
    order was written and the other failed, on every run."""
    photos = tmp_path / "photos"
    for name in ("a.png", "a.jpg", "b.png", "b.bmp", "c.png"):
        _copy(set14, {"a": "comic.png", "b": "baboon.png", "c": "face.png"}[name[0]], photos / name)
    before = tree(photos)
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic", "--no-progress"], capsys)
    assert code == 2, err
    assert tree(photos) == before  # nothing written, c.png included
    line = " ".join(err.split())
    assert f"{photos / 'a_x4.png'} from {photos / 'a.jpg'}, {photos / 'a.png'}" in line
    assert f"{photos / 'b_x4.png'} from {photos / 'b.bmp'}, {photos / 'b.png'}" in line
    assert "--format keep" in line and "Traceback" not in err
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic", "--no-progress", "--format", "keep"], capsys)
    assert code == 0, err
    written = tree(photos)
    assert {"a_x4.png", "a_x4.jpg", "b_x4.png", "b_x4.bmp", "c_x4.png"} <= set(written)
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic", "--no-progress", "--format", "keep"], capsys)
    assert code == 0 and tree(photos) == written, err
    # the same name from two folders into one -o: --format keep cannot help, so it is not suggested
    one, two = _copy(set14, "comic.png", tmp_path / "d1" / "x.png"), _copy(set14, "face.png", tmp_path / "d2" / "x.png")
    code, err = run_cli(["upscale", str(one), str(two), "-o", str(tmp_path / "out"), "-m", "bicubic"], capsys)
    line = " ".join(err.split())
    assert code == 2 and "rename them" in line and "--format keep" not in line, err
    assert not (tmp_path / "out").exists()


def test_overwrite_never_replaces_the_users_file_among_the_inputs(set14, tmp_path, capsys):
    """A folder with a.png and the user's own, unrelated a_x4.png (no srtool marker): --overwrite
    used to replace it as "srtool's output for a.png". It is kept, a.png fails naming it; without
    --overwrite both are skipped. srtool's own (marked) outputs are still replaced, WebP and BMP
    outputs included, and an unmarked file that is not an input is what --overwrite replaces."""
    photos = tmp_path / "photos"
    _copy(set14, "baboon.png", photos / "a.png")
    mine = _copy(set14, "comic.png", photos / "a_x4.png")
    data = mine.read_bytes()
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic", "--overwrite", "--no-progress"], capsys)
    assert code == 1, err
    assert mine.read_bytes() == data and sorted(tree(photos)) == ["a.png", "a_x4.png"]
    assert "never replaced, even with --overwrite" in " ".join(err.split())
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic", "--no-progress"], capsys)
    assert code == 0 and mine.read_bytes() == data, err
    # srtool's own outputs beside their inputs are replaced by --overwrite (marker found), in every format
    own = tmp_path / "own"
    _copy(set14, "baboon.png", own / "a.png")
    for fmt, name in (("png", "a_x4.png"), ("webp", "a_x4.webp"), ("gif", "a_x4.gif"), ("bmp", "a_x4.bmp")):
        for _ in range(2):  # the second run replaces the first's output
            code, err = run_cli(["upscale", str(own), "-m", "bicubic", "--format", fmt, "--overwrite",
                                 "--no-progress"], capsys)
            assert code == 0 and "failed:" not in err and "written" in err, (fmt, err)
        assert fmt == "bmp" or read_software(own / name) == "srtool upscale"
    # an input given by name, its output place held by a file that is not an input: --overwrite replaces it
    code, err = run_cli(["upscale", str(photos / "a.png"), "-m", "bicubic", "--overwrite", "--no-progress"], capsys)
    assert code == 0, err
    assert read_software(mine) == "srtool upscale"


def test_format_keep_keeps_a_lossless_webp_lossless(set14, tmp_path, capsys):
    """A lossless WebP upscaled with --format keep came back lossy (q95). Now VP8L, its pixels equal
    to the model's output exactly; a lossy WebP stays lossy; --quality 100 asks for lossless WebP."""
    photos = tmp_path / "photos"
    photos.mkdir()
    image = Image.open(set14 / "comic.png").convert("RGB")
    image.save(photos / "flat.webp", lossless=True)
    image.save(photos / "photo.webp", quality=90)
    image.save(photos / "moving.webp", save_all=True, append_images=[image.transpose(0)], lossless=True, duration=80)
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic", "--format", "keep", "--no-progress"], capsys)
    assert code == 0, err
    model = load_model("bicubic")
    flat = photos / "flat_x4.webp"
    assert webp_is_lossless(flat.read_bytes())
    assert np.array_equal(read_image(flat).array, model(np.asarray(image)))
    assert webp_is_lossless((photos / "moving_x4.webp").read_bytes())
    assert not webp_is_lossless((photos / "photo_x4.webp").read_bytes())
    out = tmp_path / "out"
    for quality, lossless in (("100", True), ("95", False)):
        code, err = run_cli(["upscale", str(photos / "photo.webp"), "-o", str(out / f"q{quality}.webp"),
                             "-m", "bicubic", "--quality", quality, "--no-progress"], capsys)
        assert code == 0, err
        assert webp_is_lossless((out / f"q{quality}.webp").read_bytes()) is lossless


def test_an_output_name_too_long_for_the_file_system_fails_before_any_work(set14, tmp_path, capsys):
    """A 251-byte input name + `_x4` is over the usual 255-byte limit: the image was upscaled, then
    failed in the rename with "OSError: [Errno 36] File name too long: '.srtool-....tmp' -> ...".
    Now it fails before the model runs, naming the limit; the other image is written."""
    photos = tmp_path / "photos"
    long = _copy(set14, "comic.png", photos / ("a" * 251 + ".png"))
    _copy(set14, "face.png", photos / "face.png")
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic", "--no-progress"], capsys)
    line = " ".join(err.split())
    assert code == 1 and "longer than this file system allows" in line and "Errno" not in line, err
    assert sorted(p.name for p in photos.iterdir()) == sorted([long.name, "face.png", "face_x4.png"])
