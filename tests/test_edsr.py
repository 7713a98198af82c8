"""EDSR checkpoints (srtool's own detector; spandrel does not load EDSR).

The references are written here from the original projects' code, with their module names, so the
saved state dicts have the real keys: EDSR-PyTorch (sanghyun-son; ``.pt`` state dicts, 0-255 input,
MeanShift convs ``sub_mean``/``add_mean``) and BasicSR's ``EDSR`` (``params`` wrapper, [0, 1] input,
the DIV2K mean as a non-saved attribute). srtool's network must compute the same function on [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import srtool
from srtool.checkpoints import load_checkpoint
from srtool.models.edsr import EDSR

MEAN = (0.4488, 0.4371, 0.4040)


# ------------------------------------------------------------------ EDSR-PyTorch (model/common.py, edsr.py)


class MeanShift(nn.Conv2d):
    def __init__(self, rgb_range, rgb_mean=MEAN, rgb_std=(1.0, 1.0, 1.0), sign=-1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.Tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.Tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


def default_conv(cin, cout, k, bias=True):
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class ResBlock(nn.Module):
    def __init__(self, n_feats, res_scale):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feats, n_feats, 3), nn.ReLU(True), default_conv(n_feats, n_feats, 3))
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x).mul(self.res_scale) + x


class Upsampler(nn.Sequential):
    def __init__(self, scale, n_feats):
        m = []
        if scale & (scale - 1) == 0:
            for _ in range(int(np.log2(scale))):
                m += [default_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        else:
            m += [default_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        super().__init__(*m)


class EDSRPyTorch(nn.Module):
    def __init__(self, n_resblocks, n_feats, scale, res_scale, rgb_range=255):
        super().__init__()
        self.sub_mean = MeanShift(rgb_range)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(default_conv(3, n_feats, 3))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)], default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, 3, 3))

    def forward(self, x):  # x in [0, 255]
        x = self.head(self.sub_mean(x))
        res = self.body(x) + x
        return self.add_mean(self.tail(res))


# ------------------------------------------------------------------ BasicSR (basicsr/archs/edsr_arch.py)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat, res_scale):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class BasicSREDSR(nn.Module):
    def __init__(self, num_feat, num_block, upscale, res_scale, img_range=255.0):
        super().__init__()
        self.img_range = img_range
        self.mean = torch.Tensor(MEAN).view(1, 3, 1, 1)  # a plain attribute: not in the state dict
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsampler(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x):  # x in [0, 1]
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x)) + x
        return self.conv_last(self.upsample(res)) / self.img_range + self.mean


def _randomise(module: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(("sub_mean", "add_mean")):
                continue
            noise = torch.randn(p.shape, generator=gen)
            # the first conv sees 0-255 values: scale it so features stay O(1), the last maps back
            gain = 1 / 255 if name.startswith(("head", "conv_first")) and p.ndim == 4 else 1.0
            gain = 255 / 4 if name.startswith(("tail.1", "conv_last")) and p.ndim == 4 else gain
            p.copy_(noise * gain / np.sqrt(p[0].numel()) if p.ndim > 1 else 0.05 * noise)
    return module.eval()


X = torch.from_numpy(np.random.default_rng(0).random((1, 3, 11, 9), dtype=np.float32))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_pytorch_pt(tmp_path: Path, scale: int):
    ref = _randomise(EDSRPyTorch(n_resblocks=2, n_feats=16, scale=scale, res_scale=1.0))
    assert {"sub_mean.weight", "add_mean.bias", "head.0.weight", "body.0.body.2.weight", "body.2.weight",
            "tail.0.0.weight", "tail.1.weight"} <= set(ref.state_dict())
    path = tmp_path / f"edsr_baseline_x{scale}-test.pt"
    torch.save(ref.state_dict(), path)
    net, info = load_checkpoint(path)
    assert isinstance(net, EDSR) and info["layout"] == "edsr-pytorch"
    assert {"scale": scale, "n_blocks": 2, "n_feats": 16, "res_scale": 1.0}.items() <= info["hyperparameters"].items()
    with torch.no_grad():
        expected = ref(X * 255) / 255
        got = net(X)
    assert expected.std() > 0.05
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    model = srtool.load_model(path, device="cpu", precision="fp32")  # and through the engine
    out = srtool.upscale_image(model, X[0].permute(1, 2, 0).numpy())
    assert np.abs(out - expected[0].clamp(0, 1).permute(1, 2, 0).numpy()).max() <= 1e-5


def test_edsr_pytorch_large_uses_res_scale_0_1(tmp_path: Path):
    ref = _randomise(EDSRPyTorch(n_resblocks=1, n_feats=256, scale=2, res_scale=0.1))
    path = tmp_path / "edsr_x2.pt"
    torch.save(ref.state_dict(), path)
    net, info = load_checkpoint(path)
    assert info["hyperparameters"]["res_scale"] == 0.1
    x = X[..., :5, :4]
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x * 255) / 255, atol=1e-5, rtol=0)


def test_basicsr_edsr_params_wrapper(tmp_path: Path):
    ref = _randomise(BasicSREDSR(num_feat=16, num_block=2, upscale=4, res_scale=1.0))
    path = tmp_path / "EDSR_Mx4_f64b16_DIV2K.pth"
    torch.save({"params": ref.state_dict()}, path)
    net, info = load_checkpoint(path)
    assert info["layout"] == "basicsr-edsr" and net.scale == 4
    with torch.no_grad():
        torch.testing.assert_close(net(X), ref(X), atol=1e-5, rtol=0)
