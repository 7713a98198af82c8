"""srtool upscale: pixel fidelity round trips (file -> upscale -> file -> pixels) and batch behaviour.

Fidelity tests run a nearest-neighbour x4 "network" through the real engine and I/O path, so every
input pixel must come back bit-exact at out[::4, ::4]: any colour shift, channel swap, lost bit of
depth, alpha mistake or metadata loss shows."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms
from torch import nn

from srtool.cli import main
from srtool.imageio import apply_orientation, read_image
from srtool.engine import SRModel
from srtool.fusion import prepare_network
from srtool.resize import imresize
from srtool.upscale import run_batch
from srtool.upscale_jobs import UpscaleOptions, plan_jobs

RNG = np.random.default_rng(0)


class Nearest(nn.Module):
    scale = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="nearest")


def nearest_model(tile=16) -> SRModel:
    return SRModel("nearest", 4, prepare_network(Nearest(), torch.device("cpu"), "fp32"), tile=tile, tile_pad=4)


def roundtrip(tmp_path: Path, name: str, data: bytes, **options) -> tuple[Path, Path]:
    src = tmp_path / "in" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    opts = UpscaleOptions(output=str(tmp_path / "out"), workers=2, **options)
    jobs = plan_jobs([str(src)], opts, nearest_model().scale)
    result = run_batch(nearest_model(), jobs, opts)
    assert [j.status for j in result.jobs] == ["written"], [j.message for j in result.jobs]
    return src, jobs[0].output


def pil_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png16_bytes(array: np.ndarray) -> bytes:
    """A 16-bit colour PNG written by pypng (independent of srtool's own PNG writer)."""
    import png

    h, w, c = array.shape
    buf = io.BytesIO()
    png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16).write(buf, array.reshape(h, w * c).tolist())
    return buf.getvalue()


def read_png16(path: Path) -> np.ndarray:
    import png

    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    assert info["bitdepth"] == 16
    return np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, info["planes"])


# --------------------------------------------------------------------------------------- fidelity


def test_rgb_roundtrip(tmp_path):
    arr = RNG.integers(0, 256, (13, 17, 3)).astype(np.uint8)
    _, out = roundtrip(tmp_path, "rgb.png", pil_bytes(Image.fromarray(arr)))
    img = Image.open(out)
    assert img.mode == "RGB" and img.size == (68, 52) and out.name == "rgb_x4.png"
    np.testing.assert_array_equal(np.asarray(img)[::4, ::4], arr)


def test_gray_stays_single_channel(tmp_path):
    arr = RNG.integers(0, 256, (9, 14)).astype(np.uint8)
    _, out = roundtrip(tmp_path, "gray.png", pil_bytes(Image.fromarray(arr)))
    img = Image.open(out)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img)[::4, ::4], arr)


def test_rgba_roundtrip_premultiplied(tmp_path):
    arr = RNG.integers(0, 256, (11, 10, 4)).astype(np.uint8)
    arr[:3, :, 3] = 0  # fully transparent rows: their colour is undefined and comes back as 0
    _, out = roundtrip(tmp_path, "rgba.png", pil_bytes(Image.fromarray(arr)))
    img = np.asarray(Image.open(out))
    assert img.shape == (44, 40, 4)
    np.testing.assert_array_equal(img[::4, ::4][3:], arr[3:])
    assert (img[:12, :, 3] == 0).all() and (img[:12, :, :3] == 0).all()


def test_la_and_palette(tmp_path):
    la = RNG.integers(1, 256, (8, 9, 2)).astype(np.uint8)
    _, out = roundtrip(tmp_path, "la.png", pil_bytes(Image.fromarray(la)))
    img = Image.open(out)
    assert img.mode == "LA"
    np.testing.assert_array_equal(np.asarray(img)[::4, ::4], la)

    rgb = RNG.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    pal = Image.fromarray(rgb).quantize(colors=16)
    _, out = roundtrip(tmp_path, "pal.png", pil_bytes(pal))
    img = Image.open(out)
    assert img.mode == "RGB"  # never re-quantised
    np.testing.assert_array_equal(np.asarray(img)[::4, ::4], np.asarray(pal.convert("RGB")))

    pal.info["transparency"] = 0
    _, out = roundtrip(tmp_path, "palt.png", pil_bytes(pal, transparency=0))
    img = Image.open(out)
    assert img.mode == "RGBA"
    expected = np.asarray(pal.convert("RGBA"))
    got = np.asarray(img)[::4, ::4]
    opaque = expected[..., 3] > 0
    np.testing.assert_array_equal(got[opaque], expected[opaque])
    assert (got[~opaque, 3] == 0).all()


