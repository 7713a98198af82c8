"""Community checkpoints through srtool (safe reader -> spandrel / srtool's detectors -> tiled engine).

Each family's state dict is built in its original project's key layout (spandrel's architecture
classes are the upstream code with the upstream module names; BasicSR/ESRGAN-new names are renamed
here from the published layouts), with random well-scaled weights, saved the way that project saves
it (bare dict, BasicSR ``params_ema`` wrapper, ``.safetensors``). srtool's output through
:func:`srtool.upscale_image` must equal spandrel's own model output on the same input (float path,
max abs <= 1e-5). Networks are tiny so the whole file runs in well under a minute on 2 cores.

Families covered (spandrel architecture ids): ESRGAN (old layout x1/x2/x3/x4/x8, new layout, BasicSR
Real-ESRGAN x4plus, x4plus_anime_6B, x2plus with pixel-unshuffle input, ESRGAN+), Compact
(realesr-general-x4v3, realesr-animevideov3, a gray model), SwinIR (classical, lightweight), HAT, DAT,
SPAN, OmniSR, RealCUGAN, RCAN. EDSR (srtool's own detector) is in tests/test_edsr.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import srtool
from srtool.errors import UserError
from srtool.models import RRDBNet

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.DAT import DAT  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.HAT import HAT  # noqa: E402
from spandrel.architectures.OmniSR import OmniSR  # noqa: E402
from spandrel.architectures.RCAN import RCAN  # noqa: E402
from spandrel.architectures.RealCUGAN import UpCunet2x  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402


def randomise(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random, well-scaled parameters (weights ~ N(0, 1/fan_in), norm scales ~ 1, small biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.numel() == 0:
                continue
            if p.ndim >= 2:
                p.copy_(noise / np.sqrt(p[0].numel()))
            elif name.endswith("weight") or "scale" in name:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def save(state: dict, path: Path, how: str) -> Path:
    if how == "safetensors":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file(state, str(path))
    elif how == "params_ema":
        torch.save({"params_ema": state}, path)
    else:
        torch.save(state, path)
    return path


def spandrel_output(state: dict, x: np.ndarray) -> np.ndarray:
    """spandrel's own result: its loader on the same state dict, its __call__ (pads, clamps)."""
    descriptor = spandrel.ModelLoader().load_from_state_dict(state).eval()
    t = torch.from_numpy(x if x.ndim == 3 else x[..., None]).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = descriptor(t)[0].permute(1, 2, 0).numpy()
    return y if x.ndim == 3 else y[..., 0]


def srtool_output(path: Path, x: np.ndarray, **kw) -> tuple[np.ndarray, srtool.engine.SRModel]:
    model = srtool.load_model(path, device="cpu", precision="fp32", **kw)
    return srtool.upscale_image(model, x), model


def rename(state: dict, rules: list[tuple[str, str]]) -> dict:
    out = {}
    for k, v in state.items():
        for pat, rep in rules:
            k2, n = re.subn(pat, rep, k)
            if n:
                k = k2
                break
        out[k] = v
    return out


