"""Issue 15 items 7, 8 and 25: one robust image reader for upscale, eval and prepare.

* 7: a broken EXIF orientation is "no orientation" with one warning line; an EXIF block PIL cannot
  re-encode no longer crashes eval/prepare; any decoder exception (a TIFF that makes PIL raise
  TypeError) is an unreadable-image error naming the file, never an internal error.
* 8: a truncated HR image is found before any model runs (PNG/JPEG end markers, else a full decode).
* 25: animated GIF/APNG/WebP and multi-page TIFF: every frame is upscaled and written as an animated
  or multi-page file (durations and loop kept); a single-image output format is refused, nothing is
  dropped silently.

All inputs are real images (crops of Set5) written by the tests; inputs are hashed before and after.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli_err
from srtool.imageio import ImageReadError, open_image, read_image
from srtool.resize import imresize


cli = run_cli_err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set5_crop(shared_data: Path, name: str = "baby", box=(40, 60, 104, 108)) -> Image.Image:
    return Image.open(shared_data / "benchmarks" / "Set5" / "HR" / f"{name}.png").convert("RGB").crop(box)


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], trailer: bytes = b"\x00" * 32) -> bytes:
    """An EXIF block (little-endian TIFF structure): one IFD of (tag, type, count, 4-byte value)."""
    body = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v for t, k, n, v in entries)
    return b"II*\x00\x08\x00\x00\x00" + body + b"\x00\x00\x00\x00" + trailer


def broken_orientation_jpeg(path: Path, img: Image.Image) -> None:
    """Orientation stored as ASCII text 'abc': no valid orientation."""
    img.save(path, "JPEG", quality=95, exif=b"Exif\x00\x00" + tiff_ifd([(0x0112, 2, 4, b"abc\x00")]))


def unencodable_exif_jpeg(path: Path, img: Image.Image) -> None:
    """Orientation 6 plus a Software tag typed RATIONAL: PIL's exif_transpose raises re-encoding it."""
    exif = tiff_ifd([(0x0112, 3, 1, b"\x06\x00\x00\x00"), (0x0131, 5, 1, b"\x30\x00\x00\x00")], b"\x00" * 64)
    img.save(path, "JPEG", quality=95, exif=b"Exif\x00\x00" + exif)


def typeerror_tiff(path: Path, img: Image.Image) -> None:
    """A TIFF whose StripOffsets tag is typed ASCII: PIL raises TypeError while decoding it."""
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry : entry + 2])[0] == 273:
            data[entry + 2 : entry + 4] = struct.pack("<H", 2)
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ 7. EXIF, decoders


def dataset_with(tmp_path: Path, name: str, write, img: Image.Image) -> tuple[Path, str, np.ndarray]:
    """A dataset folder whose HR/ holds one damaged file: (folder, its sha256, its pixels as stored)."""
    src = tmp_path / "in"
    (src / "HR").mkdir(parents=True)
    write(src / "HR" / name, img)
    return src, digest(src / "HR" / name), np.asarray(Image.open(src / "HR" / name).convert("RGB"))


def test_broken_orientation_is_no_orientation_with_a_warning_in_upscale_eval_and_prepare(shared_data, tmp_path, capsys):
    img = set5_crop(shared_data)
    src, before, stored = dataset_with(tmp_path, "odd.jpg", broken_orientation_jpeg, img)

    with pytest.warns(UserWarning, match="odd.jpg: broken EXIF orientation"):
        decoded = read_image(src / "HR" / "odd.jpg")
    assert np.array_equal(decoded.array, stored)  # read as stored, not rotated

    code, err = cli(capsys, "upscale", str(src / "HR" / "odd.jpg"), "-o", str(tmp_path / "up"), "--model", "bicubic")
    assert code == 0, err
    assert [ln for ln in err.splitlines() if "odd.jpg" in ln and "warning" in ln], err
    assert np.asarray(Image.open(tmp_path / "up" / "odd_x4.png")).shape == (img.height * 4, img.width * 4, 3)

    code, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(src))
    assert code == 0 and "broken EXIF orientation" in err and "Traceback" not in err, err

    code, err = cli(capsys, "prepare", "benchmark", str(src / "HR"), "--out", str(tmp_path / "prep"), "--no-progress")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "prep" / "HR" / "odd.png")), stored)
    assert digest(src / "HR" / "odd.jpg") == before