def test_16bit_gray_png(tmp_path):
    arr = RNG.integers(0, 65536, (7, 9)).astype(np.uint16)
    _, out = roundtrip(tmp_path, "g16.png", pil_bytes(Image.fromarray(arr)))
    img = Image.open(out)
    assert img.mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(img)[::4, ::4], arr)


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16bit_colour_png(tmp_path, channels):
    arr = RNG.integers(0, 65536, (6, 8, channels)).astype(np.uint16)
    arr[..., -1] |= 1 if channels in (2, 4) else 0  # no fully transparent pixel
    _, out = roundtrip(tmp_path, f"c16_{channels}.png", png16_bytes(arr))
    back = read_png16(out)  # decoded by pypng: really 16 bits on disk
    assert back.shape == (24, 32, channels)
    np.testing.assert_array_equal(back[::4, ::4], arr)


def test_16bit_tiff(tmp_path):
    import tifffile

    arr = RNG.integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb")
    _, out = roundtrip(tmp_path, "c16.tif", buf.getvalue(), format="keep")
    assert out.suffix == ".tif"
    back = tifffile.imread(out)
    assert back.dtype == np.uint16 and back.shape == (24, 20, 3)
    np.testing.assert_array_equal(back[::4, ::4], arr)

    gray = RNG.integers(0, 65536, (5, 4)).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, gray, photometric="minisblack")
    _, out = roundtrip(tmp_path, "g16.tiff", buf.getvalue(), format="keep")
    np.testing.assert_array_equal(tifffile.imread(out)[::4, ::4], gray)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "srtool-test-camera"  # Make
    return exif


def test_exif_orientation_applied_icc_and_exif_kept(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    arr = RNG.integers(0, 256, (10, 16, 3)).astype(np.uint8)
    data = pil_bytes(Image.fromarray(arr), exif=_exif(6), icc_profile=icc)
    _, out = roundtrip(tmp_path, "rot.png", data)
    img = Image.open(out)
    assert img.size == (40, 64)  # rotated: 10 wide, 16 high, x4
    np.testing.assert_array_equal(np.asarray(img)[::4, ::4], np.rot90(arr, -1))
    assert img.info.get("icc_profile") == icc
    exif = img.getexif()
    assert exif.get(0x010F) == "srtool-test-camera" and exif.get(0x0112, 1) == 1

    jpg = pil_bytes(Image.fromarray(arr), "JPEG", quality=95, exif=_exif(8), icc_profile=icc)
    _, out = roundtrip(tmp_path, "rot.jpg", jpg, format="keep")
    img = Image.open(out)
    assert out.suffix == ".jpg" and img.format == "JPEG" and img.size == (40, 64)
    assert img.info.get("icc_profile") == icc and img.getexif().get(0x010F) == "srtool-test-camera"
    assert img.getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil(orientation):
    from PIL import ImageOps

    arr = RNG.integers(0, 256, (3, 5, 3)).astype(np.uint8)
    img = Image.open(io.BytesIO(pil_bytes(Image.fromarray(arr), exif=_exif(orientation))))
    expected = np.asarray(ImageOps.exif_transpose(img))
    np.testing.assert_array_equal(apply_orientation(arr, orientation), expected)
    np.testing.assert_array_equal(read_image(pil_bytes(Image.fromarray(arr), exif=_exif(orientation))).array, expected)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (5, 3, 3)])
def test_tiny_and_smaller_than_tile(tmp_path, shape):
    arr = RNG.integers(0, 256, shape).astype(np.uint8)
    _, out = roundtrip(tmp_path, "tiny.png", pil_bytes(Image.fromarray(arr)))
    np.testing.assert_array_equal(np.asarray(Image.open(out))[::4, ::4], arr)