def old_to_basicsr(state: dict) -> dict:
    """ESRGAN 2018 names -> BasicSR/Real-ESRGAN RRDBNet names (x4: model.3/6 up, model.8 HR, model.10 last)."""
    tail = sorted({int(m.group(1)) for k in state for m in [re.match(r"^model\.(\d+)\.weight$", k)] if m and int(m.group(1)) >= 2})
    nb = len({k.split(".")[3] for k in state if k.startswith("model.1.sub.") and ".RDB1." in k})
    rules = [(r"^model\.0\.", "conv_first."), (rf"^model\.1\.sub\.{nb}\.", "conv_body."),
             (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3.")]
    rules += [(rf"^model\.{i}\.", f"conv_up{n}.") for n, i in enumerate(tail[:-2], start=1)]
    rules += [(rf"^model\.{tail[-2]}\.", "conv_hr."), (rf"^model\.{tail[-1]}\.", "conv_last.")]
    return rename(state, rules)


def basicsr_to_esrgan_new(state: dict) -> dict:
    return rename(state, [(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2."), (r"^conv_body\.", "trunk_conv."),
                          (r"^conv_up(\d)\.", r"upconv\1."), (r"^conv_hr\.", "HRconv.")])


IMAGE = np.random.default_rng(0).random((20, 17, 3), dtype=np.float32)


def esrgan(scale=4, nb=2, plus=False, in_nc=3, shuffle=None):
    return ESRGAN(in_nc=in_nc, out_nc=3, num_filters=8, num_blocks=nb, scale=scale, plus=plus, shuffle_factor=shuffle)


# name -> (builder, layout transform, how it is saved)
FAMILIES = {
    "esrgan-old-x4": (lambda: esrgan(4), None, "bare"),
    "esrgan-old-x2": (lambda: esrgan(2), None, "bare"),
    "esrgan-old-x8": (lambda: esrgan(8, nb=1), None, "safetensors"),
    "esrgan-plus-x4": (lambda: esrgan(4, plus=True), None, "bare"),
    "esrgan-new-x4": (lambda: esrgan(4), lambda s: basicsr_to_esrgan_new(old_to_basicsr(s)), "bare"),
    "realesrgan-x4plus": (lambda: esrgan(4, nb=3), old_to_basicsr, "params_ema"),
    "realesrgan-x4plus-anime-6b": (lambda: esrgan(4, nb=6), old_to_basicsr, "params_ema"),
    "realesrgan-x2plus": (lambda: esrgan(4, in_nc=12, shuffle=2), old_to_basicsr, "params_ema"),
    "realesr-general-x4v3": (lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=6, upscale=4, act_type="prelu"), None, "params"),
    "realesr-animevideov3": (lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4), None, "params"),
    "swinir-classical": (lambda: SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2],
                                        mlp_ratio=2, upsampler="pixelshuffle"), None, "params_ema"),
    "swinir-lightweight": (lambda: SwinIR(upscale=3, img_size=16, window_size=4, embed_dim=12, depths=[2, 2],
                                          num_heads=[2, 2], mlp_ratio=2, upsampler="pixelshuffledirect"), None, "params"),
    "hat": (lambda: HAT(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                        compress_ratio=3, squeeze_factor=2, num_feat=16), None, "params_ema"),
    "dat": (lambda: DAT(upscale=2, img_size=16, embed_dim=32, split_size=[2, 4], depth=[2], num_heads=[2],
                        expansion_factor=2), None, "params"),
    # SPAN sees (x - mean) * 255: its first conv is scaled down so the random features stay O(1)
    "span": (lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4),
             lambda s: {k: v / 255 if re.match(r"conv_1\.(sk|conv\.0|eval_conv)\.weight", k) else v for k, v in s.items()}, "bare"),
    "omnisr": (lambda: OmniSR(num_feat=16, block_num=1, window_size=8, res_num=1, up_scale=2), None, "safetensors"),
    "realcugan-2x": (lambda: UpCunet2x(in_channels=3, out_channels=3), None, "bare"),
    "rcan": (lambda: RCAN(scale=2, n_resgroups=1, n_resblocks=2, n_feats=16, reduction=4), None, "bare"),
}
HEAVY = {"realcugan-2x", "realesrgan-x4plus-anime-6b", "esrgan-old-x8"}
SIZES = {"realcugan-2x": (40, 44), "hat": (20, 17), "dat": (20, 17), "omnisr": (20, 17)}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY else f for f in FAMILIES])
def test_family_equals_spandrel(tmp_path: Path, family: str):
    build, transform, how = FAMILIES[family]
    state = randomise(build())
    if transform:
        state = transform(state)
    path = save(state, tmp_path / f"{family}.pth", how)
    h, w = SIZES.get(family, (20, 17))
    x = np.random.default_rng(1).random((h, w, 3), dtype=np.float32)
    got, model = srtool_output(path, x)
    expected = spandrel_output(state, x)
    assert got.shape == expected.shape == (h * model.scale, w * model.scale, 3)
    assert np.abs(got - expected).max() <= 1e-5, (family, model.info)
    assert expected.std() > 0.01, "degenerate test: constant output"


