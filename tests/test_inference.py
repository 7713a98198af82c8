"""The tiled inference engine: tiled == untiled, blending without seams or dark borders, channel
handling (gray, alpha premultiplication), dtypes, tiny images, OOM retry, precision, memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srtool.errors import UserError
from srtool.devices import resolve_device, resolve_precision
from srtool.engine import SRModel, axis_tiles, axis_weights, blend_half_width, upscale_array, upscale_image
from srtool.fusion import prepare_network
from srtool.loading import load_model
from srtool.models import RRDBNet, RRDBNetConfig, SRResNet, SRResNetConfig
from srtool.resize import imresize


def _model(network: nn.Module, tile=None, pad=10, precision="fp32") -> SRModel:
    return SRModel(
        name="test", scale=network.scale, network=prepare_network(network, torch.device("cpu"), precision),
        precision=precision, tile=tile, tile_pad=pad,
    )


def _srresnet(seed=0):
    """Receptive radius ~8 LR px: 3x3 head, 2 blocks (4 convs), trunk conv, upsampling, 3x3 tail."""
    torch.manual_seed(seed)
    return SRResNet(SRResNetConfig(n_blocks=2, n_feats=16, head_kernel=3, tail_kernel=3))


class Nearest(nn.Module):
    """x4 nearest-neighbour upsampling: an exactly invertible 'network' for round-trip tests."""

    scale = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)  # present so the engine sees the input channel count
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="nearest")


class Bilinear(Nearest):
    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:197, 200:281])  # 97 x 81, odd sizes


# ----------------------------------------------------------------------------------- tile geometry


@pytest.mark.parametrize("length,tile,pad", [(70, 24, 10), (53, 16, 4), (100, 100, 10), (7, 32, 10), (1, 16, 10), (257, 64, 0)])
@pytest.mark.parametrize("uniform", [False, True])
def test_tiles_cover_and_weights_sum_to_one(length, tile, pad, uniform):
    tiles = axis_tiles(length, tile, pad, uniform)
    assert tiles[0].core0 == 0 and tiles[-1].core1 == length
    assert all(a.core1 == b.core0 for a, b in zip(tiles, tiles[1:]))
    assert max(t.core1 - t.core0 for t in tiles) <= max(tile, 1)
    if uniform:
        assert len({t.win1 - t.win0 for t in tiles}) == 1  # one window shape: tiles batch
    assert all(0 <= t.win0 <= max(t.core0 - pad, 0) and min(t.core1 + pad, length) <= t.win1 <= length for t in tiles)
    scale = 4
    total = np.zeros(length * scale)
    half = blend_half_width(tiles, pad)
    for k, t in enumerate(tiles):
        total[t.win0 * scale : t.win1 * scale] += axis_weights(tiles, k, scale, half)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)  # normalised everywhere, image borders included


# --------------------------------------------------------------------------------- tiled == untiled


@pytest.mark.parametrize("tile", [16, 27])
def test_tiled_equals_untiled_srresnet(photo, tile):
    net = _srresnet()
    untiled = _model(net, tile=512)(photo)
    # receptive radius ~8 LR px; the cross-fade keeps pad/2 of context => pad 18 suffices
    model = _model(net, tile=tile, pad=18)
    assert len(axis_tiles(97, tile, 18)) >= 4 and axis_tiles(97, tile, 18)[0].win1 < 97  # really tiled
    tiled = model(photo)
    assert tiled.shape == (388, 324, 3) and tiled.dtype == np.uint8
    np.testing.assert_array_equal(tiled, untiled)


def test_tiled_equals_untiled_rrdbnet(photo):
    torch.manual_seed(1)
    net = RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=8, growth=4))  # receptive radius ~19 LR px
    untiled = _model(net, tile=512)(photo)
    tiled = _model(net, tile=24, pad=40)(photo)
    np.testing.assert_array_equal(tiled, untiled)


def test_wide_image_gets_shorter_tiles_same_result(photo, monkeypatch):
    """The float strip spans the full width; a small strip budget forces short tiles, same pixels."""
    from srtool import engine

    net = _srresnet()
    expected = _model(net, tile=32, pad=18)(photo)
    calls = []
    monkeypatch.setattr(engine, "STRIP_BUDGET", 1 << 16)
    original = engine.axis_tiles
    monkeypatch.setattr(engine, "axis_tiles", lambda n, t, p, uniform=False: calls.append((n, t)) or original(n, t, p, uniform))
    np.testing.assert_array_equal(_model(net, tile=32, pad=18)(photo), expected)
    assert calls[0] == (97, 16) and calls[1] == (81, 32)  # rows: 16-px tiles, columns: 32


def test_small_pad_has_no_seams(photo):
    """With too little context tiles differ slightly, but the cross-fade leaves no step at boundaries."""
    net = _srresnet()
    untiled = _model(net, tile=512)(photo).astype(np.int16)
    tiled = _model(net, tile=24, pad=4)(photo).astype(np.int16)
    diff = np.abs(tiled - untiled)
    assert diff.max() <= 12 and diff.mean() < 0.5


def test_blending_never_darkens_borders():
    img = np.full((45, 38, 3), 200, np.uint8)
    img[::7] = 30
    for tile, pad in [(8, 4), (16, 10), (20, 0)]:
        out = _model(Nearest(), tile=tile, pad=pad)(img)
        np.testing.assert_array_equal(out, img.repeat(4, 0).repeat(4, 1))


def test_batched_tiles_match(photo):
    net = _srresnet()
    model = _model(net, tile=32, pad=18)
    from srtool import engine

    expected = model(photo)  # one tile per call, border windows clipped
    out = engine._run_tiled(model, photo, "model", 32, 3)  # three same-shape tiles per network call
    np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------------- channels/dtypes


def test_gray_stays_single_channel_and_matches_rgb_mean(photo):
    gray = photo[..., 1]
    model = _model(_srresnet(), tile=32, pad=18)
    out = model(gray)
    assert out.shape == (388, 324) and out.dtype == np.uint8
    rgb_input = np.repeat(gray[..., None], 3, axis=2)
    net_out = model.network(torch.from_numpy(rgb_input).permute(2, 0, 1)[None].float() / 255)
    expected = np.floor(net_out.clamp(0, 1).mean(1)[0].detach().numpy() * 255 + 0.5)
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtype_preserved_and_nearest_is_exact(dtype):
    rng = np.random.default_rng(0)
    peak = {np.uint8: 255, np.uint16: 65535}.get(dtype)
    img = (rng.integers(0, peak + 1, (13, 9, 3)).astype(dtype) if peak else rng.random((13, 9, 3)).astype(dtype))
    out = _model(Nearest(), tile=16)(img)
    assert out.dtype == img.dtype
    np.testing.assert_array_equal(out[::4, ::4], img)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (3, 2, 3), (5, 40, 3)])
def test_tiny_images_and_smaller_than_tile(shape):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, shape).astype(np.uint8)
    model = _model(_srresnet(), tile=32)
    out = model(img)
    assert out.shape == (shape[0] * 4, shape[1] * 4, *shape[2:])
    assert model(img).tobytes() == out.tobytes()
    np.testing.assert_array_equal(_model(Nearest(), tile=32)(img)[::4, ::4], img)


def test_rgba_premultiplied_no_halo():
    """Transparent pixels carry garbage green; premultiplication keeps it out of the opaque red."""
    img = np.zeros((24, 24, 4), np.uint8)
    img[..., 1] = 255  # green everywhere ...
    img[:, :12] = (255, 0, 0, 255)  # ... left half opaque red
    img[:, 12:, 3] = 0  # right half fully transparent
    out = _model(Bilinear(), tile=16, pad=8)(img)
    visible = out[..., 3] > 0
    assert visible.any() and (out[..., 3][:, :44] == 255).all()
    assert out[..., 1][visible].max() == 0  # no green fringe anywhere alpha is visible
    assert (out[..., 0][visible] == 255).all()
    # without premultiplication, bilinear would have mixed green into the edge:
    naive = _model(Bilinear(), tile=16, pad=8)(img[..., :3])
    assert naive[:, 44:52, 1].max() > 0


def test_rgba_alpha_modes():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (10, 12, 4)).astype(np.uint8)
    img[..., 3] = rng.integers(1, 256, (10, 12))
    out = _model(Nearest())(img)
    np.testing.assert_array_equal(out[::4, ::4, 3], img[..., 3])
    np.testing.assert_array_equal(out[::4, ::4], img)  # colour recovered exactly after un-premultiplying
    bic = upscale_array(_model(Nearest()), img, alpha="bicubic")
    np.testing.assert_array_equal(bic[..., 3], imresize(img[..., 3], 4.0))
    la = _model(Nearest())(img[..., 2:])
    np.testing.assert_array_equal(la[::4, ::4], img[..., 2:])


def test_upscale_image_returns_same_type(photo):
    from PIL import Image

    model = _model(Nearest(), tile=32)
    assert isinstance(upscale_image(model, photo), np.ndarray)
    for mode in ("RGB", "L", "RGBA", "LA", "P"):
        img = Image.fromarray(photo).convert(mode)
        out = upscale_image(model, img)
        assert isinstance(out, Image.Image) and out.size == (img.width * 4, img.height * 4)
        assert out.mode == {"P": "RGB"}.get(mode, mode)
    img16 = Image.fromarray((photo[..., 0].astype(np.uint16) * 257))
    out16 = upscale_image(model, img16)
    assert out16.mode == "I;16" and np.array_equal(np.asarray(out16)[::4, ::4], np.asarray(img16))


# -------------------------------------------------------------------------------- memory and devices


class _OOMAbove(nn.Module):
    """Raises the CUDA OOM exception for inputs larger than ``limit`` pixels, like a small GPU would."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, []
        self.config = inner.config

    @property
    def scale(self):
        return self.inner.scale

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_retries_with_smaller_tiles(photo, capsys):
    net = _srresnet()
    expected = _model(net, tile=24, pad=18)(photo)
    flaky = _OOMAbove(net, limit=(24 + 36) ** 2)  # 96-px tiles (+pad) do not fit, 24-px ones do
    out = _model(flaky, tile=96, pad=18)(photo)
    np.testing.assert_array_equal(out, expected)
    err = capsys.readouterr().err
    assert "retrying with tile 48" in err and "retrying with tile 24" in err
    tiny = _OOMAbove(net, limit=10)
    with pytest.raises(UserError, match="out of memory even with"):
        _model(tiny, tile=64)(photo)


