"""Checkpoints of other projects: recognise the layout from key names, infer hyperparameters from shapes.

A checkpoint is read only through :func:`srtool.models.export.read_state_dict` (safetensors or
``torch.load(weights_only=True)``: a pickle that would run code, or a TorchScript archive, is
refused). Wrappers are peeled first (:func:`unwrap_state`): ``params_ema`` (preferred, the EMA
weights), ``params``, ``state_dict``, ``model``, ``net_g``...; prefixes such as ``module.``
(DataParallel) and ``model.`` (a Lightning module) are stripped. Then there is exactly one detection
path per family:

1. srtool's own detectors (:data:`LAYOUTS`), for layouts spandrel does not load; they never import
   spandrel: ``basicsr-msrresnet``, ``srtool-srresnet``, ``sgrvinod-srresnet`` (ImageNet-normalised
   input, tanh output, converted by :class:`RangeAdapter`), ``edsr-pytorch`` and ``basicsr-edsr``;
2. everything else goes to spandrel (:mod:`srtool.community`) as a dict of tensors. An ESRGAN/RRDBNet
   that srtool's own RRDBNet can represent (any growth, scale 2/3/4/8, no pixel-unshuffle input, no
   ESRGAN+ 1x1 convs) is mapped onto srtool's RRDBNet (:func:`rrdbnet_state`), so ``train
   --init-from`` gets srtool's state dict and the CPU fusion applies; every other architecture runs
   as spandrel built it. ESRGANs with a dense-block growth other than 32, which spandrel cannot
   build, take the same mapping directly.

A detector infers every hyperparameter from the keys and tensor shapes and loads strictly: a
missing or misshapen tensor is an error naming the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .models.export import read_state_dict
from .models.registry import build_network, generator_config_from_dict
from .models.vgg import IMAGENET_MEAN, IMAGENET_STD

StateDict = dict[str, torch.Tensor]


class CheckpointError(UserError):
    """A checkpoint that cannot be turned into a network (unknown layout, bad shapes)."""


# ------------------------------------------------------------------------------------------ helpers


# Where training code keeps the generator's weights: BasicSR (params_ema, preferred: the EMA weights the
# official inference scripts load; params), PyTorch Lightning/generic (state_dict, model_state_dict,
# model, net), BasicSR/ESRGAN training states (net_g, netG), srtool's own training checkpoints (ema, the
# weights srtool exports, before generator).
WRAPPERS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "ema", "generator", "model", "net_g",
            "netG", "net")
# Prefixes a wrapper module adds to every key: DataParallel/DDP, a Lightning module's attribute.
PREFIXES = ("module.", "model.", "net_g.", "netG.", "generator.")


def unwrap_state(obj: Any) -> StateDict:
    """Peel wrappers (:data:`WRAPPERS`, and a dict holding just one dict) and common key prefixes
    (:data:`PREFIXES`); keep the tensors.

    ``model.`` is an ESRGAN 2018 checkpoint's own first name (``model.0.weight``): it is only stripped
    while no key would then start with a digit (a Sequential's index), so a Lightning
    ``model.model.0.weight`` loses one ``model.`` and the bare file none.
    """
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPERS if _holds_tensors(obj.get(k))), None)
        if inner is None and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            inner = next(iter(obj.values()))
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        return {}
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    stripped = True
    while state and stripped:
        stripped = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state) and not (
                prefix == "model." and any(k[len(prefix):][:1].isdigit() for k in state)
            ):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
                break
    return state


def _holds_tensors(obj: Any, depth: int = 3) -> bool:
    """A dict with a tensor in it (at most ``depth`` dicts down): a wrapper worth peeling."""
    return isinstance(obj, dict) and depth > 0 and any(
        isinstance(v, torch.Tensor) or _holds_tensors(v, depth - 1) for v in obj.values())


def _indices(state: StateDict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state for m in [rx.match(k)] if m})


def _shape(state: StateDict, key: str, path: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{path}: expected tensor {key!r} is missing")
    return tuple(state[key].shape)


def _rename(state: StateDict, rules: list[tuple[str, str]]) -> StateDict:
    """Apply the first matching (regex, replacement) rule to each key; unmatched keys are kept."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out = {}
    for key, value in state.items():
        for rx, repl in compiled:
            new, n = rx.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _load(network: nn.Module, state: StateDict, path: str, layout: str) -> nn.Module:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{path}: looks like {layout} but the tensors do not fit ({' '.join(lines[1:3])[:300]})") from None
    return network.eval()


def _build_loaded(config: dict, state: StateDict, path: str, layout: str) -> nn.Module:
    """srtool's network for ``config`` with ``state`` loaded strictly. The hyperparameters come from a few
    tensors (widths) and key counts (depth); the others are checked against them on PyTorch's meta device
    first (shapes only), so tensors that do not fit never cost the memory of the network they imply."""
    import warnings

    cfg = generator_config_from_dict(config, source=path)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying ... to a meta parameter is a no-op": only shapes are checked
        _load(build_network(cfg), state, path, layout)
    return _load(build_network(cfg), state, path, layout)


def _scale_from_stages(stages: int, factor: int = 2, scale_hint: int | None = None) -> int:
    if stages == 1 and scale_hint == 3:
        return 3
    return factor**stages


# ------------------------------------------------------------------------------------ RRDB layouts

ESRGAN_MARKERS = (
    ("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"),  # ESRGAN 2018 ("old") layout; spandrel's too
    ("conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight"),  # ESRGAN's later ("new") layout
    ("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight"),  # BasicSR / Real-ESRGAN / srtool
)


def is_esrgan_layout(state: StateDict) -> bool:
    return any(all(k in state for k in keys) for keys in ESRGAN_MARKERS)


def rrdbnet_state(state: StateDict, path: str) -> StateDict:
    """Any ESRGAN/RRDBNet layout renamed to srtool's RRDBNet names (BasicSR's: conv_first, body.N.rdbK...)."""
    if "RRDB_trunk.0.RDB1.conv1.weight" in state:
        return _rename(state, [
            (r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."),
            (r"^trunk_conv\.", "conv_body."),
            (r"^upconv(\d+)\.", r"conv_up\1."),
            (r"^HRconv\.", "conv_hr."),
        ])
    if "model.0.weight" not in state:
        return state
    trunk = len(_indices(state, r"^model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$"))  # conv after the last RRDB
    tail = [i for i in _indices(state, r"^model\.(\d+)\.weight$") if i >= 2]
    if len(tail) < 3:
        raise CheckpointError(f"{path}: ESRGAN layout without upsampling/output convs (found model.{tail})")
    names = {i: f"conv_up{n}" for n, i in enumerate(tail[:-2], start=1)}
    names[tail[-2]], names[tail[-1]] = "conv_hr", "conv_last"
    rules = [
        (r"^model\.0\.", "conv_first."),
        (rf"^model\.1\.sub\.{trunk}\.", "conv_body."),
        (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
    ] + [(rf"^model\.{i}\.", f"{name}.") for i, name in names.items()]
    return _rename(state, rules)


def srtool_rrdbnet(state: StateDict, path: str, scale_hint: int | None) -> tuple[nn.Module, dict] | None:
    """srtool's RRDBNet for an ESRGAN-family state dict, or None when RRDBNet cannot represent it
    (pixel-unshuffle input, ESRGAN+ 1x1 convs, 1x, different in/out channels)."""
    if any(".conv1x1." in k for k in state):
        return None
    if "model.0.weight" in state and len([i for i in _indices(state, r"^model\.(\d+)\.weight$") if i >= 2]) < 3:
        return None  # 1x: no upsampling stage
    state = rrdbnet_state(state, path)
    n_feats, in_ch = _shape(state, "conv_first.weight", path)[:2]
    out_ch = _shape(state, "conv_last.weight", path)[0]
    stages = len(_indices(state, r"^conv_up(\d+)\.weight$"))
    if stages == 0 or in_ch != out_ch or in_ch not in (1, 3):
        return None
    config = {
        "arch": "rrdbnet", "scale": _scale_from_stages(stages, 2, scale_hint), "in_channels": in_ch,
        "out_channels": out_ch, "n_feats": n_feats,
        "n_blocks": len(_indices(state, r"^body\.(\d+)\.rdb1\.conv1\.weight$")),
        "growth": _shape(state, "body.0.rdb1.conv1.weight", path)[0],
    }
    if config["scale"] not in (2, 3, 4, 8):
        return None
    return _build_loaded(config, state, path, "ESRGAN/RRDBNet"), config


# ----------------------------------------------------------------------------------- SRResNet family


class BasicSRMSRResNet:
    name = "basicsr-msrresnet"
    description = "BasicSR MSRResNet (conv_first, body.N.conv1/conv2, upconv1, upconv2, conv_hr, conv_last)"

    def matches(self, state: StateDict) -> bool:
        return "conv_first.weight" in state and "upconv1.weight" in state and (
            "body.0.conv1.weight" in state or "recon_trunk.0.conv1.weight" in state
        )

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        state = _rename(state, [(r"^recon_trunk\.", "body."), (r"^HRconv\.", "conv_hr.")])
        n_feats, in_ch = _shape(state, "conv_first.weight", path)[:2]
        if "upconv2.weight" in state:
            scale = 4
        else:
            scale = math.isqrt(_shape(state, "upconv1.weight", path)[0] // n_feats)
        config = {
            "arch": "msrresnet", "scale": scale, "in_channels": in_ch,
            "out_channels": _shape(state, "conv_last.weight", path)[0], "n_feats": n_feats,
            "n_blocks": len(_indices(state, r"^body\.(\d+)\.conv1\.weight$")),
        }
        return _build_loaded(config, state, path, self.name), config


def _build_srresnet(state: StateDict, path: str, layout: str) -> tuple[nn.Module, dict]:
    """Build srtool's SRResNet from a state dict in srtool names."""
    n_feats, in_ch, head_k = _shape(state, "head.weight", path)[:3]
    stages = _indices(state, r"^upsample\.(\d+)\.conv\.weight$")
    factor = math.isqrt(_shape(state, "upsample.0.conv.weight", path)[0] // n_feats)
    config = {
        "arch": "srresnet", "scale": factor ** len(stages), "in_channels": in_ch,
        "out_channels": _shape(state, "tail.weight", path)[0], "n_feats": n_feats,
        "n_blocks": len(_indices(state, r"^body\.(\d+)\.conv1\.weight$")), "head_kernel": head_k,
        "tail_kernel": _shape(state, "tail.weight", path)[2], "batch_norm": "body.0.bn1.weight" in state,
        "trunk_batch_norm": "body_bn.weight" in state,
    }
    return _build_loaded(config, state, path, layout), config


class SRToolSRResNet:
    name = "srtool-srresnet"
    description = "SRResNet in srtool's names (head, body.N.conv1/bn1/conv2/bn2, body_conv, upsample.N.conv, tail)"

    def matches(self, state: StateDict) -> bool:
        return "head.weight" in state and "body.0.conv1.weight" in state and "upsample.0.conv.weight" in state

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        return _build_srresnet(state, path, self.name)


class RangeAdapter(nn.Module):
    """Runs a network trained on another value range, taking and returning RGB in [0, 1].

    ``input_mean``/``input_std``: the network saw ``(x - mean) / std`` (ImageNet statistics for the
    sgrvinod port). ``output_tanh``: the network's raw output goes through tanh onto [-1, 1], mapped
    back with ``(y + 1) / 2``. Both are per-pixel, so tiling is unaffected.
    """

    def __init__(self, network: nn.Module, input_mean, input_std, output_tanh: bool):
        super().__init__()
        self.network = network
        self.config = network.config
        self.output_tanh = output_tanh
        self.register_buffer("mean", torch.tensor(input_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(input_std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def scale(self) -> int:
        return self.network.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.network((x - self.mean) / self.std)
        return (torch.tanh(y) + 1) / 2 if self.output_tanh else y


class SgrvinodSRResNet:
    name = "sgrvinod-srresnet"
    description = (
        "SRResNet with BN, sgrvinod's PyTorch tutorial port (conv_block1.conv_block.0, "
        "residual_blocks.N.conv_block1.conv_block.0/1/2, subpixel_convolutional_blocks.N.conv/prelu, conv_block3); "
        "ImageNet-normalised input and tanh [-1, 1] output are converted"
    )

    def matches(self, state: StateDict) -> bool:
        return "conv_block1.conv_block.0.weight" in state and "residual_blocks.0.conv_block1.conv_block.0.weight" in state

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        renamed = _rename(state, [
            (r"^conv_block1\.conv_block\.0\.", "head."),
            (r"^conv_block1\.conv_block\.1\.", "head_act."),
            (r"^residual_blocks\.(\d+)\.conv_block1\.conv_block\.0\.", r"body.\1.conv1."),
            (r"^residual_blocks\.(\d+)\.conv_block1\.conv_block\.1\.", r"body.\1.bn1."),
            (r"^residual_blocks\.(\d+)\.conv_block1\.conv_block\.2\.", r"body.\1.act."),
            (r"^residual_blocks\.(\d+)\.conv_block2\.conv_block\.0\.", r"body.\1.conv2."),
            (r"^residual_blocks\.(\d+)\.conv_block2\.conv_block\.1\.", r"body.\1.bn2."),
            (r"^conv_block2\.conv_block\.0\.", "body_conv."),
            (r"^conv_block2\.conv_block\.1\.", "body_bn."),
            (r"^subpixel_convolutional_blocks\.(\d+)\.conv\.", r"upsample.\1.conv."),
            (r"^subpixel_convolutional_blocks\.(\d+)\.prelu\.", r"upsample.\1.act."),
            (r"^conv_block3\.conv_block\.0\.", "tail."),
        ])
        network, config = _build_srresnet(renamed, path, self.name)
        adapted = RangeAdapter(network, IMAGENET_MEAN, IMAGENET_STD, output_tanh=True)
        return adapted.eval(), {**config, "input": "imagenet-normalised", "output": "tanh [-1, 1]"}


# --------------------------------------------------------------------------------------------- EDSR


def _build_edsr(state: StateDict, path: str, layout: str, mean: torch.Tensor) -> tuple[nn.Module, dict]:
    """srtool's EDSR from a state dict in BasicSR names (plus the RGB mean, which BasicSR does not save)."""
    n_feats, in_ch = _shape(state, "conv_first.weight", path)[:2]
    n_blocks = len(_indices(state, r"^body\.(\d+)\.conv1\.weight$"))
    convs = _indices(state, r"^upsample\.(\d+)\.weight$")
    factor = math.isqrt(_shape(state, "upsample.0.weight", path)[0] // n_feats)
    # EDSR proper (32 blocks x 256 features) was trained with res_scale 0.1, the baseline with 1: the
    # checkpoint does not store it, the published configurations fix it.
    config = {
        "arch": "edsr", "scale": factor ** len(convs), "in_channels": in_ch,
        "out_channels": _shape(state, "conv_last.weight", path)[0], "n_feats": n_feats, "n_blocks": n_blocks,
        "res_scale": 0.1 if n_feats >= 256 else 1.0,
    }
    return _build_loaded(config, {**state, "mean": mean.reshape(1, -1, 1, 1).float()}, path, layout), config


class EDSRPyTorch:
    name = "edsr-pytorch"
    description = (
        "EDSR-PyTorch (sanghyun-son; sub_mean/add_mean, head.0, body.N.body.0/2, tail.0.K, tail.1), "
        "0-255 range and mean shift converted"
    )

    def matches(self, state: StateDict) -> bool:
        return all(k in state for k in ("sub_mean.weight", "add_mean.bias", "head.0.weight", "body.0.body.0.weight", "tail.1.weight"))

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        n_blocks = len(_indices(state, r"^body\.(\d+)\.body\.0\.weight$"))
        add_w, add_b = state["add_mean.weight"].flatten(1), state["add_mean.bias"]
        sub_w, sub_b = state["sub_mean.weight"].flatten(1), state["sub_mean.bias"]
        eye = torch.eye(add_w.shape[0], dtype=add_w.dtype)
        if not (torch.allclose(add_w, eye) and torch.allclose(sub_w, eye) and torch.allclose(sub_b, -add_b, atol=1e-4)):
            raise CheckpointError(f"{path}: EDSR-PyTorch mean shift with a non-unit std; srtool supports rgb_std = 1 (the published models)")
        renamed = _rename({k: v for k, v in state.items() if not k.startswith(("sub_mean.", "add_mean."))}, [
            (r"^head\.0\.", "conv_first."),
            (rf"^body\.{n_blocks}\.", "conv_after_body."),
            (r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1."),
            (r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2."),
            (r"^tail\.0\.(\d+)\.", r"upsample.\1."),
            (r"^tail\.1\.", "conv_last."),
        ])
        return _build_edsr(renamed, path, self.name, add_b / 255.0)


class BasicSREDSR:
    name = "basicsr-edsr"
    description = "BasicSR EDSR (conv_first, body.N.conv1/conv2, conv_after_body, upsample.K, conv_last; DIV2K mean)"

    def matches(self, state: StateDict) -> bool:
        return "conv_first.weight" in state and "conv_after_body.weight" in state and "upsample.0.weight" in state \
            and "body.0.conv1.weight" in state

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        from .models.edsr import DIV2K_RGB_MEAN

        return _build_edsr(state, path, self.name, torch.tensor(DIV2K_RGB_MEAN))


LAYOUTS = [BasicSRMSRResNet(), SRToolSRResNet(), SgrvinodSRResNet(), EDSRPyTorch(), BasicSREDSR()]


def supported_layouts() -> str:
    return "\n".join(f"  - {layout.name}: {layout.description}" for layout in LAYOUTS)


def network_from_state(obj: Any, path: str = "checkpoint", scale_hint: int | None = None) -> tuple[nn.Module, dict]:
    """Detect the layout of an (unwrapped or wrapped) state dict and build the network (see module docstring)."""
    state = unwrap_state(obj)
    for layout in LAYOUTS:
        if layout.matches(state):
            network, hyper = layout.build(state, path, scale_hint)
            return network, {"layout": layout.name, "hyperparameters": hyper}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors (not a model checkpoint)")
    from .community import describe_failure, load_community

    try:
        community = load_community(state, path, scale_hint)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 -- an architecture matched the keys but could not build from them
        if is_esrgan_layout(state):  # e.g. growth 16: spandrel hard-codes 32
            built = srtool_rrdbnet(state, path, scale_hint)
            if built is not None:
                return built[0], {"layout": "ESRGAN/RRDBNet", "hyperparameters": built[1]}
        raise CheckpointError(f"{path}: {describe_failure(state, exc)}") from None
    if community is None:
        sample = ", ".join(sorted(state)[:4])
        raise CheckpointError(
            f"{path}: unrecognised checkpoint layout (keys start: {sample}). srtool loads its own exports, "
            "every single-image SR architecture spandrel knows (see `srtool models list`) and:\n" + supported_layouts()
        )
    if community.arch_id == "ESRGAN":
        built = srtool_rrdbnet(community.model.state_dict(), path, scale_hint)
        if built is not None:
            return built[0], {"layout": "ESRGAN/RRDBNet", "architecture": "ESRGAN", "tags": community.tags,
                              "hyperparameters": built[1]}
    return community, {"layout": f"spandrel {community.arch_id}", "architecture": community.arch_id,
                       "purpose": community.purpose, "tags": community.tags}


def load_checkpoint(path: str | Path, scale_hint: int | None = None) -> tuple[nn.Module, dict]:
    """Read a checkpoint safely (see :func:`read_state_dict`) and build its network; see the module docstring."""
    from .models.integrity import validate_state_dict

    state = read_state_dict(path)
    validate_state_dict(state, path)  # NaN/inf, empty tensors, malformed convs: before layout detection
    return network_from_state(state, str(path), scale_hint)
