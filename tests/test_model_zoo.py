"""Named pretrained models (issue 14 item 18): ``--model NAME`` downloads once into the cache, verified, then loads.

The release files cannot be fetched here, so a registry entry is pointed (``$SRTOOL_MODEL_MIRROR``) at
a local HTTP server on 127.0.0.1 serving a Real-ESRGAN-style file the test builds (an RRDBNet
state dict under ``params_ema``); its pin is set to that file's sha256.
"""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run_cli
from srtool import model_zoo
from srtool.loading import load_model
from srtool.models import RRDBNet, RRDBNetConfig
from test_prepare_download import Server

NAME = "realesrgan-x4plus"


def rrdb_release_file() -> bytes:
    torch.manual_seed(0)
    net = RRDBNet(RRDBNetConfig(n_feats=8, n_blocks=1, growth=4))
    buf = io.BytesIO()
    torch.save({"params_ema": net.state_dict()}, buf)
    return buf.getvalue()


def serve_named_model(monkeypatch, tmp_path, name: str, data: bytes) -> Server:
    """A local mirror serving ``data`` as named model ``name``'s release file, pinned to its sha256; a fresh
    cache under tmp_path (the caller closes the server)."""
    entry = model_zoo.ZOO[name]
    monkeypatch.setitem(model_zoo.ZOO, name, model_zoo.ZooModel(
        entry.name, entry.url, entry.architecture, entry.scale, entry.licence, len(data), hashlib.sha256(data).hexdigest()))
    server = Server()
    server.files["/" + entry.filename] = data
    monkeypatch.setenv("SRTOOL_MODEL_MIRROR", server.url)
    monkeypatch.setenv("SRTOOL_CACHE_DIR", str(tmp_path / "cache"))
    return server


@pytest.fixture
def zoo(monkeypatch, tmp_path):
    """A local mirror serving the test's file for realesrgan-x4plus, pinned to its sha256; a fresh cache."""
    data = rrdb_release_file()
    server = serve_named_model(monkeypatch, tmp_path, NAME, data)
    yield server, data
    server.close()


def test_named_model_downloads_once_verified_and_upscales(zoo, tmp_path, benchmarks_dir, capsys):
    server, data = zoo
    src = benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / "bird.png"
    code = run_cli("upscale", str(src), "-o", str(tmp_path / "out"), "--model", NAME)
    assert code == 0, capsys.readouterr().err  # today: "model not found"
    cached = tmp_path / "cache" / "models" / "RealESRGAN_x4plus.pth"
    assert cached.read_bytes() == data
    assert Image.open(tmp_path / "out" / "bird_x4.png").size == (288, 288)
    n = len(server.requests)
    model = load_model("RealESRGAN_x4plus", device="cpu")  # the release file's own name works too
    assert len(server.requests) == n  # no second download
    assert model.scale == 4 and model.identity == hashlib.sha256(data).hexdigest()


def test_tampered_download_is_refused_and_never_loaded(zoo, tmp_path, capsys):
    server, data = zoo
    server.files["/RealESRGAN_x4plus.pth"] = data[:-1] + bytes([data[-1] ^ 1])
    code = run_cli("upscale", "-", "-o", "-", "--model", NAME)
    err = capsys.readouterr().err
    assert code == 2 and "sha256 mismatch" in err, err
    assert not (tmp_path / "cache" / "models" / "RealESRGAN_x4plus.pth").exists()


def test_offline_is_one_line_naming_url_and_destination(zoo, tmp_path, capsys):
    server, _ = zoo
    server.close()  # nothing listens there any more
    with pytest.raises(Exception) as info:
        load_model(NAME, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "RealESRGAN_x4plus.pth" in message
    assert server.url in message and str(tmp_path / "cache" / "models" / "RealESRGAN_x4plus.pth") in message
    # a file put there by hand is checked and used
    (tmp_path / "cache" / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache" / "models" / "RealESRGAN_x4plus.pth").write_bytes(zoo[1])
    assert load_model(NAME, device="cpu").scale == 4


def test_registry_entries_are_well_formed():
    entries = model_zoo.zoo_entries()
    assert {"realesrgan-x4plus", "realesrgan-x2plus", "realesr-general-x4v3", "realesr-animevideov3",
            "realesrgan-x4plus-anime-6b", "esrgan-x4", "swinir-m-x4-gan"} <= {e.name for e in entries}
    for e in entries:
        assert e.url.startswith("https://") and e.licence and e.architecture
        assert (e.sha256 and re.fullmatch(r"[0-9a-f]{64}", e.sha256)) or re.fullmatch(r"[0-9a-f]{8}", e.sha256_prefix or "")
        assert model_zoo.zoo_entry(e.name) is e and model_zoo.zoo_entry(e.filename) is e