def test_device_and_precision_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else resolve_device("auto").type)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(UserError, match="--precision"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(UserError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_bf16_on_cpu_is_close_to_fp32(photo):
    net = _srresnet()
    fp32 = _model(net, tile=32)(photo).astype(np.float64)
    bf16 = _model(_srresnet(), tile=32, precision="bf16")(photo).astype(np.float64)
    mse = np.mean((fp32 - bf16) ** 2)
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 35  # bf16 costs little against fp32 output


def test_load_model_default_without_bundled_weights_is_bicubic_with_notice(capsys, monkeypatch, tmp_path):
    from srtool import model_files

    monkeypatch.setattr(model_files, "BUNDLED_WEIGHTS_DIR", tmp_path)  # an install without weights
    model = load_model("default")
    assert model.is_bicubic and "bicubic" in capsys.readouterr().err
    img = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_array_equal(model(img), imresize(img, 4.0))


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, torch
    from srtool.engine import SRModel
    from srtool.fusion import prepare_network
    from srtool.models import SRResNet, SRResNetConfig
    torch.manual_seed(0)
    net = SRResNet(SRResNetConfig(n_blocks=1, n_feats=8, head_kernel=3, tail_kernel=3))
    model = SRModel("small", 4, prepare_network(net, torch.device("cpu"), "fp32"))
    h, w = 3000, 4000
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx % 256), (yy % 256), ((xx + yy) % 256)], axis=2).astype(np.uint8)
    del yy, xx
    t = time.perf_counter()
    out = model(img)
    print(json.dumps({"shape": list(out.shape), "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "seconds": time.perf_counter() - t, "corner": out[-1, -1].tolist()}))
""")


@pytest.mark.slow
def test_memory_bounded_by_tile_not_image():
    """4000x3000 -> 16000x12000 on the CPU: the uint8 output alone is 576 MB; peak RSS must stay < 3 GB."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [12000, 16000, 3]
    assert result["maxrss_kb"] * 1024 < 3e9, result


def test_cpu_fusion_keeps_function_and_state_dict(photo):
    """conv -> LeakyReLU pairs run as fused oneDNN calls; same outputs, same state_dict keys."""
    from srtool.fusion import _FusedConvActivation

    torch.manual_seed(3)
    net = RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=16, growth=8)).eval()
    keys = list(net.state_dict())
    x = torch.from_numpy(photo[:24, :20]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        eager = net(x)
    fused = prepare_network(net, torch.device("cpu"), "fp32")
    assert sum(isinstance(m, _FusedConvActivation) for m in fused.modules()) == 3 * 4 + 3
    # x + 0.2 * conv5(...) -> one convolution with a fused add, per RDB; x + 0.2 * y -> one add, per RRDB
    assert sum(type(m).__name__ == "_FusedConvAdd" and m.scale == 0.2 for m in fused.modules()) == 3
    assert fused.code.count("torch.add") == 1
    with torch.no_grad():
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), eager, atol=1e-5, rtol=1e-4)
    assert list(fused.state_dict()) == keys and fused.config == net.config


def test_gpu_batch_follows_the_users_tile(monkeypatch):
    """With --tile on a GPU the tiles per call are sized for that tile, not for the automatic one
    (a 1024-px --tile with the 512-px tile's batch of 16 would run out of memory first and retry)."""
    import torch

    from srtool import engine
    from srtool.loading import load_model

    model = load_model("default", device="cpu", precision="fp16")
    model.device = torch.device("cuda")  # only the sizing is exercised: no CUDA call is made
    monkeypatch.setattr(engine, "available_memory", lambda _device: 40 << 30)
    auto_tile, auto_batch = engine.auto_tile(model)
    assert auto_tile == 512 and auto_batch == engine.gpu_batch(model, 512) > 4
    assert 1 <= engine.gpu_batch(model, 1024) <= auto_batch // 3  # ~4x the pixels per tile
    assert engine.gpu_batch(model, 4096) == 1
    per_px = engine.activation_bytes_per_pixel(model.network, model.scale, model.precision)
    window = (1024 + 2 * model.tile_pad) ** 2
    assert engine.gpu_batch(model, 1024) * per_px * window <= 0.6 * (40 << 30)
    model.device = torch.device("cpu")
    assert engine.gpu_batch(model, 1024) == 1
