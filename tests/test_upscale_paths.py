"""srtool upscale: where outputs go and what a hostile or habitual command line cannot do (issue 14).

Re-runs are no-ops, ``-o FILE`` writes that file, outputs never leave -o (or their input's folder),
stdin is bounded, unusable devices are refused up front, long unicode names work, symlink loops
give each real file once, and stdin's extension follows the format written. Inputs are Set5's real
LR images (small, so the MATLAB-bicubic "model" is cheap)."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from srtool.cli import main
import srtool.imageio as imageio
SOFTWARE_MARKER = "srtool upscale"


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.fixture()
def photos(tmp_path, benchmarks_dir) -> Path:
    """A folder with two real images (Set5 LR x4: baby 128x128, bird 72x72)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("baby.png", "bird.png"):
        shutil.copy(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / name, folder / name)
    return folder


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its mtime (ns): a re-run that writes anything changes it."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_beside_inputs_does_nothing(photos, capsys):
    code, err = run_cli(["upscale", str(photos), "--model", "bicubic"], capsys)
    assert code == 0, err
    first = tree(photos)
    assert sorted(first) == ["baby.png", "baby_x4.png", "bird.png", "bird_x4.png"]
    assert imageio.read_software(photos / "baby_x4.png").startswith(SOFTWARE_MARKER)
    code, err = run_cli(["upscale", str(photos), "--model", "bicubic"], capsys)
    assert code == 0, err  # today: x16 outputs for the x4 files, "would overwrite an input" failures, exit 1
    assert tree(photos) == first
    assert "failed:" not in err
    # The original moved away: its output (name + marker) is still recognised and not upscaled again.
    (photos / "bird.png").rename(photos.parent / "bird.png")
    code, err = run_cli(["upscale", str(photos), "--model", "bicubic"], capsys)
    assert code == 0 and "earlier srtool output" in err
    assert not (photos / "bird_x4_x4.png").exists()
    # A user's own image that merely ends in _x4 (no marker) is an input like any other.
    Image.open(photos / "baby.png").save(photos / "holiday_x4.png")
    code, err = run_cli(["upscale", str(photos), "--model", "bicubic"], capsys)
    assert code == 0 and Image.open(photos / "holiday_x4_x4.png").size == (512, 512)


def test_output_file_for_one_input_error_for_several(photos, tmp_path, capsys):
    target = tmp_path / "result.png"
    code, err = run_cli(["upscale", str(photos / "bird.png"), "-o", str(target), "--model", "bicubic"], capsys)
    assert code == 0, err
    assert target.is_file() and Image.open(target).size == (288, 288)  # today: a folder named result.png
    code, err = run_cli(["upscale", str(photos / "bird.png"), "-o", str(tmp_path / "r.jpg"), "--model", "bicubic"], capsys)
    assert code == 0 and Image.open(tmp_path / "r.jpg").format == "JPEG"
    code, err = run_cli(["upscale", str(photos), "-o", str(tmp_path / "both.png"), "--model", "bicubic"], capsys)
    assert code == 2 and "names one output file" in err and not (tmp_path / "both.png").exists()


