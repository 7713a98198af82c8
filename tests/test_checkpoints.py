"""Third-party checkpoint layouts: each test builds the *original* architecture (written here from the
public code, with its real module names, so its state dict has the real key names and shapes), saves
it the way its project does (.pth, BasicSR wrappers, safetensors), loads it through srtool and checks
that srtool's network computes the same function. Plus: the unsafe-pickle refusal and clear errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srtool.checkpoints import LAYOUTS, load_checkpoint
from srtool.errors import UserError
from srtool.loading import load_model
from srtool.models import RRDBNet, RRDBNetConfig, SRResNet, SRResNetConfig
from srtool.models.export import save_export
from srtool.models.vgg import IMAGENET_MEAN, IMAGENET_STD

torch.manual_seed(0)


def _randomise(module: nn.Module) -> nn.Module:
    """Random weights everywhere, including BN statistics and PReLU slopes (so a wrong mapping shows)."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.dtype.is_floating_point:
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand_like(tensor) + 0.5)
                else:
                    tensor.copy_(torch.randn_like(tensor) * 0.1)
    return module.eval()


def _same_function(reference, loaded: nn.Module, size=(9, 11), atol=1e-5) -> None:
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        expected = reference(x)
        got = loaded(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4)


# ---------------------------------------------------------------- ESRGAN (xinntao/ESRGAN), old layout


class _OldRDB(nn.Module):  # old arch: each conv is B.conv_block -> Sequential(conv, lrelu); conv5 without act
    def __init__(self, nf, gc):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.conv1 = nn.Sequential(nn.Conv2d(nf, gc, 3, padding=1), act())
        self.conv2 = nn.Sequential(nn.Conv2d(nf + gc, gc, 3, padding=1), act())
        self.conv3 = nn.Sequential(nn.Conv2d(nf + 2 * gc, gc, 3, padding=1), act())
        self.conv4 = nn.Sequential(nn.Conv2d(nf + 3 * gc, gc, 3, padding=1), act())
        self.conv5 = nn.Sequential(nn.Conv2d(nf + 4 * gc, nf, 3, padding=1))

    def forward(self, x):
        x1 = self.conv1(x)
        x2 = self.conv2(torch.cat((x, x1), 1))
        x3 = self.conv3(torch.cat((x, x1, x2), 1))
        x4 = self.conv4(torch.cat((x, x1, x2, x3), 1))
        return x + 0.2 * self.conv5(torch.cat((x, x1, x2, x3, x4), 1))


class _OldRRDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.RDB1, self.RDB2, self.RDB3 = _OldRDB(nf, gc), _OldRDB(nf, gc), _OldRDB(nf, gc)

    def forward(self, x):
        return x + 0.2 * self.RDB3(self.RDB2(self.RDB1(x)))


class _Shortcut(nn.Module):
    def __init__(self, sub):
        super().__init__()
        self.sub = sub

    def forward(self, x):
        return x + self.sub(x)


def esrgan_old(nb=2, nf=16, gc=8):
    """The 2018 architecture.py RRDB_Net: model.0 conv, model.1 shortcut(RRDBs + LR conv), upconv x2, HR, last."""
    up = lambda: nn.Upsample(scale_factor=2, mode="nearest")  # noqa: E731
    lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, nf, 3, padding=1),
        _Shortcut(nn.Sequential(*[_OldRRDB(nf, gc) for _ in range(nb)], nn.Conv2d(nf, nf, 3, padding=1))),
        up(), nn.Conv2d(nf, nf, 3, padding=1), lrelu(),
        up(), nn.Conv2d(nf, nf, 3, padding=1), lrelu(),
        nn.Conv2d(nf, nf, 3, padding=1), lrelu(),
        nn.Conv2d(nf, 3, 3, padding=1),
    )


class _ModelWrapper(nn.Module):  # the state dict keys start with "model."
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


