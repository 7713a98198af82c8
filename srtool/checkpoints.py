"""Third-party checkpoints: recognise the layout from key names, infer hyperparameters from shapes.

A checkpoint is read only through :func:`srtool.models.export.read_state_dict` (safetensors or
``torch.load(weights_only=True)``: a pickle that would run code is refused). Wrappers are peeled
first: ``params_ema`` (preferred, the EMA weights), ``params``, ``state_dict``; a ``module.`` prefix
(DataParallel) is stripped. Then each detector in :data:`LAYOUTS`, in order, checks its marker keys;
the first that matches renames the keys to srtool's module names, infers every hyperparameter
(blocks, channels, growth, scale) from the keys and tensor shapes, builds the srtool network and
loads it strictly. Nothing is guessed silently: a missing or misshapen tensor is an error naming
the file.

Supported layouts (one detector class each):

* ``esrgan-old``: the official ESRGAN x4 files of 2018 (``model.0``, ``model.1.sub.N.RDB1.conv1.0``,
  ``model.1.sub.B`` the trunk conv, then ``model.3``, ``model.6``, ``model.8``, ``model.10``);
* ``esrgan-new``: ESRGAN's later layout (``conv_first``, ``RRDB_trunk.N.RDB1.conv1``, ``trunk_conv``,
  ``upconv1``, ``upconv2``, ``HRconv``, ``conv_last``);
* ``basicsr-rrdbnet``: BasicSR / Real-ESRGAN RRDBNet (``conv_first``, ``body.N.rdb1.conv1``,
  ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``; also srtool's own RRDBNet);
* ``basicsr-msrresnet``: BasicSR MSRResNet (``conv_first``, ``body.N.conv1``, ``upconv1``,
  ``upconv2``, ``conv_hr``, ``conv_last``; the older ``recon_trunk``/``HRconv`` names too);
* ``srtool-srresnet``: srtool's SRResNet names (``head``, ``body.N.conv1``/``bn1``, ``upsample.N.conv``);
* ``sgrvinod-srresnet``: the popular PyTorch tutorial port of SRResNet with BatchNorm
  (``conv_block1.conv_block.0``, ``residual_blocks.N.conv_block1.conv_block.0/1/2``,
  ``subpixel_convolutional_blocks.N.conv/prelu``, ``conv_block3.conv_block.0``). That port feeds the
  network ImageNet-normalised input and ends in tanh on [-1, 1]; :class:`RangeAdapter` applies both
  conversions explicitly, so the model still takes and returns [0, 1].
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


def unwrap_state(obj: Any) -> StateDict:
    """Peel ``params_ema`` / ``params`` / ``state_dict`` wrappers and ``module.`` prefixes; keep tensors."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        for key in ("params_ema", "params", "state_dict", "model_state_dict", "generator"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, dict):
        return {}
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


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


def _scale_from_stages(stages: int, factor: int = 2, scale_hint: int | None = None) -> int:
    if stages == 1 and scale_hint == 3:
        return 3
    return factor**stages


# ------------------------------------------------------------------------------------ RRDB layouts


def _build_rrdbnet(state: StateDict, path: str, layout: str, scale_hint: int | None) -> tuple[nn.Module, dict]:
    """Build srtool's RRDBNet from a state dict already in BasicSR names."""
    n_feats, in_ch = _shape(state, "conv_first.weight", path)[:2]
    if in_ch in (12, 48):
        raise CheckpointError(
            f"{path}: a Real-ESRGAN model with pixel-unshuffle input ({in_ch} input channels, the x2plus/x1 "
            "variants); srtool supports the x4 RRDBNet layout only"
        )
    growth = _shape(state, "body.0.rdb1.conv1.weight", path)[0]
    blocks = _indices(state, r"^body\.(\d+)\.rdb1\.conv1\.weight$")
    stages = len(_indices(state, r"^conv_up(\d+)\.weight$"))
    config = {
        "arch": "rrdbnet", "scale": _scale_from_stages(stages, 2, scale_hint), "in_channels": in_ch,
        "out_channels": _shape(state, "conv_last.weight", path)[0], "n_feats": n_feats,
        "n_blocks": len(blocks), "growth": growth,
    }
    net = build_network(generator_config_from_dict(config, source=path))
    return _load(net, state, path, layout), config


