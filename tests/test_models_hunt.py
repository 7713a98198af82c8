"""`srtool models` and model loading on a user's paths (session 9, iofix): odd names, a FIFO, an
output that is the input, the name `default`, and `--scale` against a named model before its download."""

from __future__ import annotations

import os

import pytest

from cli_runner import run_cli, run_cli_err
from srtool.loading import load_model
from srtool.model_files import bundled_model_path
from srtool.model_tools import inspect_model

from test_model_zoo import rrdb_release_file, serve_named_model
from test_models_cli import _compact


def test_inspect_prints_a_path_with_brackets_as_it_is(tmp_path, monkeypatch, capsys):
    """The table's title is the file name: `[/x].pth` (a folder `[`) was read as rich markup, an
    internal error (exit 1); `[red]a.pth` printed as `a.pth` in red."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "[").mkdir()
    _compact(tmp_path).rename(tmp_path / "[" / "x].pth")
    _compact(tmp_path).rename(tmp_path / "[red]a.pth")
    for name in ("[/x].pth", "[red]a.pth"):
        code = run_cli("models", "inspect", name)
        captured = capsys.readouterr()
        assert code == 0 and name in captured.out, captured.err


def test_models_commands_name_a_fifo_for_what_it_is(tmp_path, capsys):
    """`models inspect|convert|export` on a FIFO said "model file not found" (it exists); --model says
    what it is, and so do they now."""
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    for args in (["inspect", str(fifo)], ["convert", str(fifo), str(tmp_path / "o.safetensors")],
                 ["export", str(fifo), str(tmp_path / "o.onnx")]):
        code, err = run_cli_err(capsys, "models", *args)
        assert code == 2 and "is a FIFO (named pipe)" in err and "not found" not in err, (args, err)


def test_convert_never_replaces_the_input_model(tmp_path, capsys):
    """`models convert m.safetensors m.safetensors --overwrite` replaced the input with its own
    conversion (a run directory's export too, and a weights file named `x.json` by convert's metadata
    copy `x.json`): refused in one line, before any work, the input untouched."""
    compact = _compact(tmp_path)
    converted = tmp_path / "c.safetensors"
    code, err = run_cli_err(capsys, "models", "convert", str(compact), str(converted))
    assert code == 0, err
    cases = [(converted, converted)]
    run = tmp_path / "run"
    (run / "exports").mkdir(parents=True)
    (run / "exports" / "best.safetensors").write_bytes(converted.read_bytes())
    cases.append((run, run / "exports" / "best.safetensors"))
    named_json = tmp_path / "weights.json"  # srtool reads a weights file's format from its content
    named_json.write_bytes(compact.read_bytes())
    cases.append((named_json, tmp_path / "weights.safetensors"))
    for source, out in cases:
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        code, err = run_cli_err(capsys, "models", "convert", str(source), str(out), "--overwrite")
        assert code == 2 and "is the input model" in err and "Traceback" not in err, (source, err)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_models_default_is_the_bundled_model_as_for_upscale(tmp_path, monkeypatch, capsys):
    """`--model default` is the bundled model whatever is in the working folder; `models inspect default`
    looked at a folder named `default` there instead (so its sha256 was not the model upscale runs)."""
    if bundled_model_path() is None:
        pytest.skip("no bundled model in this checkout")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    code, err = run_cli_err(capsys, "models", "inspect", "default", "--json")
    assert code == 0, err
    assert inspect_model("default")["sha256"] == load_model("default", device="cpu").identity


def test_scale_disagreeing_with_a_named_model_is_refused_before_downloading(monkeypatch, tmp_path, benchmarks_dir, capsys):
    """`--model realesrgan-x4plus --scale 2` downloaded the 67 MB release file, then refused it; the
    registry knows the scale: one line, no request, nothing in the cache (upscale, load_model, models)."""
    server = serve_named_model(monkeypatch, tmp_path, "realesrgan-x4plus", rrdb_release_file())
    try:
        bird = benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / "bird.png"
        code, err = run_cli_err(capsys, "upscale", str(bird), "-o", str(tmp_path / "o.png"),
                                "-m", "realesrgan-x4plus", "--scale", "2")
        assert code == 2 and "disagrees with the model realesrgan-x4plus, which upscales x4" in err, err
        assert "--outscale" in err  # upscale's hint to reach x2 from the x4 model
        code, err = run_cli_err(capsys, "models", "inspect", "realesrgan-x4plus", "--scale", "2")
        assert code == 2 and "which upscales x4" in err, err
        with pytest.raises(Exception, match="which upscales x4"):
            load_model("realesrgan-x4plus", scale=2, device="cpu")
        assert server.requests == [] and not (tmp_path / "cache" / "models" / "RealESRGAN_x4plus.pth").exists()
    finally:
        server.close()


def test_an_output_name_too_long_is_one_line(tmp_path, capsys):
    """`models convert|export` to a name over the file system's limit: "internal error: OSError: [Errno 36]"
    (exit 1); now one line naming the limit (exit 2), and no temporary left behind."""
    compact = _compact(tmp_path)
    for command, suffix in (("convert", ".safetensors"), ("export", ".onnx")):
        code, err = run_cli_err(capsys, "models", command, str(compact), str(tmp_path / ("m" * 251 + suffix)))
        assert code == 2 and "longer than this file system allows" in err and "internal error" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [compact.name]


@pytest.mark.parametrize("mirror", ["127.0.0.1:8000", "http://[::1", "host/models"])
def test_a_malformed_model_mirror_is_one_line(mirror, monkeypatch, tmp_path, capsys):
    """$SRTOOL_MODEL_MIRROR without a scheme was retried 5 times as "unknown url type"; an unclosed IPv6
    bracket was an internal error (ValueError). Now one line naming the variable, nothing downloaded."""
    server = serve_named_model(monkeypatch, tmp_path, "realesr-animevideov3", b"x")
    server.close()
    monkeypatch.setenv("SRTOOL_MODEL_MIRROR", mirror)
    code, err = run_cli_err(capsys, "models", "inspect", "realesr-animevideov3")
    assert code == 2 and "SRTOOL_MODEL_MIRROR" in err and "internal error" not in err, err
    assert not list((tmp_path / "cache").rglob("*.pth*"))


def test_models_bicubic_says_it_is_no_network(capsys):
    """`models inspect|convert|export bicubic` said "model file not found: bicubic", though `--model
    bicubic` is a model everywhere else: now one line saying there is no network file."""
    for args in (["inspect", "bicubic"], ["export", "bicubic", "b.onnx"]):
        code, err = run_cli_err(capsys, "models", *args)
        assert code == 2 and "not a network" in err and "not found" not in err, err


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WebP", "TIFF", "BMP", "GIF"])
def test_an_image_given_as_the_model_is_named_an_image(fmt, benchmarks_dir, tmp_path, capsys):
    """`-m photo.png` (arguments swapped): it was 'the safe loader rejected it (Unsupported operand 80)',
    as if it were a hostile pickle; it is named as an image, with how to upscale it."""
    from PIL import Image

    bird = benchmarks_dir / "Set5" / "HR" / "bird.png"
    given = tmp_path / f"bird.{fmt.lower()}.pth"  # the content decides, not the name
    with Image.open(bird) as im:
        im.convert("RGB").save(given, format=fmt)
    code, err = run_cli_err(capsys, "upscale", str(bird), "-m", str(given), "-o", str(tmp_path / "out"))
    assert code == 2 and f"is a {fmt} image, not model weights" in err and "Traceback" not in err, err
    code, err = run_cli_err(capsys, "models", "inspect", str(given))
    assert code == 2 and f"is a {fmt} image" in err, err
    assert not (tmp_path / "out").exists()