def test_outputs_never_leave_the_output_folder(photos, tmp_path, capsys):
    before = tree(tmp_path)
    code, err = run_cli(["upscale", str(photos), "-o", str(tmp_path / "out"), "--suffix", "/../../x",
                         "--model", "bicubic"], capsys)
    assert code == 2 and "path separator" in err
    (photos / "a").mkdir()
    shutil.copy(photos / "bird.png", photos / "a" / "c.png")
    before = tree(tmp_path)
    pattern = str(photos / "*" / ".." / ".." / "photos" / "a" / "*.png")  # relative part climbs out of -o
    code, err = run_cli(["upscale", pattern, "-o", str(tmp_path / "out"), "--model", "bicubic"], capsys)
    assert code == 2 and "outside -o" in err, err  # today: writes photos/a/c_x4.png, outside -o
    assert tree(tmp_path) == before
    code, err = run_cli(["upscale", str(photos / "bird.png"), "--suffix", "", "--model", "bicubic"], capsys)
    assert code == 2 and "empty suffix" in err


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_stdin_is_bounded_by_max_pixels(monkeypatch, tmp_path, capsys):
    _stdin(monkeypatch, bytes(3 << 20))  # 3 MiB of zeros, far beyond 1000 pixels' worth
    code, err = run_cli(["upscale", "-", "-o", str(tmp_path / "out"), "--model", "bicubic", "--max-pixels", "1000"], capsys)
    assert code == 1 and "more than" in err and "--max-pixels" in err
    assert not any((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_stdin_extension_follows_format_written(monkeypatch, photos, tmp_path, capsys):
    buf = io.BytesIO()
    Image.open(photos / "bird.png").save(buf, format="JPEG", quality=90)
    _stdin(monkeypatch, buf.getvalue())
    code, err = run_cli(["upscale", "-", "-o", str(tmp_path / "out"), "--format", "keep", "--model", "bicubic"], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["stdin_x4.jpg"]  # today: JPEG bytes in stdin_x4.png
    assert Image.open(tmp_path / "out" / "stdin_x4.jpg").format == "JPEG"


@pytest.mark.parametrize("device", ["hpu", "xpu", "meta", "cuda:9", "gpu"])
def test_unusable_devices_refused_in_one_line(device, photos, tmp_path, capsys):
    code, err = run_cli(["upscale", str(photos / "bird.png"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                         "--device", device], capsys)
    if device == "xpu" and "xpu" in err and code == 0:  # a machine with an Intel GPU
        return
    assert code == 2 and err.count("\n") == 1 and "--device" in err and "internal" not in err, err
    assert not (tmp_path / "out").exists()


def test_long_unicode_names_with_spaces(photos, tmp_path, capsys, benchmarks_dir):
    name = "Ünïcode café photo " + "x" * (240 - 19 - 4) + ".png"  # 240 characters, 244 bytes
    assert len(name) == 240
    src = photos / name
    shutil.copy(photos / "bird.png", src)
    code, err = run_cli(["upscale", str(src), "--model", "bicubic"], capsys)
    assert code == 0, err  # today: errno 36 on the temporary name
    assert (photos / (name[:-4] + "_x4.png")).is_file()
    code, err = run_cli(["upscale", str(photos), "-o", str(tmp_path / "out dir"), "--model", "bicubic"], capsys)
    assert code == 0, err
    assert (tmp_path / "out dir" / (name[:-4] + "_x4.png")).is_file()
    # prepare: one such source must not stop the run
    hr = tmp_path / "hr"
    hr.mkdir()
    shutil.copy(benchmarks_dir / "Set5" / "HR" / "bird.png", hr / name)
    code, err = run_cli(["prepare", "benchmark", str(hr), "--out", str(tmp_path / "prep"), "--no-progress"], capsys)
    assert code == 0, err
    assert (tmp_path / "prep" / "LR_bicubic" / "X4" / name).is_file()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_upscales_each_real_file_once(photos, tmp_path, capsys):
    (photos / "sub").symlink_to(".", target_is_directory=True)
    code, err = run_cli(["upscale", str(photos / "**" / "*.png"), "-o", str(tmp_path / "g"), "--model", "bicubic"], capsys)
    assert code == 0, err
    assert sorted(tree(tmp_path / "g")) == ["baby_x4.png", "bird_x4.png"]  # today: 41 copies, 38 folders deep
    code, err = run_cli(["upscale", str(photos), "-r", "-o", str(tmp_path / "r"), "--model", "bicubic"], capsys)
    assert code == 0, err
    assert sorted(tree(tmp_path / "r")) == ["baby_x4.png", "bird_x4.png"]


@pytest.mark.parametrize("fmt, ext", [("jpg", ".jpg"), ("tiff", ".tif")])
def test_marker_recognises_jpeg_and_tiff_outputs(fmt, ext, photos, capsys):
    code, err = run_cli(["upscale", str(photos / "bird.png"), "--format", fmt, "--model", "bicubic"], capsys)
    assert code == 0, err
    out = photos / f"bird_x4{ext}"
    assert imageio.read_software(out).startswith(SOFTWARE_MARKER)
    (photos / "bird.png").unlink()  # only the output is left: the marker alone must keep it from being an input
    before = tree(photos)
    code, err = run_cli(["upscale", str(photos), "--format", fmt, "--model", "bicubic"], capsys)
    assert code == 0 and "earlier srtool output" in err, err
    assert not (photos / f"bird_x4_x4{ext}").exists()
    assert {k: v for k, v in tree(photos).items() if k in before} == before


def test_marker_is_written_into_every_png_kind(tmp_path):
    """8/16-bit, gray/colour, with and without alpha: every PNG srtool writes carries the marker."""
    import numpy as np

    for dtype in (np.uint8, np.uint16):
        for shape in ((6, 5), (6, 5, 2), (6, 5, 3), (6, 5, 4)):
            data = imageio.encode_image(np.full(shape, 7, dtype), "png", software=SOFTWARE_MARKER)
            path = tmp_path / "m.png"
            path.write_bytes(data)
            assert imageio.read_software(path) == SOFTWARE_MARKER, (dtype, shape)


def test_output_file_format_decides_whether_frames_fit_before_any_work(tmp_path, capsys, monkeypatch):
    """`-o big.jpg` on an animation: refused without upscaling the frames (JPEG holds one image)."""
    import srtool.upscale as upscale_module

    upscaled = []
    real = upscale_module.upscale_pixels
    monkeypatch.setattr(upscale_module, "upscale_pixels", lambda *a, **k: upscaled.append(1) or real(*a, **k))
    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    code, err = run_cli(["upscale", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "big.jpg"), "--model", "bicubic"], capsys)
    assert code != 0 and "3 frames" in err and not (tmp_path / "big.jpg").exists(), err
    assert not upscaled  # the refusal came before any frame was upscaled


def test_bicubic_still_validates_precision():
    from srtool.errors import UserError
    from srtool.loading import load_model

    with pytest.raises(UserError, match="precision"):
        load_model("bicubic", precision="fp17")


def test_eval_refuses_a_device_that_cannot_compute(benchmarks_dir, tmp_path, capsys):
    import torch

    from srtool.models import RRDBNet, RRDBNetConfig

    weights = tmp_path / "tiny_rrdb.pth"
    torch.save({"params_ema": RRDBNet(RRDBNetConfig(n_feats=8, n_blocks=1, growth=4)).state_dict()}, weights)
    code, err = run_cli(["eval", "--model", str(weights), "--data", str(benchmarks_dir / "Set5"), "--device", "meta"], capsys)
    assert code == 2 and "meta" in err and "internal" not in err, err
    # bicubic alone runs no network, but the device is still the user's mistake to hear about
    code, err = run_cli(["eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "--device", "meta"], capsys)
    assert code == 2 and "meta" in err and "internal" not in err, err


def test_prepare_skips_a_source_whose_outputs_cannot_be_named(tmp_path, benchmarks_dir, capsys):
    """A 255-byte source name fits, its record name (NAME.json) does not: that image is skipped, the others done."""
    hr = tmp_path / "hr"
    hr.mkdir()
    shutil.copy(benchmarks_dir / "Set5" / "HR" / "bird.png", hr / ("b" * 251 + ".png"))
    shutil.copy(benchmarks_dir / "Set5" / "HR" / "baby.png", hr / "baby.png")
    code, err = run_cli(["prepare", "benchmark", str(hr), "--out", str(tmp_path / "prep"), "--no-progress"], capsys)
    assert code == 1 and "too long" in err, err  # skipped and named; exit 1 like any bad input
    assert (tmp_path / "prep" / "HR" / "baby.png").is_file()