# ---------------------------------------------------------------- ESRGAN, new layout (RRDBNet_arch.py)


class _NewRDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x):
        lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = lrelu(self.conv1(x))
        x2 = lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return x + 0.2 * self.conv5(torch.cat((x, x1, x2, x3, x4), 1))


class _NewRRDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.RDB1, self.RDB2, self.RDB3 = _NewRDB(nf, gc), _NewRDB(nf, gc), _NewRDB(nf, gc)

    def forward(self, x):
        return x + 0.2 * self.RDB3(self.RDB2(self.RDB1(x)))


class ESRGANNewNet(nn.Module):
    def __init__(self, nb=2, nf=16, gc=8):
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[_NewRRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x):
        lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        fea = lrelu(self.upconv1(F.interpolate(fea, scale_factor=2, mode="nearest")))
        fea = lrelu(self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest")))
        return self.conv_last(lrelu(self.HRconv(fea)))


# ---------------------------------------------------------------- BasicSR MSRResNet


class _ResidualBlockNoBN(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


class BasicSRMSRResNetNet(nn.Module):
    def __init__(self, nf=16, nb=2, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.body = nn.Sequential(*[_ResidualBlockNoBN(nf) for _ in range(nb)])
        if upscale in (2, 3):
            self.upconv1 = nn.Conv2d(nf, nf * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        else:
            self.upconv1 = nn.Conv2d(nf, nf * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(nf, nf * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, x):
        feat = self.lrelu(self.conv_first(x))
        out = self.body(feat)
        if self.upscale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        else:
            out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- sgrvinod's SRResNet (tutorial port)


class _ConvolutionalBlock(nn.Module):
    def __init__(self, cin, cout, k, batch_norm=False, activation=None):
        super().__init__()
        layers = [nn.Conv2d(cin, cout, k, padding=k // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        if activation == "prelu":
            layers.append(nn.PReLU())
        elif activation == "tanh":
            layers.append(nn.Tanh())
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return self.conv_block(x)


class _SubPixelConvolutionalBlock(nn.Module):
    def __init__(self, n, factor=2):
        super().__init__()
        self.conv = nn.Conv2d(n, n * factor * factor, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(factor)
        self.prelu = nn.PReLU()

    def forward(self, x):
        return self.prelu(self.pixel_shuffle(self.conv(x)))


class _SgrResidualBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv_block1 = _ConvolutionalBlock(n, n, 3, batch_norm=True, activation="prelu")
        self.conv_block2 = _ConvolutionalBlock(n, n, 3, batch_norm=True, activation=None)

    def forward(self, x):
        return x + self.conv_block2(self.conv_block1(x))


class SgrvinodSRResNetNet(nn.Module):
    def __init__(self, n=16, nb=2, scaling_factor=4):
        super().__init__()
        self.conv_block1 = _ConvolutionalBlock(3, n, 9, batch_norm=False, activation="prelu")
        self.residual_blocks = nn.Sequential(*[_SgrResidualBlock(n) for _ in range(nb)])
        self.conv_block2 = _ConvolutionalBlock(n, n, 3, batch_norm=True, activation=None)
        self.subpixel_convolutional_blocks = nn.Sequential(
            *[_SubPixelConvolutionalBlock(n) for _ in range(int(np.log2(scaling_factor)))]
        )
        self.conv_block3 = _ConvolutionalBlock(n, 3, 9, batch_norm=False, activation="tanh")

    def forward(self, lr):  # lr: ImageNet-normalised; returns [-1, 1]
        out = self.conv_block1(lr)
        residual = out
        out = self.conv_block2(self.residual_blocks(out)) + residual
        return self.conv_block3(self.subpixel_convolutional_blocks(out))


# ------------------------------------------------------------------------------------------- tests


def test_esrgan_old_layout(tmp_path: Path):
    ref = _randomise(_ModelWrapper(esrgan_old(nb=2, nf=16, gc=8)))
    keys = set(ref.state_dict())
    assert {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight", "model.1.sub.1.RDB3.conv5.0.bias",
            "model.1.sub.2.weight", "model.3.weight", "model.6.weight", "model.8.weight", "model.10.weight"} <= keys
    path = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(ref.state_dict(), path)
    net, info = load_checkpoint(path)  # growth 8: spandrel cannot build it (hard-coded 32), srtool maps it
    assert info["layout"] == "ESRGAN/RRDBNet"
    assert {"n_blocks": 2, "n_feats": 16, "growth": 8, "scale": 4}.items() <= info["hyperparameters"].items()
    _same_function(ref, net)


def test_esrgan_new_layout(tmp_path: Path):
    ref = _randomise(ESRGANNewNet(nb=3, nf=16, gc=4))
    path = tmp_path / "RRDB_PSNR_x4.pth"
    torch.save(ref.state_dict(), path)
    net, info = load_checkpoint(path)
    assert info["layout"] == "ESRGAN/RRDBNet"
    assert info["hyperparameters"]["n_blocks"] == 3 and info["hyperparameters"]["growth"] == 4
    _same_function(ref, net)


def test_basicsr_rrdbnet_params_ema_and_module_prefix(tmp_path: Path):
    ema = _randomise(RRDBNet(RRDBNetConfig(n_blocks=2, n_feats=16, growth=8)))
    plain = _randomise(RRDBNet(RRDBNetConfig(n_blocks=2, n_feats=16, growth=8)))
    path = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({
        "params": {f"module.{k}": v for k, v in plain.state_dict().items()},
        "params_ema": {f"module.{k}": v for k, v in ema.state_dict().items()},
    }, path)
    net, info = load_checkpoint(path)
    assert info["layout"] == "ESRGAN/RRDBNet" and isinstance(net, RRDBNet)
    _same_function(ema, net)  # the EMA weights are the ones used


def test_basicsr_params_wrapper_x2(tmp_path: Path):
    ref = _randomise(RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=16, growth=8, scale=2)))
    path = tmp_path / "x2.pth"
    torch.save({"params": ref.state_dict()}, path)
    net, info = load_checkpoint(path)
    assert net.scale == 2
    _same_function(ref, net)


@pytest.mark.parametrize("upscale", [4, 2, 3])
def test_basicsr_msrresnet(tmp_path: Path, upscale: int):
    ref = _randomise(BasicSRMSRResNetNet(nf=16, nb=3, upscale=upscale))
    path = tmp_path / f"MSRResNet_x{upscale}.pth"
    torch.save({"params": ref.state_dict()}, path)
    net, info = load_checkpoint(path)
    assert info["layout"] == "basicsr-msrresnet" and net.scale == upscale
    assert info["hyperparameters"]["n_blocks"] == 3
    _same_function(ref, net)


def test_sgrvinod_srresnet_with_range_conversion(tmp_path: Path):
    ref = _randomise(SgrvinodSRResNetNet(n=16, nb=2))
    keys = set(ref.state_dict())
    assert {"conv_block1.conv_block.0.weight", "conv_block1.conv_block.1.weight",
            "residual_blocks.0.conv_block1.conv_block.1.running_mean", "residual_blocks.1.conv_block1.conv_block.2.weight",
            "residual_blocks.0.conv_block2.conv_block.1.weight", "conv_block2.conv_block.1.bias",
            "subpixel_convolutional_blocks.1.conv.weight", "subpixel_convolutional_blocks.0.prelu.weight",
            "conv_block3.conv_block.0.weight"} <= keys
    path = tmp_path / "srresnet.pth"
    torch.save(ref.state_dict(), path)
    net, info = load_checkpoint(path)
    assert info["layout"] == "sgrvinod-srresnet"
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    _same_function(lambda x: (ref((x - mean) / std) + 1) / 2, net)


def test_srtool_srresnet_bare_state_dict_safetensors(tmp_path: Path):
    from safetensors.torch import save_file

    ref = _randomise(SRResNet(SRResNetConfig(n_blocks=2, n_feats=16, head_kernel=5, tail_kernel=3, trunk_batch_norm=False)))
    path = tmp_path / "srresnet.safetensors"  # no srtool metadata: detected from its keys
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = load_model(path, device="cpu")
    assert model.info["layout"] == "srtool-srresnet"
    assert model.info["hyperparameters"]["head_kernel"] == 5 and not model.info["hyperparameters"]["trunk_batch_norm"]
    _same_function(ref, model.network.float().to(memory_format=torch.contiguous_format))


def test_unknown_layout_lists_supported(tmp_path: Path):
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError) as err:
        load_model(path)
    message = str(err.value)
    assert "mystery.pth" in message and "unrecognised checkpoint layout" in message
    for layout in LAYOUTS:
        assert layout.name in message


def test_pixel_unshuffle_with_growth_spandrel_cannot_build_is_a_clear_error(tmp_path: Path):
    # (x2plus with growth 32 loads through spandrel: tests/test_community_models.py)
    ref = RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=16, growth=8))
    state = dict(ref.state_dict())
    state["conv_first.weight"] = torch.zeros(16, 12, 3, 3)
    path = tmp_path / "RealESRGAN_x2plus.pth"
    torch.save({"params_ema": state}, path)
    with pytest.raises(UserError, match=r"RealESRGAN_x2plus\.pth: looks like ESRGAN but its tensors do not fit"):
        load_model(path)


def test_wrong_shapes_are_a_clear_error(tmp_path: Path):
    ref = ESRGANNewNet(nb=1, nf=16, gc=8)
    state = dict(ref.state_dict())
    state["HRconv.weight"] = torch.zeros(16, 8, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match="ESRGAN"):
        load_model(path)


class _Evil:
    """Unpickling this creates a file: a stand-in for any code a malicious checkpoint would run."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, container: str):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "RRDB_ESRGAN_x4.pth"
    payload = {"model.0.weight": torch.zeros(1), "evil": _Evil(str(target))}
    if container == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    # prove the payload is live: a plain unpickle would create the file
    with pytest.raises(UserError, match="refused to load"):
        load_model(path)
    assert not target.exists()
    if container == "raw-pickle":
        pickle.loads(path.read_bytes()).get("evil").close()
        assert target.exists()  # ... which the refusal above prevented
        os.remove(target)



@pytest.mark.parametrize("content", [b"hello world\n", b"PK\x03\x04truncated zip", b""])
def test_files_that_are_not_checkpoints_are_one_clear_error(tmp_path: Path, content: bytes):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"model\.pth: (not a readable PyTorch checkpoint|refused to load)"):
        load_model(path)

def test_run_directory_prefers_best_then_last(tmp_path: Path):
    run = tmp_path / "run"
    best = _randomise(SRResNet(SRResNetConfig(n_blocks=1, n_feats=16)))
    last = _randomise(SRResNet(SRResNetConfig(n_blocks=2, n_feats=16)))
    save_export(run / "exports" / "last.safetensors", last)
    assert load_model(run, device="cpu").info["generator"]["n_blocks"] == 2
    save_export(run / "exports" / "best.safetensors", best)
    model = load_model(run, device="cpu")
    assert model.info["generator"]["n_blocks"] == 1 and model.name == "run"
    with pytest.raises(UserError, match="not a training run"):
        load_model(tmp_path, device="cpu")


def test_scale_disagreement_is_an_error(tmp_path: Path):
    path = save_export(tmp_path / "m.safetensors", SRResNet(SRResNetConfig(n_blocks=1, n_feats=16)))
    with pytest.raises(UserError, match="--scale 2 disagrees"):
        load_model(path, scale=2)
    assert load_model(path, scale=4, device="cpu").scale == 4