# ------------------------------------------------------------------------------------------ the CLI


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0), capsys.readouterr().err


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_corrupt_file_in_batch(tmp_path, capsys):
    good = [_write(tmp_path / "in" / f"{i}.png", RNG.integers(0, 256, (6, 7, 3)).astype(np.uint8)) for i in range(3)]
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "in" / "truncated.png").write_bytes(good[0].read_bytes()[:60])
    code, err = run_cli(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic"], capsys)
    assert code == 1
    assert "broken.png" in err and "truncated.png" in err and "written" in err
    for src in good:
        out = np.asarray(Image.open(tmp_path / "out" / f"{src.stem}_x4.png"))
        np.testing.assert_array_equal(out, imresize(np.asarray(Image.open(src)), 4.0))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0_x4.png", "1_x4.png", "2_x4.png"]


def test_quiet_still_names_the_failed_files(tmp_path, capsys):
    """-q drops progress, the summary and notices, never the reason for exit status 1 (README: errors still print)."""
    _write(tmp_path / "in" / "good.png", RNG.integers(0, 256, (6, 7, 3)).astype(np.uint8))
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, err = run_cli(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "bicubic", "-q"], capsys)
    assert code == 1
    assert "broken.png" in err and "failed:" in err
    assert "good.png" not in err and "written" not in err  # no summary table under -q
    assert (tmp_path / "out" / "good_x4.png").is_file()


def test_skip_existing_overwrite_and_inputs_never_overwritten(tmp_path, capsys):
    src = _write(tmp_path / "a.png", RNG.integers(0, 256, (5, 5, 3)).astype(np.uint8))
    original = src.read_bytes()
    assert run_cli(["upscale", str(src), "--model", "bicubic"], capsys)[0] == 0  # beside the input
    out = tmp_path / "a_x4.png"
    out.write_bytes(b"user's file")
    code, err = run_cli(["upscale", str(src), "--model", "bicubic"], capsys)
    assert code == 0 and "exists" in err and out.read_bytes() == b"user's file"
    assert run_cli(["upscale", str(src), "--model", "bicubic", "--overwrite"], capsys)[0] == 0
    assert Image.open(out).size == (20, 20)
    code, err = run_cli(["upscale", str(src), "--model", "bicubic", "--suffix", "", "--overwrite"], capsys)
    assert code == 2 and "empty suffix" in err  # refused before any work
    code, err = run_cli(["upscale", str(src), "-o", str(tmp_path), "--model", "bicubic", "--suffix", "", "--overwrite"], capsys)
    assert code == 1 and "would overwrite an input" in err
    assert src.read_bytes() == original


def test_recursive_mirrors_folders_and_globs(tmp_path, capsys):
    for rel in ("x.png", "sub/y.png", "sub/deeper/z.jpg"):
        _write(tmp_path / "in" / rel, RNG.integers(0, 256, (4, 4, 3)).astype(np.uint8))
    code, err = run_cli(["upscale", str(tmp_path / "in"), "-r", "-o", str(tmp_path / "out"), "--model", "bicubic", "--format", "keep"], capsys)
    assert code == 0, err
    outs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert outs == ["sub/deeper/z_x4.jpg", "sub/y_x4.png", "x_x4.png"]
    code, err = run_cli(["upscale", str(tmp_path / "in" / "**" / "*.png"), "-o", str(tmp_path / "g"), "--model", "bicubic",
                         "--format", "webp", "--suffix", "_big"], capsys)
    assert code == 0, err
    assert sorted(str(p.relative_to(tmp_path / "g")) for p in (tmp_path / "g").rglob("*.webp")) == ["sub/y_big.webp", "x_big.webp"]
    code, err = run_cli(["upscale", str(tmp_path / "in"), "--model", "bicubic"], capsys)
    assert code == 0 and (tmp_path / "in" / "x_x4.png").is_file()  # no -o: beside the input


