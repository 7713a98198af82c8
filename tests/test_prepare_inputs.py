"""Bad and unusual inputs: defined behaviour, messages naming the file, exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srtool.imageio import encode_png16, to_dataset_array
from srtool.prepare import prepare_benchmark, run_benchmark
from srtool.resize import downscale, modcrop
from cli_runner import run_cli




def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (42, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "good.png")
    # bad ones
    (root / "random_bytes.png").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "text.jpg").write_text("this is not a jpeg\n")
    Image.fromarray(rgb[:3, :3]).save(root / "tiny.png")  # 3x3 < scale 4
    # converted ones
    gray16 = rng.integers(0, 65536, (20, 24), dtype=np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    rgb16 = rng.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    (root / "rgb16.png").write_bytes(encode_png16(rgb16))
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(root / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(root / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    Image.fromarray(rgb[:, :48]).save(root / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(rgb[:, :48]).save(root / "rotated_png.png", exif=exif)  # a PNG with an EXIF orientation
    (root / "notes.txt").write_text("not an image suffix: ignored")
    return root


def test_bad_inputs_are_skipped_by_name_and_exit_nonzero(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli("prepare", "benchmark", str(inputs), "--out", str(out), "--workers", "2", "--no-progress")
    err = capsys.readouterr().err
    assert code == 1, err
    for name, why in [("random_bytes.png", "not an image"), ("truncated.png", "corrupt or truncated"),
                      ("text.jpg", "not an image"), ("tiny.png", "smaller than the scale factor 4")]:
        line = next((ln for ln in err.splitlines() if name in ln), None)
        assert line is not None and why in line, (name, err)
    assert "4 input file(s) skipped" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(s["source"]).name for s in manifest["skipped"]) == ["random_bytes.png", "text.jpg", "tiny.png", "truncated.png"]
    assert sorted(i["name"] for i in manifest["images"]) == ["cmyk", "good", "gray16", "palette", "rgb16", "rgba", "rotated", "rotated_png"]
    # the good file went through despite its bad neighbours
    good = load(inputs / "good.png")
    assert np.array_equal(load(out / "LR_bicubic" / "X4" / "good.png"), downscale(modcrop(good, 4), 4))
    # --skip-bad accepts the skips (and the finished images are reused, not redone)
    assert run_cli("prepare", "benchmark", str(inputs), "--out", str(out), "--workers", "1", "--no-progress", "--skip-bad") == 0


def test_quiet_still_names_the_skipped_files(inputs, tmp_path, capsys):
    """-q silences the progress bar and summary, not the skipped files that make the exit status 1."""
    code = run_cli("prepare", "benchmark", str(inputs), "--out", str(tmp_path / "out"), "--workers", "1", "-q")
    captured = capsys.readouterr()
    assert code == 1
    assert "truncated.png" in captured.err and "skipped:" in captured.err and "4 input file(s) skipped" in captured.err
    assert "output:" not in captured.out + captured.err  # no summary table under -q


def test_library_call_raises_after_skipping_unless_skip_bad(inputs, tmp_path):
    from srtool.errors import UserError

    with pytest.raises(UserError, match=r"4 input\(s\) skipped: .*random_bytes.png"):
        prepare_benchmark(inputs, tmp_path / "a", 4, workers=1, progress=False)
    assert (tmp_path / "a" / "LR_bicubic" / "X4" / "good.png").exists()  # the good ones were still prepared
    assert prepare_benchmark(inputs, tmp_path / "a", 4, workers=1, progress=False, skip_bad=True) == tmp_path / "a"


def test_conversions_are_the_documented_ones(inputs, tmp_path):
    result = run_benchmark(inputs, tmp_path / "out", 4, workers=1, progress=False)
    hr = lambda name: load(tmp_path / "out" / "HR" / f"{name}.png")  # noqa: E731
    modes = {r["name"]: r["source_mode"] for r in result.records}
    assert modes == {"cmyk": "CMYK", "good": "RGB", "gray16": "I;16", "palette": "P", "rgba": "RGBA", "rotated": "RGB", "rgb16": "RGB;16",
                     "rotated_png": "RGB"}
    # 16-bit gray -> round(v / 257), single channel
    gray16 = np.asarray(Image.open(inputs / "gray16.png")).astype(np.float64)
    assert np.array_equal(hr("gray16"), modcrop(np.floor(gray16 / 257 + 0.5).astype(np.uint8), 4))
    # 16-bit colour -> round(v / 257) per channel too (PIL alone would keep only the high byte)
    import png

    w16, h16, rows, _ = png.Reader(filename=str(inputs / "rgb16.png")).asDirect()
    rgb16 = np.vstack([np.asarray(r, dtype=np.float64) for r in rows]).reshape(h16, w16, 3)
    assert np.array_equal(hr("rgb16"), modcrop(np.floor(rgb16 / 257 + 0.5).astype(np.uint8), 4))
    # RGBA -> alpha dropped
    assert np.array_equal(hr("rgba"), modcrop(np.asarray(Image.open(inputs / "rgba.png"))[..., :3], 4))
    # palette -> RGB expansion
    assert np.array_equal(hr("palette"), modcrop(np.asarray(Image.open(inputs / "palette.png").convert("RGB")), 4))
    # CMYK JPEG -> PIL's CMYK->RGB
    assert np.array_equal(hr("cmyk"), modcrop(np.asarray(Image.open(inputs / "cmyk.jpg").convert("RGB")), 4))
    # EXIF-rotated JPEG -> pixels as displayed: 48 wide x 42 high stored, shown 42 wide x 48 high
    stored = np.asarray(Image.open(inputs / "rotated.jpg"))
    assert stored.shape == (42, 48, 3) and hr("rotated").shape == (48, 40, 3)
    assert np.array_equal(hr("rotated"), modcrop(np.rot90(stored, k=-1), 4))
    # ... also for a PNG (it is re-encoded, not copied, since its stored pixels are not the HR)
    assert np.array_equal(hr("rotated_png"), modcrop(np.rot90(rgb_stored := np.asarray(Image.open(inputs / "rotated_png.png")), k=-1), 4))
    assert rgb_stored.shape == (42, 48, 3)
    assert (tmp_path / "out" / "HR" / "rotated_png.png").read_bytes() != (inputs / "rotated_png.png").read_bytes()
    for name in ("cmyk", "rgba", "palette", "rotated", "gray16", "rgb16", "rotated_png"):
        assert np.array_equal(load(tmp_path / "out" / "LR_bicubic" / "X4" / f"{name}.png"), downscale(hr(name), 4))


def test_gray_palette_stays_single_channel():
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (8, 1))
    img = Image.fromarray(gray).convert("P")
    out = to_dataset_array(img)
    assert out.ndim == 2 and np.array_equal(out, gray)


def test_a_folder_or_image_given_twice_is_named(shared_data, tmp_path, capsys):
    """`prepare folder a a` (or `a ./a/../a`, or a folder and one of its images) said "input names collide
    after disambiguation: t1_png; rename the files": wrong advice. Now one line naming what was given twice."""
    a = tmp_path / "a"
    a.mkdir()
    for name in ("t1.png", "t2.png"):
        (a / name).symlink_to(shared_data / "train" / "T91" / name)
    out = tmp_path / "out"
    for second in (a, a / ".." / "a", a / "t2.png"):
        code = run_cli("prepare", "folder", str(a), str(second), "--out", str(out), "--workers", "1", "--no-progress")
        err = capsys.readouterr().err
        assert code == 2 and "given twice" in err and "rename" not in err and str(second) in err, err
        assert not out.exists()