def test_esrgan_family_maps_onto_srtool_rrdbnet_for_training(tmp_path: Path):
    """Real-ESRGAN x4plus: spandrel detects it, srtool runs (and --init-from gets) its own RRDBNet."""
    from srtool.checkpoints import load_checkpoint

    state = old_to_basicsr(randomise(esrgan(4, nb=2)))
    path = save(state, tmp_path / "RealESRGAN_x4plus.pth", "params_ema")
    net, info = load_checkpoint(path)
    assert isinstance(net, RRDBNet) and info["architecture"] == "ESRGAN"
    assert {"n_blocks": 2, "n_feats": 8, "growth": 32, "scale": 4}.items() <= info["hyperparameters"].items()
    assert set(net.state_dict()) == set(state)  # BasicSR names are srtool's: the weights carry over one to one
    for k, v in state.items():
        assert torch.equal(net.state_dict()[k], v)


def test_plus_and_unshuffle_variants_stay_spandrel_networks(tmp_path: Path):
    for name, (build, transform, how) in [("plus", FAMILIES["esrgan-plus-x4"]), ("x2plus", FAMILIES["realesrgan-x2plus"])]:
        state = randomise(build())
        state = transform(state) if transform else state
        model = srtool.load_model(save(state, tmp_path / f"{name}.pth", how), device="cpu")
        assert type(model.network).__name__ == "CommunityNetwork"
    assert model.scale == 2 and model.traits.multiple_of == 4  # x2plus: pixel-unshuffle needs multiples of 4


def test_old_layout_x3_needs_scale_hint(tmp_path: Path):
    ref = esrgan(3)
    state = randomise(ref)
    path = save(state, tmp_path / "4x_or_3x.pth", "bare")
    assert srtool.load_model(path, device="cpu").scale == 2  # same keys as x2: x2 unless told
    got, model = srtool_output(path, IMAGE, scale=3)
    assert model.scale == 3
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(IMAGE).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    plus = randomise(esrgan(3, plus=True))  # the spandrel-run variant honours the hint too
    assert srtool.load_model(save(plus, tmp_path / "plus3.pth", "bare"), device="cpu", scale=3).scale == 3


def test_one_x_restoration_needs_scale_1(tmp_path: Path):
    state = randomise(esrgan(1))
    path = save(state, tmp_path / "1x_DeJPEG.pth", "bare")
    with pytest.raises(UserError, match=r"1x_DeJPEG\.pth: a 1x ESRGAN restoration model .*pass --scale 1"):
        srtool.load_model(path, device="cpu")
    got, model = srtool_output(path, IMAGE, scale=1)
    assert model.scale == 1 and got.shape == IMAGE.shape
    assert np.abs(got - spandrel_output(state, IMAGE)).max() <= 1e-5


def test_gray_model(tmp_path: Path):
    state = randomise(Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=2))
    path = save(state, tmp_path / "gray.pth", "params")
    gray = IMAGE[..., 0]
    got, model = srtool_output(path, gray)
    assert model.traits.in_channels == 1
    assert np.abs(got - spandrel_output(state, gray)).max() <= 1e-5
    rgb, _ = srtool_output(path, IMAGE)  # an RGB image runs channel by channel through a gray model
    assert np.abs(rgb[..., 1] - spandrel_output(state, IMAGE[..., 1])).max() <= 1e-5