def test_workers_never_mix_outputs(tmp_path, capsys):
    inputs = [_write(tmp_path / "in" / f"img{i:02d}.png", RNG.integers(0, 256, (6 + i % 3, 5 + i % 4, 3)).astype(np.uint8))
              for i in range(10)]
    code, err = run_cli(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic", "-j", "4"], capsys)
    assert code == 0, err
    for src in inputs:
        out = np.asarray(Image.open(tmp_path / "out" / f"{src.stem}_x4.png"))
        np.testing.assert_array_equal(out, imresize(np.asarray(Image.open(src)), 4.0))


def test_scale_outscale_and_max_pixels(tmp_path, capsys):
    from srtool.models import SRResNet, SRResNetConfig
    from srtool.models.export import save_export

    src = _write(tmp_path / "a.png", RNG.integers(0, 256, (6, 8, 3)).astype(np.uint8))
    model_path = save_export(tmp_path / "m.safetensors", SRResNet(SRResNetConfig(n_blocks=1, n_feats=8)))
    code, err = run_cli(["upscale", str(src), "--model", str(model_path), "--scale", "2"], capsys)
    assert code == 2 and "--scale 2 disagrees" in err and "x4" in err
    code, err = run_cli(["upscale", str(src), "--model", "bicubic", "--outscale", "2", "-o", str(tmp_path / "o")], capsys)
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / "o" / "a_x2.png"))
    lr = np.asarray(Image.open(src))
    np.testing.assert_array_equal(out, imresize(imresize(lr, 4.0), output_shape=(12, 16)))
    big = _write(tmp_path / "big" / "big.png", np.zeros((100, 100), np.uint8))
    code, err = run_cli(["upscale", str(big), "--model", "bicubic", "--max-pixels", "5000", "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and "decompression bomb" in err and not (tmp_path / "o" / "big_x4.png").exists()
    assert "100x100 = 10,000 pixels exceeds the limit of 5,000" in err  # small limits readable (was "0.0 ... 0.0")
    code, err = run_cli(["upscale", str(tmp_path / "missing.png")], capsys)
    assert code == 2 and "missing.png" in err


def test_stdin_to_stdout(tmp_path):
    arr = RNG.integers(0, 256, (7, 9, 3)).astype(np.uint8)
    proc = subprocess.run(
        [sys.executable, "-m", "srtool", "upscale", "-", "-o", "-", "--model", "bicubic"],
        input=pil_bytes(Image.fromarray(arr)), capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-1000:]
    out = np.asarray(Image.open(io.BytesIO(proc.stdout)))
    np.testing.assert_array_equal(out, imresize(arr, 4.0))
    assert not list(tmp_path.iterdir())


def _mixed_inputs(folder: Path) -> dict[str, np.ndarray]:
    arrays = {"rgb": RNG.integers(0, 256, (90, 70, 3)).astype(np.uint8), "gray": RNG.integers(0, 256, (64, 33)).astype(np.uint8),
              "rgba": RNG.integers(0, 256, (40, 50, 4)).astype(np.uint8), "small": RNG.integers(0, 256, (3, 2, 3)).astype(np.uint8)}
    for name, array in arrays.items():
        _write(folder / f"{name}.png", array)
    _write(folder / "deep.png", RNG.integers(0, 256, (30, 20, 3)).astype(np.uint8))
    (folder / "deep16.png").write_bytes(png16_bytes(RNG.integers(0, 65536, (30, 20, 3)).astype(np.uint16)))
    return arrays


def test_lanes_in_order_and_overlapped_io_write_the_same_files(tmp_path, monkeypatch, two_torch_threads):
    """A network on the CPU runs one image per core in lanes (-j 2, 4), or one image at a time encoded
    between its calls (-j 1); bicubic/GPU overlap I/O with the upscaling. All three write byte-identical
    files, and a write that fails fails only its own image."""
    from srtool import upscale

    model = nearest_model(tile=64)
    assert upscale.io_between_images(model) and not upscale.io_between_images(SRModel("bicubic", 4))
    assert [upscale.image_lanes(model, j, 6) for j in (1, 2, 4)] == [1, 2, 2]
    assert upscale.image_lanes(model, 4, 1) == 1 and upscale.image_lanes(SRModel("bicubic", 4), 4, 6) == 1
    arrays = _mixed_inputs(tmp_path / "in")

    def outputs(folder: str, workers: int) -> dict[str, bytes]:
        opts = UpscaleOptions(output=str(tmp_path / folder), workers=workers)
        result = run_batch(model, plan_jobs([str(tmp_path / "in")], opts, model.scale), opts)
        assert [j.status for j in result.jobs] == ["written"] * 6, [j.message for j in result.jobs]
        return {p.name: p.read_bytes() for p in sorted((tmp_path / folder).iterdir())}

    between = {j: outputs(f"between{j}", j) for j in (1, 2, 4)}
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(upscale, "io_between_images", lambda model: False)
    overlapped = outputs("overlapped", 2)
    assert between[1] == between[2] == between[4] == overlapped
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "between2" / "rgb_x4.png"))[::4, ::4], arrays["rgb"])

    monkeypatch.undo()
    for workers in (1, 2):
        (tmp_path / f"between{workers}" / "gray_x4.png").unlink()
        (tmp_path / f"between{workers}" / "gray_x4.png").mkdir()  # the rename onto it fails
        opts = UpscaleOptions(output=str(tmp_path / f"between{workers}"), workers=workers, overwrite=True)
        result = run_batch(model, plan_jobs([str(tmp_path / "in")], opts, model.scale), opts)
        status = {Path(j.label).name: (j.status, j.message) for j in result.jobs}
        assert status.pop("gray.png")[0] == "failed" and {s for s, _ in status.values()} == {"written"}
        assert not [p for p in (tmp_path / f"between{workers}").iterdir() if p.name.endswith(".tmp")]