def test_exif_pil_cannot_reencode_still_orients_in_eval_and_prepare(shared_data, tmp_path, capsys):
    img = set5_crop(shared_data)
    src, before, stored = dataset_with(tmp_path, "cam.jpg", unencodable_exif_jpeg, img)
    rotated = np.rot90(stored, -1)  # orientation 6: rotate 90 degrees clockwise to display

    assert np.array_equal(np.asarray(open_image(src / "HR" / "cam.jpg").convert("RGB")), rotated)
    code, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(src))
    assert code == 0 and "internal error" not in err, err
    code, err = cli(capsys, "prepare", "benchmark", str(src / "HR"), "--out", str(tmp_path / "prep"), "--no-progress")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "prep" / "HR" / "cam.png")), rotated)
    code, err = cli(capsys, "upscale", str(src / "HR" / "cam.jpg"), "-o", str(tmp_path / "up"), "--model", "bicubic")
    assert code == 0 and "EXIF" in err, err  # written, without the EXIF block it cannot carry
    assert Image.open(tmp_path / "up" / "cam_x4.png").size == (img.height * 4, img.width * 4)
    assert digest(src / "HR" / "cam.jpg") == before


def test_decoder_exception_is_an_unreadable_image_naming_the_file(shared_data, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "HR").mkdir(parents=True)
    img = set5_crop(shared_data)
    typeerror_tiff(src / "HR" / "weird.tif", img)
    img.save(src / "HR" / "fine.png")
    before = digest(src / "HR" / "weird.tif")
    with pytest.raises(ImageReadError, match="weird.tif"):
        read_image(src / "HR" / "weird.tif")
    with pytest.raises(ImageReadError, match="weird.tif"):
        open_image(src / "HR" / "weird.tif")

    code, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(src))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "weird.tif" in err and "internal" not in err, err
    code, err = cli(capsys, "upscale", str(src / "HR"), "-o", str(tmp_path / "up"), "--model", "bicubic")
    assert code == 1 and "weird.tif" in err and "internal" not in err, err
    assert (tmp_path / "up" / "fine_x4.png").is_file() and not (tmp_path / "up" / "weird_x4.png").exists()
    assert digest(src / "HR" / "weird.tif") == before


# ------------------------------------------------------------------------- 8. decodability up front


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_truncated_hr_is_found_before_any_model_runs(shared_data, tmp_path, capsys, monkeypatch, kind):
    import srtool.evaluate
    from srtool.imageio import check_complete

    data = tmp_path / "Set5"
    shutil.copytree(shared_data / "benchmarks" / "Set5" / "HR", data / "HR")
    last = data / "HR" / "woman.png"  # the last pair: today it is reached only after the others ran
    if kind == "jpg":
        Image.open(last).save(data / "HR" / "woman.jpg", quality=95)
        last.unlink()
        last = data / "HR" / "woman.jpg"
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) - 200])
    before = {p.name: digest(p) for p in (data / "HR").iterdir()}
    with pytest.raises(ImageReadError, match="woman"):
        check_complete(last)
    check_complete(shared_data / "benchmarks" / "Set5" / "HR" / "woman.png")  # the intact file passes

    monkeypatch.setattr(srtool.evaluate, "evaluate", lambda *a, **k: pytest.fail("models ran before the check"))
    code, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(data))
    assert code == 2 and len(err.strip().splitlines()) == 1 and last.name in err and "truncated" in err, err
    assert {p.name: digest(p) for p in (data / "HR").iterdir()} == before


# ------------------------------------------------------------------------ 25. animations and pages


def _frames(shared_data: Path) -> list[Image.Image]:
    return [set5_crop(shared_data, name, (30, 30, 78, 62)) for name in ("baby", "bird", "head")]


def _read_frames(path: Path) -> tuple[list[np.ndarray], list, object]:
    img = Image.open(path)
    frames, durations = [], []
    for k in range(img.n_frames):
        img.seek(k)
        img.load()
        frames.append(np.asarray(img.convert("RGB")))
        durations.append(img.info.get("duration"))
    return frames, durations, img.info.get("loop")


