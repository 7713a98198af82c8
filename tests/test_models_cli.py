"""`srtool models inspect|list|convert|export`: round trips on checkpoints built in their real layouts."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import srtool
from cli_runner import run_cli
from srtool.errors import UserError
from srtool.model_tools import convert_model, export_onnx, inspect_model
from srtool.models import RRDBNet, RRDBNetConfig, SRResNet, SRResNetConfig
from srtool.models.edsr import EDSR, EDSRConfig
from srtool.models.export import save_export
from srtool.models.msrresnet import MSRResNet, MSRResNetConfig

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

IMAGE = np.random.default_rng(0).random((14, 11, 3), dtype=np.float32)


def _random_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            n = torch.randn(p.shape, generator=gen)
            p.copy_(n / np.sqrt(p[0].numel()) if p.ndim > 1 else 0.05 * n + (1 if p.ndim == 1 and p.numel() == 1 else 0))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _compact(tmp_path: Path) -> Path:
    path = tmp_path / "realesr-general-x4v3.pth"
    torch.save({"params": _random_state(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=4, act_type="prelu"))}, path)
    return path


def _swinir(tmp_path: Path) -> Path:
    path = tmp_path / "SwinIR-M_x2.pth"
    net = SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=2, upsampler="pixelshuffle")
    torch.save({"params_ema": _random_state(net)}, path)
    return path


def test_inspect_spandrel_model_json(tmp_path: Path, capsys):
    path = _swinir(tmp_path)
    assert run_cli("models", "inspect", str(path), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "SwinIR" and info["loader"] == "spandrel" and info["scale"] == 2
    assert info["input_channels"] == info["output_channels"] == 3
    assert info["size_requirements"] == {"multiple_of": 1, "minimum": 16, "square": False}
    assert info["precisions"] == ["fp32", "bf16"]  # SwinIR: no fp16 in spandrel
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    reference = spandrel.ModelLoader().load_from_state_dict(torch.load(path, weights_only=True)["params_ema"]).model
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    assert info["purpose"] == "SR" and info["tile_context"] == 32 and info["tiling"] == "discouraged"


def test_inspect_srtool_layout_and_table(tmp_path: Path, capsys):
    path = tmp_path / "MSRResNet_x4.pth"
    torch.save({"params": MSRResNet(MSRResNetConfig(n_blocks=2, n_feats=16)).state_dict()}, path)
    info = inspect_model(path)
    assert info["loader"] == "srtool" and info["architecture"] == "msrresnet" and info["precisions"] == ["fp32", "fp16", "bf16"]
    assert run_cli("models", "inspect", str(path)) == 0
    assert "msrresnet  [srtool, layout basicsr-msrresnet]" in capsys.readouterr().out


def test_list_names_licences(capsys):
    assert run_cli("models", "list") == 0
    out = capsys.readouterr().out
    for name in ("ESRGAN", "Compact", "SwinIR", "HAT", "DAT", "SPAN", "EDSR", "BSD-3-Clause", "Apache-2.0", "MIT"):
        assert name in out


def test_list_shows_named_models_and_their_cache_state(capsys, tmp_path, monkeypatch):
    from srtool.model_tools import list_named_models
    from srtool.model_zoo import zoo_entries

    monkeypatch.setenv("SRTOOL_CACHE_DIR", str(tmp_path))
    rows = {row["name"]: row for row in list_named_models()}
    assert set(rows) == {entry.name for entry in zoo_entries()} and rows["realesrgan-x4plus"]["cached"] == "no"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / rows["realesrgan-x4plus"]["file"]).write_bytes(b"x")
    assert {row["name"]: row for row in list_named_models()}["realesrgan-x4plus"]["cached"] == "yes"
    assert run_cli("models", "list", "-q") == 0
    out = capsys.readouterr().out
    assert "realesrgan-x4plus" in out and "67.0 MB" in out


@pytest.mark.parametrize("kind", ["compact", "esrgan-x3", "swinir"])
def test_convert_round_trip(tmp_path: Path, kind: str):
    if kind == "compact":
        src, scale = _compact(tmp_path), None
    elif kind == "swinir":
        src, scale = _swinir(tmp_path), None
    else:
        src, scale = tmp_path / "3x_old.pth", 3
        torch.save(_random_state(ESRGAN(num_filters=8, num_blocks=1, scale=3)), src)
    before = srtool.upscale_image(srtool.load_model(src, device="cpu", scale=scale), IMAGE)
    out = tmp_path / "converted.safetensors"
    assert run_cli("models", "convert", str(src), str(out), *(["--scale", str(scale)] if scale else [])) == 0
    model = srtool.load_model(out, device="cpu")  # no --scale needed any more: the metadata holds it
    assert model.scale == (scale or model.scale)
    assert np.abs(srtool.upscale_image(model, IMAGE) - before).max() == 0
    assert run_cli("models", "convert", str(src), str(out)) == 2  # never overwrites silently
    out.unlink()
    assert run_cli("models", "convert", str(src), str(out)) == 2  # nor the metadata copy beside it
    assert run_cli("models", "convert", str(src), str(out), "--overwrite", *(["--scale", str(scale)] if scale else [])) == 0


def test_convert_refuses_malicious_pickle(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    src = tmp_path / "evil.pth"
    src.write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    for call in (lambda: convert_model(src, tmp_path / "o.safetensors"), lambda: inspect_model(src),
                 lambda: export_onnx(src, tmp_path / "o.onnx")):
        with pytest.raises(UserError, match="refused to load"):
            call()
    assert not (tmp_path / "pwned").exists()


def _onnx_matches(path: Path, onnx_path: Path, x: np.ndarray, scale: int | None = None) -> float:
    import onnxruntime as ort

    from srtool.loading import load_network

    net, _ = load_network(path, scale)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("arch", ["srresnet", "rrdbnet", "msrresnet", "edsr", "compact"])
def test_onnx_export_matches_pytorch(tmp_path: Path, arch: str):
    pytest.importorskip("onnxruntime")
    if arch == "compact":
        src = _compact(tmp_path)
    else:
        net = {"srresnet": lambda: SRResNet(SRResNetConfig(n_blocks=1, n_feats=8)),
               "rrdbnet": lambda: RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=8, growth=4)),
               "msrresnet": lambda: MSRResNet(MSRResNetConfig(n_blocks=1, n_feats=8)),
               "edsr": lambda: EDSR(EDSRConfig(n_blocks=1, n_feats=8, scale=2))}[arch]()
        _random_state(net)
        if arch == "edsr":  # its first conv sees 0-255 values
            with torch.no_grad():
                net.conv_first.weight /= 255
                net.conv_last.weight *= 64
        src = save_export(tmp_path / f"{arch}.safetensors", net.eval())
    out = tmp_path / f"{arch}.onnx"
    assert run_cli("models", "export", str(src), str(out), "--opset", "17") == 0
    x = np.random.default_rng(1).random((2, 3, 13, 19), dtype=np.float32)  # other batch and size than traced
    assert _onnx_matches(src, out, x) <= 1e-4


def test_onnx_fp16_and_refusal(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    src = _compact(tmp_path)
    out = tmp_path / "c16.onnx"
    export_onnx(src, out, fp16=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    with pytest.raises(UserError, match="does not compute correctly in fp16"):
        export_onnx(_swinir(tmp_path), tmp_path / "s.onnx", fp16=True)


def test_upscale_cli_with_community_checkpoint(tmp_path: Path):
    """The user's path: `srtool upscale IMG --model realesr-general-x4v3.pth` writes the x4 image spandrel computes."""
    from PIL import Image

    src = _compact(tmp_path)
    img = (np.random.default_rng(4).random((12, 10, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "photo.png")
    out_dir = tmp_path / "out"
    assert run_cli("upscale", str(tmp_path / "photo.png"), "--model", str(src), "-o", str(out_dir), "--device", "cpu") == 0
    (written,) = list(out_dir.glob("*.png"))
    got = np.asarray(Image.open(written))
    descriptor = spandrel.ModelLoader().load_from_state_dict(torch.load(src, weights_only=True)["params"]).eval()
    with torch.no_grad():
        ref = descriptor(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0).numpy()
    assert got.shape == (48, 40, 3)
    assert np.abs(got.astype(int) - np.floor(ref * 255 + 0.5).astype(int)).max() <= 1


@pytest.mark.parametrize("command,name", [("convert", "out.safetensors"), ("export", "out.onnx")])
def test_output_that_is_a_folder_is_one_line(tmp_path: Path, capsys, command: str, name: str):
    """`srtool models convert|export M OUT --overwrite` with OUT an existing folder: exit 2 naming it (was an
    internal IsADirectoryError, exit 1); the folder and its content are kept, no temporary is left."""
    path = tmp_path / "m.safetensors"
    save_export(path, SRResNet(SRResNetConfig(n_blocks=1, n_feats=8)))
    folder = tmp_path / name
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        assert run_cli("models", command, str(path), str(folder), *extra) == 2
        err = capsys.readouterr().err
        assert f"{folder}: is a folder" in err and "internal error" not in err
    assert (folder / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".srtool-")]


def test_output_under_a_file_is_one_line(tmp_path: Path, capsys):
    """OUT inside a path whose 'folder' is a file says so (was 'output folder does not exist')."""
    path = tmp_path / "m.safetensors"
    save_export(path, SRResNet(SRResNetConfig(n_blocks=1, n_feats=8)))
    (tmp_path / "afile").write_text("x")
    assert run_cli("models", "convert", str(path), str(tmp_path / "afile" / "o.safetensors")) == 2
    assert f"{tmp_path / 'afile'}: is not a folder" in capsys.readouterr().err


def test_inspect_takes_a_run_directory_and_default_as_upscale_does(tmp_path: Path, capsys):
    """`--model` takes a training run directory and `default`; `models inspect` said "model file not found"."""
    from srtool.model_files import bundled_model_path

    run = tmp_path / "run"
    (run / "exports").mkdir(parents=True)
    save_export(run / "exports" / "last.safetensors", SRResNet(SRResNetConfig(n_blocks=1, n_feats=8)))
    assert run_cli("models", "inspect", str(run), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "srresnet" and info["scale"] == 4
    assert run_cli("models", "inspect", "default", "--json") == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == hashlib.sha256(bundled_model_path().read_bytes()).hexdigest()
    assert run_cli("models", "inspect", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "not a training run" in err and "Traceback" not in err