def test_lanes_run_one_image_per_core_and_large_images_alone(tmp_path, monkeypatch, two_torch_threads):
    """Two lanes each run a network call on a one-thread team at the same time (a barrier inside the
    network call proves it); an image whose output reaches the large-image size runs alone on both
    threads; afterwards the main thread and threads started later get two threads again."""
    import threading

    from srtool import upscale

    model = nearest_model(tile=64)
    _mixed_inputs(tmp_path / "in")
    large = 90 * 70 * 3 * 16  # rgb's output bytes: it is the large image here
    monkeypatch.setattr(upscale, "LARGE_OUTPUT_BYTES", large)
    meet = threading.Barrier(2, timeout=30)
    lock, inside, calls, alone_at_end = threading.Lock(), [0], [], []
    real = upscale.upscale_decoded

    def watched(model, decoded, options, fmt, cancel=None, progress=None):
        with lock:
            inside[0] += 1
            calls.append((decoded.array.shape, torch.get_num_threads(), inside[0], threading.current_thread().name))
        try:
            if decoded.array.shape[:2] in ((3, 2), (40, 50)):
                meet.wait()  # both small images must be in their network calls at once
            if decoded.array.shape[:2] == (90, 70):
                time.sleep(0.2)
                alone_at_end.append(inside[0])  # still alone at the end of its call
            return real(model, decoded, options, fmt, cancel, progress)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(upscale, "upscale_decoded", watched)
    opts = UpscaleOptions(output=str(tmp_path / "out"), workers=2)
    jobs = plan_jobs([str(tmp_path / "in")], opts, model.scale)
    result = run_batch(model, jobs, opts)
    assert [j.status for j in result.jobs] == ["written"] * 6, [j.message for j in result.jobs]
    by_shape = {shape: (threads, concurrent, name) for shape, threads, concurrent, name in calls}
    assert len(calls) == 6 and {name for *_, name in calls} == {"srtool-lane-0", "srtool-lane-1"}
    assert by_shape[(90, 70, 3)][:2] == (2, 1) and alone_at_end == [1]  # alone, on both threads
    assert {threads for shape, (threads, _, _) in by_shape.items() if shape != (90, 70, 3)} == {1}
    assert torch.get_num_threads() == 2
    later = []
    thread = threading.Thread(target=lambda: (torch.ones(1) + 1, later.append(torch.get_num_threads())))
    thread.start()
    thread.join()
    assert later == [2]


def test_cancel_stops_the_engine_between_tiles():
    """How lanes stop on Ctrl-C: the engine checks the event before every tile."""
    import threading

    from srtool.engine import Cancelled, upscale_array

    model = nearest_model(tile=16)
    image = RNG.integers(0, 256, (40, 40, 3)).astype(np.uint8)  # 9 tiles
    cancel = threading.Event()
    np.testing.assert_array_equal(upscale_array(model, image, cancel=cancel)[::4, ::4], image)
    cancel.set()
    with pytest.raises(Cancelled):
        upscale_array(model, image, cancel=cancel)