class BasicSRRRDBNet:
    name = "basicsr-rrdbnet"
    description = "BasicSR / Real-ESRGAN RRDBNet (conv_first, body.N.rdb1.conv1, conv_body, conv_up1, conv_hr, conv_last)"

    def matches(self, state: StateDict) -> bool:
        return "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state and "conv_body.weight" in state

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        return _build_rrdbnet(state, path, self.name, scale_hint)


class ESRGANNew:
    name = "esrgan-new"
    description = "ESRGAN new layout (conv_first, RRDB_trunk.N.RDB1.conv1, trunk_conv, upconv1, upconv2, HRconv, conv_last)"

    def matches(self, state: StateDict) -> bool:
        return "conv_first.weight" in state and "RRDB_trunk.0.RDB1.conv1.weight" in state

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        renamed = _rename(state, [
            (r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."),
            (r"^trunk_conv\.", "conv_body."),
            (r"^upconv(\d+)\.", r"conv_up\1."),
            (r"^HRconv\.", "conv_hr."),
        ])
        return _build_rrdbnet(renamed, path, self.name, scale_hint)


class ESRGANOld:
    name = "esrgan-old"
    description = "ESRGAN old layout, the official 2018 x4 files (model.0, model.1.sub.N.RDB1.conv1.0, model.3 ... model.10)"

    def matches(self, state: StateDict) -> bool:
        return "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state

    def build(self, state: StateDict, path: str, scale_hint: int | None):
        blocks = _indices(state, r"^model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$")
        trunk = len(blocks)  # the conv closing the trunk is the sub-module after the last RRDB
        tail = [i for i in _indices(state, r"^model\.(\d+)\.weight$") if i >= 2]
        if len(tail) < 3:
            raise CheckpointError(f"{path}: esrgan-old layout without upsampling/output convs (found model.{tail})")
        names = {i: f"conv_up{n}" for n, i in enumerate(tail[:-2], start=1)}
        names[tail[-2]], names[tail[-1]] = "conv_hr", "conv_last"
        rules = [
            (r"^model\.0\.", "conv_first."),
            (rf"^model\.1\.sub\.{trunk}\.", "conv_body."),
            (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
        ] + [(rf"^model\.{i}\.", f"{name}.") for i, name in names.items()]
        return _build_rrdbnet(_rename(state, rules), path, self.name, scale_hint)


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
        net = build_network(generator_config_from_dict(config, source=path))
        return _load(net, state, path, self.name), config


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
    net = build_network(generator_config_from_dict(config, source=path))
    return _load(net, state, path, layout), config


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


LAYOUTS = [ESRGANOld(), ESRGANNew(), BasicSRRRDBNet(), BasicSRMSRResNet(), SRToolSRResNet(), SgrvinodSRResNet()]


def supported_layouts() -> str:
    return "\n".join(f"  - {layout.name}: {layout.description}" for layout in LAYOUTS)


def network_from_state(obj: Any, path: str = "checkpoint", scale_hint: int | None = None) -> tuple[nn.Module, dict]:
    """Detect the layout of an (unwrapped or wrapped) state dict and build the srtool network."""
    state = unwrap_state(obj)
    for layout in LAYOUTS:
        if layout.matches(state):
            network, hyper = layout.build(state, path, scale_hint)
            return network, {"layout": layout.name, "hyperparameters": hyper}
    sample = ", ".join(sorted(state)[:4]) or "no tensors"
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (keys start: {sample}). Supported layouts:\n"
        f"  - srtool export: .safetensors with srtool metadata (srtool train writes them)\n{supported_layouts()}"
    )


def load_checkpoint(path: str | Path, scale_hint: int | None = None) -> tuple[nn.Module, dict]:
    """Read a checkpoint safely (see :func:`read_state_dict`) and build its network; see the module docstring."""
    from .models.integrity import validate_state_dict

    state = read_state_dict(path)
    validate_state_dict(state, path)  # NaN/inf, empty tensors, malformed convs: before layout detection
    return network_from_state(state, str(path), scale_hint)