def test_size_requirements_are_padded_and_cropped(tmp_path: Path):
    """SwinIR needs at least 16 pixels (x2plus multiples of 4, RealCUGAN a minimum): smaller, odd sizes still work."""
    state = randomise(FAMILIES["swinir-classical"][0]())
    path = save(state, tmp_path / "swinir.pth", "params_ema")
    x = np.random.default_rng(2).random((9, 13, 3), dtype=np.float32)
    got, model = srtool_output(path, x)
    assert model.traits.minimum == 16 and got.shape == (18, 26, 3)
    assert np.abs(got - spandrel_output(state, x)).max() <= 1e-5


def test_precision_auto_respects_architecture_support(tmp_path: Path):
    from srtool.devices import resolve_precision

    state = randomise(FAMILIES["swinir-classical"][0]())
    model = srtool.load_model(save(state, tmp_path / "swinir.pth", "params_ema"), device="cpu")
    assert not model.traits.half and model.traits.bf16
    with pytest.raises(UserError, match="--precision fp16: this model's architecture does not compute correctly"):
        srtool.load_model(tmp_path / "swinir.pth", device="cpu", precision="fp16")
    cuda = torch.device("cuda")  # the policy itself (no GPU needed to decide)
    assert resolve_precision("auto", cuda, half_ok=True) == "fp16"
    assert resolve_precision("auto", torch.device("cpu"), half_ok=False) == "fp32"


@pytest.mark.parametrize("family", ["realesr-animevideov3", "swinir-classical", *[pytest.param(f, marks=pytest.mark.slow) for f in ("span", "hat", "dat")]])
def test_tiled_equals_untiled(tmp_path: Path, family: str):
    """uint8 output in three 40-px tiles vs one pass, at each architecture's own tile context.

    The windows (40 + context on the inner sides) do not cover the 120-px width, so the cross-fade
    regions really depend on the context. Measured (these test networks, 2026-11-30): max 0 levels for
    Compact, SPAN, SwinIR; max 1 (mean 0.0006 / 0.05) for HAT / DAT (DAT's channel attention is global);
    with the old fixed 10-px context SwinIR/HAT/OmniSR were off by up to 255 levels (mean 20-31).
    """
    build, transform, how = FAMILIES[family]
    state = randomise(build())
    path = save(transform(state) if transform else state, tmp_path / f"{family}.pth", how)
    img = (np.random.default_rng(3).random((40, 120, 3)) * 255).astype(np.uint8)
    whole = srtool.upscale_image(srtool.load_model(path, device="cpu", tile=512), img)
    tiled_model = srtool.load_model(path, device="cpu", tile=40)
    tiled = srtool.upscale_image(tiled_model, img)
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.1, (family, diff.max(), diff.mean(), tiled_model.tile_pad)


def test_fusion_leaves_foreign_modules_alone(tmp_path: Path):
    from srtool.fusion import prepare_network

    dat = DAT(upscale=2, img_size=16, embed_dim=32, split_size=[2, 4], depth=[2], num_heads=[2], expansion_factor=2)
    randomise(dat)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = dat.eval()(x)
        prepared = prepare_network(dat, torch.device("cpu"), "fp32")
        assert prepared is dat  # not traced: nothing of srtool's to fuse
        torch.testing.assert_close(prepared(x.contiguous(memory_format=torch.channels_last)), before, atol=1e-5, rtol=0)
        torch.testing.assert_close(dat(x.contiguous()), before, atol=1e-5, rtol=0)  # the caller's object still works


def test_unknown_layout_keeps_srtool_message(tmp_path: Path):
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError, match=r"mystery\.pth: unrecognised checkpoint layout \(keys start: encoder\.weight\)"):
        srtool.load_model(path)