def test_lanes_share_one_malloc_arena_in_a_fresh_process(tmp_path):
    """load_model on the CPU applies the allocator policy before any thread allocates, so image lanes
    started later (and a progress-bar-like thread started before them) use the main arena: their
    feature maps reuse freed pages instead of faulting them in (srtool/memory.py)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc_info")
    for i in range(4):
        _write(tmp_path / "in" / f"{i}.png", RNG.integers(0, 256, (48, 48, 3)).astype(np.uint8))
    probe = (
        "import ctypes, re, sys, threading, time, torch\n"
        "from srtool.loading import load_model\n"
        "from srtool.upscale import run_batch\n"
        "from srtool.upscale_jobs import UpscaleOptions, plan_jobs\n"
        "torch.set_num_threads(2)\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.open_memstream.restype = ctypes.c_void_p\n"
        "def arenas():\n"
        "    buf, size = ctypes.c_char_p(), ctypes.c_size_t()\n"
        "    f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))\n"
        "    libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))\n"
        "    return len(re.findall(r'<heap nr=', buf.value.decode()))\n"
        "model = load_model('default', device='cpu', precision='fp32')\n"
        "stop = threading.Event()\n"
        "def refresher():\n"
        "    while not stop.is_set(): [bytearray(4000) for _ in range(50)]; time.sleep(0.005)\n"
        "threading.Thread(target=refresher, daemon=True).start()\n"
        "opts = UpscaleOptions(output=sys.argv[2], workers=2)\n"
        "result = run_batch(model, plan_jobs([sys.argv[1]], opts, model.scale), opts)\n"
        "assert [j.status for j in result.jobs] == ['written'] * 4, [j.message for j in result.jobs]\n"
        "print(arenas())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "in"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1", done.stdout


@pytest.mark.parametrize("model_kind", ["bicubic", "network"])
def test_ctrl_c_leaves_no_partial_file(tmp_path, model_kind):
    """Bicubic decodes and encodes beside the upscaling, a network on the CPU between its calls:
    either way an interrupt leaves whole images or none."""
    src = tmp_path / "in"
    for i in range(30):
        _write(src / f"{i:02d}.png", RNG.integers(0, 256, (128, 128, 3)).astype(np.uint8))
    out = tmp_path / "out"
    model = "bicubic"
    if model_kind == "network":
        from srtool.models import SRResNet, SRResNetConfig
        from srtool.models.export import save_export

        model = str(save_export(tmp_path / "m.safetensors", SRResNet(SRResNetConfig(n_blocks=1, n_feats=8))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "srtool", "upscale", str(src), "-o", str(out), "--model", model, "-j", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 90
    while time.time() < deadline and not (out.exists() and any(p.suffix == ".png" for p in out.iterdir())):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # mid-batch: writes are in flight
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err.decode()[-500:]
    names = os.listdir(out)
    assert 1 <= len(names) < 30 and not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    for name in names:  # everything that exists is a complete image
        Image.open(out / name).load()


def test_an_image_surely_large_from_its_header_is_decoded_only_once_it_runs_alone(tmp_path, monkeypatch, two_torch_threads):
    """An input whose header already says its output reaches the large-image size takes the cores
    before it is decoded: no other image is being upscaled when it is (before, it was decoded first
    and its pixels held while it waited for the other lanes to finish their images)."""
    import threading

    from srtool import upscale

    model = nearest_model(tile=64)
    _mixed_inputs(tmp_path / "in")
    monkeypatch.setattr(upscale, "LARGE_OUTPUT_BYTES", 90 * 70 * 16)  # rgb's pixels x 16: large by its header alone
    lock, upscaling, beside_large = threading.Lock(), [0], []
    real_decode, real_upscale = upscale._decode, upscale.upscale_decoded

    def decode(job, options):
        if Path(job.label).name == "rgb.png":
            with lock:
                beside_large.append(upscaling[0])
        return real_decode(job, options)

    def upscale_decoded(model, decoded, options, fmt, cancel=None, progress=None):
        with lock:
            upscaling[0] += 1
        try:
            time.sleep(0.15)  # each image is a while in its call: time for the large one to come up beside it
            return real_upscale(model, decoded, options, fmt, cancel, progress)
        finally:
            with lock:
                upscaling[0] -= 1

    monkeypatch.setattr(upscale, "_decode", decode)
    monkeypatch.setattr(upscale, "upscale_decoded", upscale_decoded)
    opts = UpscaleOptions(output=str(tmp_path / "out"), workers=2)
    result = run_batch(model, plan_jobs([str(tmp_path / "in")], opts, model.scale), opts)
    assert [j.status for j in result.jobs] == ["written"] * 6, [j.message for j in result.jobs]
    assert beside_large == [0]
