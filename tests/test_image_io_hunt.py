"""Image inputs and outputs on the everyday path (srtool upscale on real photos), found by the iohunt bug hunt.

* A PNG's transparent colour (tRNS on a gray, 16-bit gray or RGB image; pixels of that value are fully
  transparent) becomes an alpha channel, as it already did for palette images; it used to be dropped,
  so the transparent pixels came back opaque.
* GIF outputs keep transparency: pixels under half opacity are GIF's transparent entry. PIL's own
  conversion marked an entry transparent only when its quantised alpha was exactly 0, so upscaled
  images (soft alpha edges) and transparent GIF animations came back fully opaque.
* ``-o`` below an existing file is one line before any work (each image used to fail with Python's
  "NotADirectoryError: [Errno 20] Not a directory").

Every input is a crop of a Set5 image written by the test; expected pixels come from an independent
decoder (pypng applies tRNS itself) and the bicubic model's direct call.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from cli_runner import run_cli_err
from srtool.imageio import read_image


@pytest.fixture(scope="module")
def bird(benchmarks_dir: Path) -> np.ndarray:
    return np.asarray(Image.open(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / "bird.png").convert("RGB"))


@pytest.fixture(scope="module")
def bicubic():
    import srtool

    return srtool.load_model("bicubic")


def pypng_direct(path: Path) -> np.ndarray:
    """Pixels as pypng decodes them, with tRNS applied as an alpha channel (independent of PIL)."""
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
    arr = np.vstack([np.asarray(r, dtype) for r in rows]).reshape(height, width, info["planes"])
    if info["bitdepth"] < 8:  # pypng keeps 1/2/4-bit values; PNG viewers (and PIL) scale them to 0..255
        arr = (arr.astype(np.uint16) * 255 // ((1 << info["bitdepth"]) - 1)).astype(np.uint8)
    return arr


def colour_keyed_pngs(folder: Path, bird: np.ndarray) -> list[Path]:
    """Gray, 2-bit gray, 16-bit gray and RGB PNGs whose tRNS names a colour that the image holds."""
    folder.mkdir()
    rgb = bird.copy()
    rgb[10:30, 20:50] = (12, 34, 56)  # a block of the transparent colour
    gray = rgb[..., 1].copy()
    gray16 = gray.astype(np.uint16) * 257 + 3
    two_bit = (gray >> 6).astype(np.uint8)
    h, w = gray.shape
    files = {
        "rgb.png": lambda f: png.Writer(w, h, greyscale=False, transparent=(12, 34, 56)).write(f, rgb.reshape(h, -1).tolist()),
        "gray.png": lambda f: png.Writer(w, h, greyscale=True, transparent=34).write(f, gray.tolist()),
        "gray2bit.png": lambda f: png.Writer(w, h, greyscale=True, bitdepth=2, transparent=0).write(f, two_bit.tolist()),
        "gray16.png": lambda f: png.Writer(w, h, greyscale=True, bitdepth=16, transparent=34 * 257 + 3).write(f, gray16.tolist()),
    }
    for name, write in files.items():
        with open(folder / name, "wb") as fh:
            write(fh)
    return [folder / name for name in files]


def test_colour_key_transparency_becomes_alpha(tmp_path, bird, bicubic, capsys):
    inputs = colour_keyed_pngs(tmp_path / "in", bird)
    for path in inputs:
        expected = pypng_direct(path)
        assert expected.shape[2] in (2, 4) and (expected[..., -1] == 0).any(), path  # the test image is keyed
        np.testing.assert_array_equal(read_image(path).array, expected, err_msg=path.name)

    code, err = run_cli_err(capsys, "upscale", str(tmp_path / "in"), "-m", "bicubic", "-o", str(tmp_path / "out"),
                            "--no-progress")
    assert code == 0, err
    for path in inputs:
        out = pypng_direct(tmp_path / "out" / f"{path.stem}_x4.png")
        np.testing.assert_array_equal(out, bicubic(pypng_direct(path)), err_msg=path.name)
        assert (out[..., -1] == 0).any()

    import srtool  # the Python API with PIL images: alpha where PIL can hold it, 16-bit gray stays I;16

    modes = {path.stem: srtool.upscale_image(bicubic, Image.open(path)).mode for path in inputs}
    assert modes == {"rgb": "RGBA", "gray": "LA", "gray2bit": "LA", "gray16": "I;16"}


def gif_frames(bird: np.ndarray) -> list[Image.Image]:
    """Three palette frames of the bird turned by 10, 25 and 40 degrees: corners are transparent."""
    frames = []
    for angle in (10, 25, 40):
        rgba = Image.fromarray(bird).convert("RGBA").rotate(angle)  # the uncovered corners get alpha 0
        frames.append(rgba)
    return frames


def palette_frame(rgba: np.ndarray) -> Image.Image:
    """A GIF frame whose clear pixels are palette entry 255, marked transparent even when none is clear
    (PIL's own writer drops the transparency of later frames when the first one is opaque)."""
    quantised = Image.fromarray(np.ascontiguousarray(rgba[..., :3])).quantize(255)
    index = np.asarray(quantised).copy()
    index[rgba[..., 3] == 0] = 255
    frame = Image.fromarray(index, "P")
    palette = quantised.getpalette()[: 255 * 3]
    frame.putpalette(palette + [0] * (768 - len(palette)))
    frame.info["transparency"] = 255
    return frame


def test_gif_output_keeps_transparency(tmp_path, bird, bicubic, capsys):
    """Also an animation whose first frame is fully opaque: its later frames' transparency was lost,
    because PIL's writer takes the transparent entry from the first frame only; and the same with a
    small flat-coloured first frame (a logo, a fade-in), whose unused entry 255 PIL's optimiser dropped."""
    src = tmp_path / "in"
    src.mkdir()
    frames = gif_frames(bird)
    frames[0].save(src / "turning.gif", save_all=True, append_images=frames[1:], duration=80, loop=0, disposal=2)
    opaque_first = [palette_frame(np.asarray(Image.fromarray(bird).convert("RGBA"))),
                    palette_frame(np.asarray(frames[1]))]
    opaque_first[0].save(src / "opaque_first.gif", save_all=True, append_images=opaque_first[1:], duration=80,
                         loop=0, disposal=2, transparency=255)
    flat = np.zeros((48, 48, 4), np.uint8)
    flat[...] = (30, 60, 200, 255)
    half_clear = flat.copy()
    half_clear[:24, :, 3] = 0
    Image.fromarray(flat).save(src / "flat.png", save_all=True, append_images=[Image.fromarray(half_clear)],
                               duration=80, loop=0)  # an APNG: its frames keep their alpha as they are
    soft = np.dstack([bird, np.tile(np.linspace(0, 255, bird.shape[1]).astype(np.uint8), (bird.shape[0], 1))])
    Image.fromarray(soft).save(src / "soft.png")  # alpha 0..255 left to right
    decoded = read_image(src / "turning.gif")
    assert len(decoded.frames) == 3 and all((f[..., 3] == 0).any() for f in decoded.frames)
    opaque_then_clear = read_image(src / "opaque_first.gif").frames
    assert len(opaque_then_clear) == 2 and not (opaque_then_clear[0][..., 3] == 0).any()
    assert (opaque_then_clear[1][..., 3] == 0).any()

    code, err = run_cli_err(capsys, "upscale", str(src), "-m", "bicubic", "-o", str(tmp_path / "out"), "--format", "gif",
                            "--no-progress")
    assert code == 0, err
    for name, inputs in (("turning", decoded.frames), ("opaque_first", opaque_then_clear), ("flat", [flat, half_clear]),
                         ("soft", [soft])):
        with Image.open(tmp_path / "out" / f"{name}_x4.gif") as gif:
            assert gif.n_frames == len(inputs)
            for index, frame in enumerate(inputs):
                gif.seek(index)
                shown = np.asarray(gif.convert("RGBA"))
                expected = bicubic(frame)
                np.testing.assert_array_equal(shown[..., 3] == 0, expected[..., 3] < 128, err_msg=f"{name} frame {index}")
                opaque = expected[..., 3] >= 128
                error = np.abs(shown[..., :3].astype(int) - expected[..., :3])[opaque]
                assert error.mean() < 6, (name, index, error.mean())  # quantised to 255 colours, nothing more


def test_output_folder_below_a_file_is_one_line_before_any_work(tmp_path, bird, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(bird).save(photo)
    code, err = run_cli_err(capsys, "upscale", str(photo), "-m", "bicubic", "-o", str(photo / "up" / "x4"), "--no-progress")
    assert code == 2
    assert f"-o {photo / 'up' / 'x4'}: {photo} is a file, not a folder" in err
    assert "Errno" not in err and "written" not in err  # refused up front: no per-image failures, no summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_tiff_orientation_is_applied_once(tmp_path, bird, bicubic, orientation, capsys):
    """Recent Pillow rotates a TIFF by its orientation tag while decoding it; srtool rotated it again
    (6 came out upside down, 2 not mirrored) in upscale, eval and prepare, and image_size swapped
    the size twice. A 16-bit colour TIFF (read by tifffile, which never rotates) was right."""
    import tifffile

    from srtool.imageio import apply_orientation, image_size, read_dataset_image

    crop = bird[:40, :60]
    shown = apply_orientation(crop, orientation)  # what viewers show
    for name, pixels, photometric in (("rgb8", crop, "rgb"), ("gray16", crop[..., 1].astype(np.uint16) * 257, None),
                                      ("rgb16", crop.astype(np.uint16) * 257, "rgb")):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, pixels, photometric=photometric, extratags=[(0x0112, 3, 1, orientation, True)])
        expected = apply_orientation(pixels, orientation)
        np.testing.assert_array_equal(read_image(path).array, expected, err_msg=name)
        assert image_size(path) == (expected.shape[1], expected.shape[0]), name
    np.testing.assert_array_equal(read_dataset_image(tmp_path / "rgb8.tif"), shown)

    code, err = run_cli_err(capsys, "upscale", str(tmp_path / "rgb8.tif"), "-m", "bicubic", "-o", str(tmp_path / "out"),
                            "--no-progress")
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "rgb8_x4.png")), bicubic(shown))