def test_torchscript_archive_is_refused_without_running_it(tmp_path: Path):
    target = tmp_path / "ran.txt"

    class Evil(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    scripted = torch.jit.script(Evil())
    path = tmp_path / "realesr-general-x4v3.pth"  # renamed .pt archive
    torch.jit.save(scripted, str(path))
    with pytest.raises(UserError, match=r"realesr-general-x4v3\.pth: refused to load: a TorchScript archive"):
        srtool.load_model(path)
    assert not target.exists()


def _fresh_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_default_model_and_srtool_layouts_do_not_import_spandrel(tmp_path: Path):
    from srtool.models import SRResNet, SRResNetConfig
    from srtool.models.export import save_export

    from srtool.models.msrresnet import MSRResNet, MSRResNetConfig

    export = save_export(tmp_path / "e.safetensors", SRResNet(SRResNetConfig(n_blocks=1, n_feats=8)))
    basicsr = tmp_path / "MSRResNet_x4.pth"  # a layout srtool detects itself
    torch.save({"params": MSRResNet(MSRResNetConfig(n_blocks=1, n_feats=8)).state_dict()}, basicsr)
    code = (
        "import sys, srtool\n"
        "srtool.load_model('default', device='cpu'); srtool.load_model('bicubic')\n"
        f"srtool.load_model({str(export)!r}, device='cpu'); srtool.load_model({str(basicsr)!r}, device='cpu')\n"
        "print('spandrel' in sys.modules)\n"
    )
    assert _fresh_python(code) == "False"


def test_init_from_real_esrgan_file_gives_srtool_rrdbnet_weights(tmp_path: Path):
    from srtool.config import load_preset
    from srtool.train.engine import load_init_weights

    state = old_to_basicsr(randomise(esrgan(4, nb=2)))
    path = save(state, tmp_path / "RealESRGAN_x4plus.pth", "params_ema")
    preset = load_preset("rrdbnet", ["model.generator.n_blocks=2", "model.generator.n_feats=8"])
    weights = load_init_weights(str(path), preset, notice=lambda msg: None)
    fresh = RRDBNet(preset.model.generator)
    fresh.load_state_dict(weights, strict=True)  # srtool's trainable generator takes them as they are
    assert all(torch.equal(weights[k], v) for k, v in state.items())
    other = load_preset("rrdbnet", ["model.generator.n_blocks=3", "model.generator.n_feats=8"])
    with pytest.raises(UserError, match="does not match the preset"):
        load_init_weights(str(path), other, notice=lambda msg: None)


@pytest.mark.parametrize("kind", ["face", "inpainting", "rgba"])
def test_non_sr_descriptors_are_refused_in_one_line(kind: str):
    """The purpose check on real spandrel descriptors (real GFPGAN / LaMa state dicts are hundreds of MB:
    the descriptor is built here around a tiny network, with the architecture and purpose spandrel gives them)."""
    from spandrel import ImageModelDescriptor, MaskedImageModelDescriptor
    from spandrel.architectures.GFPGAN import GFPGANArch
    from spandrel.architectures.LaMa import LaMaArch

    from srtool.community import refuse_unless_sr

    tiny = Compact(num_in_ch=3, num_out_ch=3, num_feat=4, num_conv=1, upscale=1)
    common = dict(tags=[], supports_half=True, supports_bfloat16=True)
    if kind == "face":
        d = ImageModelDescriptor(tiny, tiny.state_dict(), GFPGANArch(), purpose="FaceSR", scale=1,
                                 input_channels=3, output_channels=3, **common)
        pattern = r"GFPGANv1Clean\.pth: a GFPGAN face-restoration model .*srtool does not run it"
    elif kind == "inpainting":
        d = MaskedImageModelDescriptor(tiny, tiny.state_dict(), LaMaArch(), purpose="Inpainting",
                                       input_channels=3, output_channels=3, **common)
        pattern = r"GFPGANv1Clean\.pth: a LaMa inpainting model \(image \+ mask input\)"
    else:
        d = ImageModelDescriptor(tiny, tiny.state_dict(), spandrel.architectures.Compact.CompactArch(), purpose="SR",
                                 scale=2, input_channels=4, output_channels=4, **common)
        pattern = r"a Compact model with 4-channel input and 4-channel output; srtool runs gray \(1\) and RGB \(3\) models"
    with pytest.raises(UserError, match=pattern):
        refuse_unless_sr(d, "GFPGANv1Clean.pth", scale_hint=1)