@pytest.mark.parametrize(
    "name, save",
    [
        ("anim.gif", dict(format="GIF", duration=[80, 120, 200], loop=0)),
        ("anim.png", dict(format="PNG", duration=[80, 120, 200], loop=3)),
        ("anim.webp", dict(format="WEBP", duration=[80, 120, 200], loop=0, lossless=True)),
        ("pages.tif", dict(format="TIFF")),
    ],
)
def test_every_frame_is_upscaled_and_written(shared_data, tmp_path, capsys, name, save):
    frames = _frames(shared_data)
    src = tmp_path / name
    frames[0].save(src, save_all=True, append_images=frames[1:], **save)
    before = digest(src)
    source_frames, source_durations, source_loop = _read_frames(src)

    code, err = cli(capsys, "upscale", str(src), "-o", str(tmp_path / "out"), "--model", "bicubic", "--format", "keep")
    assert code == 0, err
    out = tmp_path / "out" / f"{src.stem}_x4{src.suffix}"
    out_frames, durations, loop = _read_frames(out)
    assert len(out_frames) == 3
    assert [int(d) if d is not None else None for d in durations] == [int(d) if d is not None else None for d in source_durations]
    assert loop == source_loop
    for got, frame in zip(out_frames, source_frames):
        expected = imresize(frame, 4.0)
        assert got.shape == expected.shape
        if name.endswith((".png", ".tif", ".webp")):  # lossless outputs: exactly the upscaled frames
            assert np.array_equal(got, expected) or name.endswith(".webp") and np.abs(got.astype(int) - expected).mean() < 2
        else:  # GIF: a 256-colour palette per frame
            assert np.abs(got.astype(int) - expected).mean() < 6
    assert digest(src) == before


def test_single_image_output_format_is_refused_not_first_frame(shared_data, tmp_path, capsys):
    frames = _frames(shared_data)
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, loop=0)
    code, err = cli(capsys, "upscale", str(src), "-o", str(tmp_path / "out"), "--model", "bicubic", "--format", "jpg")
    assert code == 1 and "anim.gif" in err and "3 frames" in err and "--format" in err, err
    assert not (tmp_path / "out" / "anim_x4.jpg").exists()
    code, err = cli(capsys, "upscale", str(src), "-o", str(tmp_path / "out2"), "--model", "bicubic")
    assert code == 0, err  # default png: an APNG with every frame
    assert Image.open(tmp_path / "out2" / "anim_x4.png").n_frames == 3


def test_dataset_reader_refuses_several_frames(shared_data, tmp_path):
    frames = _frames(shared_data)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="pages.tif.*3 frames"):
        open_image(tmp_path / "pages.tif")


def _move_chunk_after_pixels(data: bytes, kind: bytes) -> bytes:
    """The same PNG with its ``kind`` chunk moved after the pixel data (before IEND)."""
    import struct

    pos, chunks = 8, []
    while pos < len(data):
        length, name = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((name, data[pos : pos + 12 + length]))
        pos += 12 + length
    moved = [c for n, c in chunks if n == kind]
    assert moved, f"no {kind!r} chunk"
    body = [c for n, c in chunks if n not in (kind, b"IEND")]
    return data[:8] + b"".join(body) + b"".join(moved) + chunks[-1][1]


def test_png_size_reads_headers_only_unless_metadata_follows_the_pixels(tmp_path, monkeypatch):
    """`image_size` (eval's up-front checks) no longer decodes PNGs to look for EXIF: when no metadata
    chunk follows IDAT it never calls PIL's load; an eXIf chunk after the pixels is still found (PIL decodes
    then), so a rotated PNG reports the rotated size either way."""
    import io

    from PIL import Image, ImageFile

    from srtool.imageio import image_size

    pixels = np.zeros((20, 30, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: viewers show 20 wide, 30 high
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", exif=exif.tobytes())
    (tmp_path / "before.png").write_bytes(buf.getvalue())
    (tmp_path / "after.png").write_bytes(_move_chunk_after_pixels(buf.getvalue(), b"eXIf"))
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    assert image_size(tmp_path / "after.png") == (20, 30)

    def no_decoding(self):
        raise AssertionError("decoded the pixels to read a header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert image_size(tmp_path / "plain.png") == (30, 20)
    assert image_size(tmp_path / "before.png") == (20, 30)