def gray_icc_profile() -> bytes:
    """A minimal valid ICC v2 gray display profile (gamma 2.2: desc, wtpt, kTRC, cprt), as Photoshop's
    'Gray Gamma 2.2' is; lcms accepts it (checked below)."""
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    text = b"srtool test gray\x00"
    tags = [
        (b"desc", b"desc\x00\x00\x00\x00" + struct.pack(">I", len(text)) + text + b"\x00" * 78),
        (b"wtpt", b"XYZ \x00\x00\x00\x00" + s15(0.9642) + s15(1.0) + s15(0.8249)),
        (b"kTRC", b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\x00\x00"),
        (b"cprt", b"text\x00\x00\x00\x00public domain\x00"),
    ]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += b"\x00" * (-len(data) % 4)
        table, body = table + sig + struct.pack(">II", offset + len(body), len(data)), body + data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrGRAYXYZ "
              + b"\x00" * 12 + b"acspAPPL" + b"\x00" * 24 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\x00" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


def test_gray_profile_never_describes_rgb_output(tmp_path, bird, capsys):
    """WebP (and animations) hold a gray image as RGB: the gray input's ICC profile used to be embedded
    on those RGB pixels, a profile no colour-managed viewer can apply. Gray outputs keep it."""
    from PIL import ImageCms

    profile = gray_icc_profile()
    gray = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    ImageCms.buildTransform(gray, ImageCms.createProfile("sRGB"), "L", "RGB")  # a valid gray profile
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(bird[..., 1]).save(src / "gray.jpg", quality=95, icc_profile=profile)
    Image.fromarray(bird).save(src / "colour.png", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    kept = {}
    for fmt, ext in (("webp", "webp"), ("png", "png"), ("jpg", "jpg")):
        code, err = run_cli_err(capsys, "upscale", str(src), "-m", "bicubic", "-o", str(tmp_path / fmt), "--format", fmt,
                                "--no-progress")
        assert code == 0, err
        for name in ("gray", "colour"):
            with Image.open(tmp_path / fmt / f"{name}_x4.{ext}") as out:
                icc = out.info.get("icc_profile")
                kept[fmt, name] = icc[16:20] if icc else None
                if icc:
                    ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"),
                                            out.mode, "RGB")  # a viewer can apply what was embedded
    assert kept == {("webp", "gray"): None, ("webp", "colour"): b"RGB ", ("png", "gray"): b"GRAY",
                    ("png", "colour"): b"RGB ", ("jpg", "gray"): b"GRAY", ("jpg", "colour"): b"RGB "}


def test_a_huge_file_is_refused_from_its_header_without_being_read(tmp_path, benchmarks_dir):
    """A 600 MB non-image named .png, and a real photo over --max-pixels followed by 600 MB (a scan too
    big to upscale), are refused from their first bytes: they used to be read whole into memory first
    (a 3 GB file took 3.6 GB of RAM to be called "not an image file"; two lanes at once, twice that)."""
    import subprocess
    import sys

    junk = tmp_path / "video.png"
    with open(junk, "wb") as fh:
        fh.truncate(600 << 20)  # sparse: no disk space, but 600 MB to read
    over = tmp_path / "scan.png"
    over.write_bytes((benchmarks_dir / "Set5" / "HR" / "bird.png").read_bytes())
    with open(over, "r+b") as fh:
        fh.truncate(over.stat().st_size + (600 << 20))
    probe = (
        "import sys\n"
        "from srtool.imageio import ImageReadError, read_image\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_image(path, max_pixels=1000)\n"
        "    except ImageReadError as exc:\n"
        "        print(exc)\n"
        # VmHWM is this process's own peak (ru_maxrss would include the forking pytest's size, kept across exec)
        "print(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM')) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(junk), str(over)], capture_output=True, text=True, check=True)
    *errors, peak_mb = done.stdout.splitlines()
    assert errors == [f"{junk}: not an image file (or an unsupported format)",
                      f"{over}: 288x288 = 82,944 pixels exceeds the limit of 1,000 (possible decompression bomb; "
                      "raise it with --max-pixels)"]
    assert int(peak_mb) < 300, f"peak RSS {peak_mb} MB: the file was read before its header was checked"


def test_upscaling_an_output_again_is_explained(tmp_path, bird, capsys):
    """An earlier output named on the command line is skipped (a re-run must not upscale its own
    outputs), and the line now says how to upscale it again on purpose; that way works."""
    Image.fromarray(bird).save(tmp_path / "bird.png")
    assert run_cli_err(capsys, "upscale", str(tmp_path / "bird.png"), "-m", "bicubic", "--no-progress")[0] == 0
    first = tmp_path / "bird_x4.png"
    code, err = run_cli_err(capsys, "upscale", str(first), "-m", "bicubic", "--no-progress")
    assert code == 0 and "to upscale it again, give another --suffix" in " ".join(err.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.png", "bird_x4.png"]
    code, err = run_cli_err(capsys, "upscale", str(first), "-m", "bicubic", "--suffix", "_x16", "--no-progress")
    assert code == 0, err
    assert Image.open(tmp_path / "bird_x4_x16.png").size == (bird.shape[1] * 16, bird.shape[0] * 16)


def test_exif_that_describes_the_input_pixels_is_not_carried(tmp_path, benchmarks_dir, capsys):
    """A camera's EXIF names the image's size (PixelXDimension/PixelYDimension) and points into it
    (SubjectArea, SubjectLocation). Those used to be copied to the output, which claimed to be a
    quarter of its real size (and unrotated); the descriptive tags are still carried."""
    photo = Image.open(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / "butterfly.png").convert("RGB").crop((0, 0, 64, 48))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS 5D", 6
    camera = exif.get_ifd(0x8769)
    camera.update({0xA002: 64, 0xA003: 48, 0x9214: (32, 24, 10, 10), 0xA214: (32, 24), 0x9003: "2026:11:30 12:00:00"})
    photo.save(tmp_path / "cam.jpg", quality=95, exif=exif.tobytes())
    code, err = run_cli_err(capsys, "upscale", str(tmp_path / "cam.jpg"), "-m", "bicubic", "-o", str(tmp_path / "out"),
                            "--no-progress")
    assert code == 0, err
    with Image.open(tmp_path / "out" / "cam_x4.png") as out:
        assert out.size == (48 * 4, 64 * 4)  # orientation 6 applied
        kept = out.getexif()
        assert (kept.get(0x010F), kept.get(0x0110), kept.get(0x0112)) == ("Canon", "EOS 5D", None)
        assert dict(kept.get_ifd(0x8769)) == {0x9003: "2026:11:30 12:00:00"}


def test_stdout_closed_mid_image_fails_the_image(benchmarks_dir):
    """``srtool upscale photo -o - | head -c 10``: the image used to be reported written (exit 0)
    although 64 KiB of ~1 MB reached the pipe (Python's buffered write returned that short count
    without an error). Now it fails, in one line saying how much the reader took."""
    import subprocess
    import sys

    upscale = subprocess.Popen(
        [sys.executable, "-m", "srtool", "upscale", str(benchmarks_dir / "Set5" / "HR" / "bird.png"), "-o", "-",
         "-m", "bicubic", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert upscale.stdout.read(10).startswith(b"\x89PNG")
    upscale.stdout.close()  # the reading program stops
    err = " ".join(upscale.stderr.read().decode().split())
    assert upscale.wait(timeout=120) == 1, err
    assert "-o -: standard output was closed after" in err and "the image is incomplete there" in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_16bit_gray_alpha_tiff_is_read_and_written_back(tmp_path, bird, bicubic, capsys):
    """PIL has no mode for a 16-bit gray+alpha TIFF (GIMP exports them; srtool writes its 16-bit LA
    outputs as them): srtool called them "not an image file", its own outputs included. They are
    read with tifffile now (size checked from the header, orientation applied)."""
    import tifffile

    from srtool.imageio import apply_orientation

    gray = bird[:40, :60, 1].astype(np.uint16) * 257 + 7
    alpha = np.tile(np.linspace(0, 65535, 60).astype(np.uint16), (40, 1))
    la = np.dstack([gray, alpha])
    tifffile.imwrite(tmp_path / "scan.tif", la, photometric="minisblack", extrasamples=("unassalpha",),
                     extratags=[(0x0112, 3, 1, 6, True)])
    with pytest.raises(Exception):
        Image.open(tmp_path / "scan.tif")  # why srtool needs its own path here
    shown = apply_orientation(la, 6)
    np.testing.assert_array_equal(read_image(tmp_path / "scan.tif").array, shown)

    for run in range(2):
        code, err = run_cli_err(capsys, "upscale", str(tmp_path), "-m", "bicubic", "--format", "keep", "--no-progress")
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.tif", "scan_x4.tif"]  # the re-run skipped its output
    out = read_image(tmp_path / "scan_x4.tif").array
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, bicubic(shown))
    assert "earlier srtool output" in " ".join(err.split()) or "srtool's output for" in " ".join(err.split())

    over = run_cli_err(capsys, "upscale", str(tmp_path / "scan.tif"), "-m", "bicubic", "-o", str(tmp_path / "o"),
                       "--max-pixels", "1000", "--no-progress")
    assert over[0] == 1 and "60x40 = 2,400 pixels exceeds the limit of 1,000" in " ".join(over[1].split())


def test_prepare_refuses_a_huge_non_image_unread(tmp_path, benchmarks_dir):
    """``srtool prepare folder`` hashed each file's bytes before decoding them: a 600 MB non-image named
    .png among the photos took 600 MB of RAM (per worker) to be skipped. Its header is checked first now."""
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bird.png").write_bytes((benchmarks_dir / "Set5" / "HR" / "bird.png").read_bytes())
    with open(photos / "video.png", "wb") as fh:
        fh.truncate(600 << 20)
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from srtool.prepare import run_folder\n"
        "result = run_folder([Path(sys.argv[1])], Path(sys.argv[2]), 4, 1, progress=False)\n"
        "print([record['source'] for record in result.records], result.skipped)\n"
        "print(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM')) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(photos), str(tmp_path / "out")], capture_output=True,
                          text=True, check=True)
    outcome, peak_mb = done.stdout.splitlines()
    assert outcome == str([str(photos / "bird.png")]) + " " + str(
        [(str(photos / "video.png"), f"{photos / 'video.png'}: not an image file (or an unsupported format)")])
    assert int(peak_mb) < 300, f"peak RSS {peak_mb} MB: the file was read before its header was checked"


def feed_fifo(path: Path, data: bytes) -> tuple:
    """Make ``path`` a FIFO and write ``data`` into it from a thread; returns (thread, outcome list)."""
    import os
    import threading

    os.mkfifo(path)
    outcome: list = []

    def write() -> None:
        try:
            with open(path, "wb") as fh:
                fh.write(data)
            outcome.append("all written")
        except BrokenPipeError:
            outcome.append("reader closed early")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_python_api_reads_an_image_from_a_fifo(tmp_path, bird):
    """`srtool.read_image("/dev/stdin")` or a bash `<(...)` path: the header check sought back to the
    start, which a pipe cannot ("cannot open (Illegal seek)")."""
    buf = io.BytesIO()
    Image.fromarray(bird).save(buf, format="PNG")
    thread, outcome = feed_fifo(tmp_path / "pipe.png", buf.getvalue())
    decoded = read_image(tmp_path / "pipe.png")
    thread.join(10)
    np.testing.assert_array_equal(decoded.array, bird)
    assert outcome == ["all written"]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_piped_non_image_is_refused_from_its_first_bytes(tmp_path):
    """Not an image: refused after its first megabyte, not after reading all of it into memory."""
    from srtool.imageio import ImageReadError

    thread, outcome = feed_fifo(tmp_path / "pipe.png", bytes(64 << 20))
    with pytest.raises(ImageReadError, match="pipe.png: not an image file"):
        read_image(tmp_path / "pipe.png")
    thread.join(10)
    assert outcome == ["reader closed early"]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_pipe_given_as_an_input_is_named_a_pipe_with_the_stdin_way(tmp_path, capsys):
    """`srtool upscale <(curl URL)`: bash passes /dev/fd/63, a pipe; it was refused as "no such file or
    folder" (the path exists). Now what it is and how to upscale from a pipe, before any work."""
    import os

    os.mkfifo(tmp_path / "pipe.png")  # no writer: opening it for reading would block the test
    code, err = run_cli_err(capsys, "upscale", str(tmp_path / "pipe.png"), "-m", "bicubic", "-o",
                            str(tmp_path / "out"), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'pipe.png'}: is a FIFO (named pipe), not an image file" in err
    assert "srtool upscale - -o" in err and not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_pipe_that_goes_on_past_its_image_is_refused_at_the_limit(tmp_path, bird, monkeypatch):
    """An image header followed by endless bytes from a pipe was read into memory without end (8x8 PNG
    + 400 MB: 846 MB peak RSS). Now at most what an image within --max-pixels takes (the metadata slack
    made small here, so the test moves kilobytes, not gigabytes)."""
    from srtool import imageio

    monkeypatch.setattr(imageio, "_PIPE_SLACK_BYTES", 4096)
    buf = io.BytesIO()
    Image.fromarray(bird[:8, :8]).save(buf, format="PNG")
    thread, outcome = feed_fifo(tmp_path / "pipe.png", buf.getvalue() + bytes(8 << 20))
    with pytest.raises(imageio.ImageReadError, match="pipe.png: more than .* from a pipe"):
        read_image(tmp_path / "pipe.png", max_pixels=100_000)  # at most 0.8 MB + 4 kB
    thread.join(10)
    assert outcome == ["reader closed early"]
