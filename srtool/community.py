"""Community architectures through spandrel: detection from a state dict, never from a file.

srtool reads every weights file itself (:func:`srtool.models.export.read_state_dict`: safetensors or
``torch.load(weights_only=True)``) and hands spandrel only the resulting dict of tensors, so
spandrel's own file loaders (``torch.jit.load`` for ``.pt``, a pickle module that ends up with
``weights_only=False``) never run. ``import spandrel`` registers every architecture eagerly (seconds
and ~170 MiB), so it is imported here, lazily, only when a checkpoint is not one of srtool's layouts.

What spandrel builds is wrapped in :class:`CommunityNetwork`, which carries what the engine must
honour (:class:`srtool.engine.NetworkTraits`: size requirements, channels, half-precision support,
tile context). Checkpoints that are not single-image super-resolution (face restoration,
inpainting, 1x restoration without ``--scale 1``) are refused with one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .engine import DEFAULT_TILE_PAD, NetworkTraits
from .errors import UserError


@dataclass(frozen=True)
class Family:
    """One architecture srtool runs: upstream project, its code licence, typical files, tile context."""

    name: str
    upstream: str
    licence: str
    files: str = ""
    context: int = DEFAULT_TILE_PAD  # LR pixels of tile context (see engine: tile_pad)


# The spandrel wheel ships no licence files; these are the upstream projects' code licences (the
# licence of a *weights file* is set by whoever trained it: check the model's page). Context: LR
# pixels of tile context that keep tiled output within one uint8 level of untiled output; window-
# attention transformers mix information across whole windows every layer, so they get more.
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("ESRGAN", "xinntao/ESRGAN, xinntao/Real-ESRGAN (BasicSR RRDBNet)", "Apache-2.0 (ESRGAN), BSD-3-Clause (Real-ESRGAN)",
           "RRDB_ESRGAN_x4.pth, RealESRGAN_x4plus.pth, RealESRGAN_x2plus.pth, RealESRGAN_x4plus_anime_6B.pth, 4x-UltraSharp.pth"),
    Family("Compact", "xinntao/Real-ESRGAN (SRVGGNetCompact)", "BSD-3-Clause",
           "realesr-general-x4v3.pth, realesr-animevideov3.pth", context=24),
    Family("SwinIR", "JingyunLiang/SwinIR", "Apache-2.0", "001_classicalSR_DIV2K_s48w8_SwinIR-M_x4.pth, 002_lightweightSR_*", context=32),
    Family("Swin2SR", "mv-lab/swin2sr", "Apache-2.0", "Swin2SR_ClassicalSR_X4_64.pth", context=32),
    Family("HAT", "XPixelGroup/HAT", "MIT", "HAT_SRx4.pth, HAT-S_SRx4.pth", context=32),
    Family("DAT", "zhengchen1999/DAT", "Apache-2.0", "DAT_x4.pth, DAT_light_x4.pth", context=32),
    Family("OmniSR", "Francis0625/Omni-SR", "MIT", "OmniSR_X4_DIV2K.safetensors", context=32),
    Family("SPAN", "hongyuanyu/SPAN", "Apache-2.0", "spanx4_ch48.pth", context=16),
    Family("RealCUGAN", "bilibili/ailab Real-CUGAN", "MIT", "up2x-latest-no-denoise.pth", context=24),
    Family("RCAN", "yulunzhang/RCAN", "see upstream repository", "RCAN_BIX4.pt", context=16),
]}
SRTOOL_FAMILIES: list[Family] = [
    Family("RRDBNet (srtool)", "srtool; ESRGAN layouts mapped onto it", "MIT (srtool)", "srtool exports, --init-from"),
    Family("SRResNet (srtool)", "srtool; sgrvinod/a-PyTorch-Tutorial-to-Super-Resolution layout", "MIT (srtool); tutorial code MIT", "checkpoint_srresnet.pth"),
    Family("MSRResNet (srtool)", "srtool; XPixelGroup/BasicSR layout", "MIT (srtool); BasicSR Apache-2.0", "MSRResNet_x4.pth"),
    Family("EDSR (srtool)", "srtool; sanghyun-son/EDSR-PyTorch and BasicSR layouts", "MIT (srtool); EDSR-PyTorch MIT", "edsr_x4-4f62e9ef.pt, EDSR_Mx4_f64b16_*.pth"),
]
OTHER_LICENCE = "see the architecture's upstream repository (linked from spandrel's README)"


def family(arch_id: str) -> Family:
    return FAMILIES.get(arch_id) or Family(arch_id, "via spandrel", OTHER_LICENCE, context=32)


class CommunityNetwork(nn.Module):
    """A spandrel-built network as an engine network: takes and returns RGB (or gray) in [0, 1].

    The engine pads tiles to the size requirements itself (reflect, then crops), so this only runs
    the model (through the architecture's own call convention when it has one).
    """

    def __init__(self, descriptor: Any):
        super().__init__()
        self.model = descriptor.model
        self._call = getattr(descriptor, "_call_fn", None)
        self.arch_id = descriptor.architecture.id
        self.purpose = descriptor.purpose
        self.tags = list(descriptor.tags)
        self.scale = int(descriptor.scale)
        self.tiling = getattr(getattr(descriptor, "tiling", None), "name", "SUPPORTED").lower()  # spandrel's advice
        req = descriptor.size_requirements
        self.traits = NetworkTraits(
            in_channels=int(descriptor.input_channels), out_channels=int(descriptor.output_channels),
            multiple_of=int(req.multiple_of), minimum=int(req.minimum), square=bool(req.square),
            half=bool(descriptor.supports_half), bf16=bool(descriptor.supports_bfloat16),
            context=family(self.arch_id).context,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self.model, x) if self._call is not None else self.model(x)


def _spandrel():
    try:
        import spandrel  # noqa: PLC0415 -- lazy on purpose: importing it registers every architecture
    except ImportError:
        raise UserError("this checkpoint needs the 'spandrel' package (pip install 'spandrel>=0.4')") from None
    return spandrel


MAX_INDEX_GAP = 4  # a layer list may skip indices (Sequential activations), not reach past 4x its keys (+32)


def check_layer_indices(state: dict[str, torch.Tensor], path: str) -> None:
    """Refuse keys whose numbered layers skip far ahead (``body.0``, ``body.1``, ``body.8002``): spandrel
    reads an architecture's depth from the highest index and would build every layer up to it."""
    seen: dict[str, set[int]] = {}
    for key in state:
        parts = key.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                seen.setdefault(".".join(parts[:i]), set()).add(int(part))
    for group, indices in seen.items():
        if max(indices) + 1 > MAX_INDEX_GAP * len(indices) + 32:
            raise UserError(
                f"{path}: its numbered layers skip far ahead ({group}.N: {len(indices)} present, up to {group}.{max(indices)}); "
                "a damaged or hostile checkpoint (the architecture read from it would be built that deep)"
            )


class _WeightsOnMeta(TorchFunctionMode):
    """``torch.empty`` (how convolution, linear and norm layers allocate their weights) on the meta device,
    every other tensor as usual: for constructors that compute with tensors (attention masks, ``.item()``
    of drop-path rates), which ``torch.device("meta")`` breaks."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def describe(state: dict[str, torch.Tensor]):
    """spandrel's descriptor for ``state``, or None when no spandrel architecture recognises it.

    The architecture is first built without memory for its weights (on PyTorch's meta device, else with
    just the layers' weights there: :class:`_WeightsOnMeta`) and the tensors loaded into it: hyperparameters
    read from a few keys (a width from one tensor, a depth from the highest index) that the other tensors
    do not fit fail there, before a network that may be far larger than the file is allocated. An
    architecture that cannot be built either way (RCAN assigns tensors to its parameters) is built directly.
    Raises when an architecture recognises the keys but cannot build from them.
    """
    import warnings

    spandrel = _spandrel()
    for shapes_only in (lambda: torch.device("meta"), _WeightsOnMeta):
        try:
            with shapes_only(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "copying ... to a meta parameter is a no-op": that is the point
                spandrel.ModelLoader(device="meta").load_from_state_dict(dict(state))
            break
        except spandrel.UnsupportedModelError:
            return None
        except Exception as exc:
            if "Error(s) in loading state_dict" in str(exc):
                raise  # the tensors do not fit the architecture their keys name: nothing large was allocated
    return spandrel.ModelLoader(device="cpu").load_from_state_dict(state)


def load_community(state: dict[str, torch.Tensor], path: str, scale_hint: int | None) -> CommunityNetwork | None:
    """Build the spandrel network for ``state`` (None if unknown); refuse what is not single-image SR."""
    check_layer_indices(state, path)
    descriptor = describe(state)
    if descriptor is None:
        return None
    refuse_unless_sr(descriptor, path, scale_hint)
    arch = descriptor.architecture.id
    if scale_hint == 3 and descriptor.scale == 2 and arch == "ESRGAN":
        descriptor = _esrgan_as_x3(descriptor)
    return CommunityNetwork(descriptor).eval()


def refuse_unless_sr(descriptor, path: str, scale_hint: int | None) -> None:
    """One clear line for a checkpoint that is not single-image SR (or a 1x model without ``--scale 1``)."""
    arch = descriptor.architecture.id
    kind = type(descriptor).__name__
    if kind != "ImageModelDescriptor" or descriptor.purpose == "Inpainting":
        raise UserError(f"{path}: a {arch} inpainting model (image + mask input), not single-image super-resolution; srtool cannot run it")
    if descriptor.purpose == "FaceSR":
        raise UserError(f"{path}: a {arch} face-restoration model (it needs aligned face crops), not general super-resolution; srtool does not run it")
    if descriptor.scale == 1 and scale_hint != 1:
        raise UserError(
            f"{path}: a 1x {arch} restoration model ({descriptor.purpose}, e.g. denoise/deblur), not super-resolution; "
            "pass --scale 1 to run it as a 1x filter"
        )
    if descriptor.purpose not in ("SR", "Restoration"):
        raise UserError(f"{path}: a {arch} model for {descriptor.purpose}, not single-image super-resolution")
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels != descriptor.input_channels:
        raise UserError(
            f"{path}: a {arch} model with {descriptor.input_channels}-channel input and {descriptor.output_channels}-channel "
            "output; srtool runs gray (1) and RGB (3) models"
        )


def _esrgan_as_x3(descriptor):
    """An old-layout x3 ESRGAN has exactly the keys of an x2 one; ``--scale 3`` rebuilds it as x3."""
    from spandrel import ImageModelDescriptor
    from spandrel.architectures.ESRGAN import ESRGAN

    m = descriptor.model
    sd = m.state_dict()
    n_feats, in_nc = sd["model.0.weight"].shape[:2]
    blocks = {int(k.split(".")[3]) for k in sd if re.match(r"^model\.1\.sub\.\d+\.RDB1\.", k)}
    last = max((k for k in sd if re.match(r"^model\.\d+\.weight$", k)), key=lambda k: int(k.split(".")[1]))
    model = ESRGAN(in_nc=int(in_nc), out_nc=int(sd[last].shape[0]), num_filters=int(n_feats), num_blocks=len(blocks),
                   scale=3, plus=any(".conv1x1." in k for k in sd), shuffle_factor=m.shuffle_factor)
    model.load_state_dict(m.state_dict(), strict=True)
    return ImageModelDescriptor(
        model, model.state_dict(), architecture=descriptor.architecture, purpose="SR", tags=descriptor.tags,
        supports_half=descriptor.supports_half, supports_bfloat16=descriptor.supports_bfloat16, scale=3,
        input_channels=descriptor.input_channels, output_channels=descriptor.output_channels,
        size_requirements=descriptor.size_requirements,
    )


def describe_failure(state: dict[str, torch.Tensor], exc: BaseException) -> str:
    """One line for an architecture that recognised the keys but failed to build from them."""
    spandrel = _spandrel()
    arch = next((a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures("detection") if a.detect(state)), "a known architecture")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = " ".join(lines[:3])[:300] or type(exc).__name__
    return f"looks like {arch} but its tensors do not fit that architecture ({detail})"
