"""The one tiled inference engine: :class:`SRModel` and :func:`upscale_array`.

Every network forward of eval, train's validation and upscale goes through :func:`upscale_array`:

* **Tiles.** The LR image is cut into a grid of at most ``tile`` x ``tile`` cores (balanced: equal
  sizes, no thin remainder), each read with ``tile_pad`` pixels of context around it (clipped at the
  image border). When tiles are batched (GPU) all windows get the same shape: border windows shift
  inwards instead of shrinking. ``tile=None``: a tile sized by the network on the CPU (:func:`cpu_cache_tile`),
  the largest tile the free memory allows on GPUs.
* **Blending.** Neighbouring tiles cross-fade with a raised-cosine ramp ``tile_pad`` LR pixels wide,
  centred on the core boundary, so no pixel with less than ``tile_pad / 2`` pixels of context gets any
  weight and there is no seam. The 1-D weights of a tile are 1 on every side that faces the image
  border (nothing to blend with there), so borders are never darkened; the weights of overlapping
  tiles sum to one. Tiles are folded into a running *weighted mean* (``mean += w / W * (y - mean)``):
  where overlapping tiles agree bit for bit the mean is exactly their value, which is why, once
  ``tile_pad / 2`` covers the network's receptive field, tiled output equals untiled output pixel
  for pixel (tested).
* **Memory.** The uint8/uint16 output canvas is the only image-sized buffer. Tile outputs are
  accumulated in float32 in a strip one tile row high; rows no later tile can touch are converted and
  written to the canvas, and the strip moves on. On very wide images tiles get shorter so the strip
  stays within ``STRIP_BUDGET`` (or half the canvas). Peak memory is bounded by the tile and the
  canvas, never by a float copy of the image.
* **Devices and precision.** ``device="auto"`` picks cuda, then mps, then cpu. ``precision="auto"``
  is fp16 on CUDA and fp32 elsewhere; bf16 is opt-in on CPUs (fast with AVX512-BF16/AMX). On CPU the
  network runs channels_last, which lets oneDNN skip a layout reorder around every convolution. On an
  out-of-memory error the image is restarted with half the batch, then half the tile.
* **Channels.** Grayscale stays single-channel (replicated to RGB for the network, the three output
  channels averaged back). Alpha (LA, RGBA): colour is premultiplied by alpha before SR and divided by
  the upscaled alpha afterwards, so transparent pixels' colour cannot bleed into halos; alpha is
  upscaled by the network (``alpha="model"``) or by MATLAB bicubic (``alpha="bicubic"``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .devices import NET_DTYPES, available_memory
from .errors import UserError
from .memory import release_freed_memory, retain_freed_memory
from .model_files import ALPHA_MODES, MIN_TILE
from .resize import imresize

RELEASE_AFTER_OUTPUT_BYTES = 64 << 20  # see srtool.memory.release_freed_memory
# In a batch of image lanes (srtool upscale, srtool eval on the CPU), an image with an output this large
# runs alone on every core, so that its memory never adds to another image's.
LARGE_OUTPUT_BYTES = RELEASE_AFTER_OUTPUT_BYTES
DEFAULT_TILE_PAD = 10  # LR pixels of context per tile side (the cross-fade is half of it on each side)
CONTEXT_TILE_FACTOR = 24  # CPU tiles are at least this many times the tile context (see cpu_cache_tile)
CPU_FEATURE_MAP_BYTES = 20 << 20  # one fp32 64-channel 276x276 window feature map (256-px tiles + pad)
STRIP_BUDGET = 256 << 20  # bytes of float32 accumulation strip before tiles are made shorter
_PEAKS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}




@dataclass(frozen=True)
class NetworkTraits:
    """What the engine must honour for one architecture.

    Size requirements (spandrel's ``size_requirements``): every network input's height and width are
    a multiple of ``multiple_of`` and at least ``minimum`` (and equal, when ``square``); the engine
    pads each tile on the bottom/right by reflection (replication beyond what reflection can reach),
    runs the network and crops the output. ``in_channels``/``out_channels``: 1 (gray) or 3 (RGB).
    ``half``/``bf16``: whether the architecture computes correctly in fp16/bf16 (``precision auto``
    never picks one it does not support). ``context``: LR pixels of tile context for its receptive field.
    """

    in_channels: int = 3
    out_channels: int = 3
    multiple_of: int = 1
    minimum: int = 0
    square: bool = False
    half: bool = True
    bf16: bool = True
    context: int = DEFAULT_TILE_PAD

    def padding(self, h: int, w: int) -> tuple[int, int]:
        """(pad_h, pad_w) that make an h x w input satisfy the size requirements."""
        def up(n: int) -> int:
            n = max(n, self.minimum)
            return -(-n // self.multiple_of) * self.multiple_of

        th, tw = up(h), up(w)
        if self.square:
            th = tw = max(th, tw)
        return th - h, tw - w


def network_traits(network: nn.Module | None) -> NetworkTraits:
    """The traits a network declares (community networks), else those of a plain srtool network."""
    traits = getattr(network, "traits", None)
    if isinstance(traits, NetworkTraits):
        return traits
    channels = _first_conv_channels(network) if network is not None else 3
    return NetworkTraits(in_channels=channels, out_channels=channels)


def pad_to_requirements(x: torch.Tensor, traits: NetworkTraits) -> torch.Tensor:
    """Pad an (n, c, h, w) batch on the bottom/right to the size requirements (reflect, then replicate)."""
    import torch.nn.functional as F

    ph, pw = traits.padding(x.shape[-2], x.shape[-1])
    if not (ph or pw):
        return x
    rh, rw = min(ph, x.shape[-2] - 1), min(pw, x.shape[-1] - 1)
    if rh or rw:
        x = F.pad(x, (0, rw, 0, rh), mode="reflect")
    if ph - rh or pw - rw:
        x = F.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")
    return x


@dataclass
class SRModel:
    """A ready-to-run upscaler: a network (or the MATLAB bicubic baseline) plus its identity.

    ``tile`` (LR pixels, None = automatic, see :func:`auto_tile`; 0 = no tiling), ``tile_pad`` and ``alpha`` set how
    :func:`upscale_array` runs it; ``precision`` is the resolved one (fp32, fp16 or bf16).
    """

    name: str
    scale: int
    network: nn.Module | None = field(default=None, repr=False)  # a module tree: pages when printed
    identity: str = ""  # sha256 of the weights file, or "bicubic"
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # the export's metadata (its preset TOML...)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    tile: int | None = None
    tile_pad: int = DEFAULT_TILE_PAD
    alpha: str = "model"
    traits: NetworkTraits | None = None  # None: derived from the network

    def __post_init__(self) -> None:
        if self.traits is None and self.network is not None:
            self.traits = network_traits(self.network)

    @property
    def is_bicubic(self) -> bool:
        return self.network is None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Upscale an (H, W[, C]) uint8/uint16/float array; returns the same dtype."""
        return upscale_array(self, image)


# ------------------------------------------------------------------------------------- tile geometry


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis: its core [core0, core1) and the window [win0, win1) the network sees."""

    core0: int
    core1: int
    win0: int
    win1: int


def axis_tiles(length: int, tile: int, pad: int, uniform: bool = False) -> list[AxisTile]:
    """Balanced tiling of one axis: n = ceil(length / tile) equal cores with ``pad`` of context.

    Windows are clipped at the image border (no wasted context there). With ``uniform`` every window
    has the same size instead (border windows shift inwards), so tiles stack into one GPU batch.
    """
    n = max(1, math.ceil(length / max(tile, 1)))
    bounds = [round(k * length / n) for k in range(n + 1)]
    size = min(length, max(b1 - b0 for b0, b1 in zip(bounds, bounds[1:])) + 2 * pad)
    tiles = []
    for b0, b1 in zip(bounds, bounds[1:]):
        if uniform:
            win0 = min(max(b0 - pad, 0), length - size)
            tiles.append(AxisTile(b0, b1, win0, win0 + size))
        else:
            tiles.append(AxisTile(b0, b1, max(b0 - pad, 0), min(b1 + pad, length)))
    return tiles


def _ramp(t: np.ndarray) -> np.ndarray:
    """Raised cosine from 0 (t <= 0) to 1 (t >= 1)."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def axis_weights(tiles: list[AxisTile], k: int, scale: int, half_width: float) -> np.ndarray:
    """Blend weights of tile ``k`` over its window in output pixels (float64).

    Output pixel x sits at LR coordinate u = (x + 0.5) / scale. Across each inner core boundary b
    the weight ramps over [b - half_width, b + half_width]; sides facing the image border stay 1.
    """
    t = tiles[k]
    u = (np.arange(t.win0 * scale, t.win1 * scale, dtype=np.float64) + 0.5) / scale
    w = np.ones_like(u)
    if k > 0:
        b = tiles[k].core0
        w *= _ramp((u - (b - half_width)) / (2 * half_width)) if half_width > 0 else (u >= b)
    if k < len(tiles) - 1:
        b = tiles[k].core1
        w *= 1.0 - (_ramp((u - (b - half_width)) / (2 * half_width)) if half_width > 0 else (u >= b))
    return w


def blend_half_width(tiles: list[AxisTile], pad: int) -> float:
    """Half-width of the cross-fade: pad / 2, but never wider than half the smallest core."""
    smallest = min(t.core1 - t.core0 for t in tiles)
    return min(pad / 2.0, smallest / 2.0)


# ------------------------------------------------------------------------------------ memory sizing


def _network_feats(network: nn.Module) -> tuple[int, int]:
    config = getattr(network, "config", None) or getattr(getattr(network, "network", None), "config", None)
    return int(getattr(config, "n_feats", 64)), int(getattr(config, "growth", 0))


def activation_bytes_per_pixel(network: nn.Module, scale: int, precision: str) -> int:
    """Rough peak activation bytes per LR pixel: the widest LR tensors plus a few HR feature maps."""
    feats, growth = _network_feats(network)
    elem = 4 if precision == "fp32" else 2
    return elem * ((feats + 4 * growth) * 4 + feats * scale * scale * 3) + 64 * scale * scale


def cpu_cache_tile(network: nn.Module, precision: str, pad: int) -> int:
    """The CPU tile whose window keeps one feature map within CPU_FEATURE_MAP_BYTES.

    Large windows outgrow the caches and hold gigabytes of activations (2.55 GB peak RSS for a
    500x480 input in one 512-pixel tile); small tiles recompute ``pad`` pixels of context per side and
    pay a thread barrier per layer call (128-pixel tiles cost the bundled model 1.45-1.7x the CPU time
    of 256 or 512). With 64 features in fp32 this gives 256-pixel tiles, at 512's CPU time within the
    noise and half its peak memory (304 in bf16); see benchmarks/README.md, issue 13.
    It depends only on the network, never on free memory, so the same image is tiled the same way in
    every process (sharded runs give a single process's output).

    Architectures that need a wide context (``pad``: SwinIR, HAT, SPAN, Compact) get tiles of at least
    ``CONTEXT_TILE_FACTOR * pad`` (up to 512): each window recomputes ``pad`` pixels per side, so a
    cache-sized 208-px tile with 32 px of context would compute 1.7x the pixels of one untiled pass; at
    24 x pad it is at most ~1.17x (less at the image borders).
    """
    feats, _growth = _network_feats(network)
    # bf16 counts 3 bytes an element, not its 2: oneDNN's bf16 convolutions keep fp32 accumulators and
    # reorder buffers beside the bf16 maps. Measured (benchmarks/README.md, issue 13 round 9): the bundled
    # model's bf16 tiles of 256-352 px ran faster than the 384 px that 2 bytes gave (median time ratios
    # 0.79-0.93 over five runs), though they compute 2-4 % more pixels of context.
    elem = {"fp32": 4, "bf16": 3}.get(precision, 2)  # fp16 (CPU fp16 is rare): its 2 bytes, unmeasured
    window = int(math.sqrt(CPU_FEATURE_MAP_BYTES / (feats * elem)))
    cache_tile = (window - 2 * pad) // 16 * 16
    context_tile = -(-CONTEXT_TILE_FACTOR * pad // 16) * 16
    return max(MIN_TILE, min(512, max(cache_tile, context_tile)))


def auto_tile(model: SRModel) -> tuple[int, int]:
    """(tile, batch): GPU from free memory, up to 512 px x 16 tiles; CPU sized by the network (:func:`cpu_cache_tile`),
    one tile at a time, smaller only when free memory is short."""
    per_px = activation_bytes_per_pixel(model.network, model.scale, model.precision)
    free = available_memory(model.device)
    budget = free * 0.6 if model.device.type == "cuda" else min(free * 0.25, 4 << 30)
    fit = int(math.sqrt(max(budget, 0) / per_px)) - 2 * model.tile_pad
    tile = max(MIN_TILE, min(512, fit // 16 * 16))
    if model.device.type == "cpu":
        tile = min(tile, cpu_cache_tile(model.network, model.precision, model.tile_pad))
    return tile, gpu_batch(model, tile)


def gpu_batch(model: SRModel, tile: int) -> int:
    """Tiles per GPU call for ``tile`` (the automatic one or the user's ``--tile``): as many as fit in
    60 % of free memory, at most 16; 1 on the CPU (one cache-sized tile at a time)."""
    if model.device.type != "cuda":
        return 1
    per_px = activation_bytes_per_pixel(model.network, model.scale, model.precision)
    budget = available_memory(model.device) * 0.6
    return int(max(1, min(16, budget // (per_px * (tile + 2 * model.tile_pad) ** 2))))


# ------------------------------------------------------------------------------------- the engine


def _float_planes(image: np.ndarray) -> np.ndarray:
    peak = _PEAKS.get(image.dtype)
    arr = image.astype(np.float32)
    return arr / np.float32(peak) if peak else arr


def _finish(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Clamp to [0, 1]; integer types: scale, round half up, cast (multi-threaded through torch)."""
    peak = _PEAKS.get(np.dtype(dtype))
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).clamp(0.0, 1.0)
    if peak is None:
        return t.numpy().astype(dtype, copy=False)
    t.mul_(peak).add_(0.5).floor_()
    return t.to(torch.uint8).numpy() if peak == 255.0 else t.to(torch.int32).numpy().astype(np.uint16)


class _Plan:
    """How image channels map to network passes: colour group (+ alpha group) -> batch items."""

    def __init__(self, channels: int, alpha_mode: str, net_in: int, net_out: int):
        self.has_alpha = channels in (2, 4)
        self.colour = channels - 1 if self.has_alpha else channels
        self.alpha_by_model = self.has_alpha and alpha_mode == "model"
        self.net_in, self.net_out = net_in, net_out
        self.acc_channels = self.colour + (1 if self.alpha_by_model else 0)
        for c in (self.colour, 1 if self.alpha_by_model else self.colour):
            if not (c == net_in or (c == 1 and net_in == 3) or (c == 3 and net_in == 1)):
                raise UserError(f"the model takes {net_in}-channel input; cannot feed a {c}-channel image")

    def _to_net(self, planes: torch.Tensor) -> torch.Tensor:  # (n, c, h, w) -> network input
        c = planes.shape[1]
        if c == self.net_in:
            return planes
        if c == 1:
            return planes.expand(-1, self.net_in, -1, -1)
        return planes.reshape(-1, 1, *planes.shape[2:])  # 3 colour channels as three 1-channel items

    def _from_net(self, out: torch.Tensor, c: int, n: int) -> torch.Tensor:
        if self.net_in == 1 and c == 3:
            return out.reshape(n, 3, *out.shape[2:])
        if c == 1 and out.shape[1] != 1:  # gray through an RGB network: average the clamped channels
            return out.float().clamp(0, 1).mean(dim=1, keepdim=True)
        return out

    def batch(self, tiles: list[np.ndarray]) -> tuple[torch.Tensor, int]:
        """Float (h, w, C) tiles (premultiplied) -> one network batch, plus the tile count."""
        arr = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)  # (n, C, h, w)
        groups = [self._to_net(arr[:, : self.colour])]
        if self.alpha_by_model:
            groups.append(self._to_net(arr[:, self.colour :]))
        return torch.cat(groups, 0), len(tiles)

    def _items(self, c: int) -> int:
        return 3 if (self.net_in == 1 and c == 3) else 1

    def unbatch(self, out: torch.Tensor, n: int) -> np.ndarray:
        """Network output batch -> (n, H, W, acc_channels) float32 on the CPU."""
        k = n * self._items(self.colour)
        parts = [self._from_net(out[:k], self.colour, n)]
        if self.alpha_by_model:
            parts.append(self._from_net(out[k:], 1, n))
        return torch.cat(parts, 1).permute(0, 2, 3, 1).float().cpu().numpy()


class ModelOutputError(UserError):
    """A network returned something that is not an image of the promised size (shape, scale, NaN/inf)."""


def check_network_output(y: Any, x: torch.Tensor, scale: int) -> None:
    """Refuse an output batch the engine would otherwise crop, broadcast or round into a plausible image:
    it must be (n, C_in, h*scale, w*scale) for an (n, C_in, h, w) input, and finite."""
    n, c, h, w = x.shape
    expected = (n, c, h * scale, w * scale)
    if not isinstance(y, torch.Tensor):
        raise ModelOutputError(f"the network returned {type(y).__name__}, not a tensor")
    if tuple(y.shape) != expected:
        got = tuple(y.shape)
        if len(got) == 4 and got[1] != c:
            what = f"{got[1]} channels instead of {c}"
        elif len(got) == 4 and got[2:] != expected[2:]:
            what = f"size {got[3]}x{got[2]} for a {w}x{h} input (x{got[3] / w:g}), not x{scale}"
        else:
            what = f"shape {got} instead of {expected}"
        raise ModelOutputError(f"the network's output has {what}")
    if not y.is_floating_point():
        raise ModelOutputError(f"the network returned {y.dtype} values, not floating point")
    if not bool(torch.isfinite(y).all()):
        raise ModelOutputError("the network's output holds NaN or infinite values")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower()
    )


class Cancelled(Exception):
    """Raised by :func:`upscale_array` between tiles once its ``cancel`` event is set."""


def upscale_array(model: SRModel, image: np.ndarray, alpha: str | None = None,
                  cancel: threading.Event | None = None,
                  progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Upscale an (H, W) or (H, W, C) array (C = 1..4; uint8, uint16 or float in [0, 1]) by ``model``.

    Returns the same dtype and channel count (float results in [0, 1]); what else is accepted or
    refused: :func:`checked_image`. The bicubic model is MATLAB ``imresize`` on all
    channels (integer images rounded after each pass, exactly as MATLAB does). ``cancel``: an event
    checked before every tile; once it is set the call raises :class:`Cancelled` (how a batch running
    in threads stops on Ctrl-C, which only the main thread receives). ``progress``: called in the
    caller's thread after every tile (network call) with the fraction of the image done, so that a
    single large image moves a progress bar; after an out-of-memory retry it starts again from 0.
    """
    check_model(model)
    image = checked_image(image)
    alpha_mode = alpha or model.alpha
    if alpha_mode not in ALPHA_MODES:
        raise UserError(f"--alpha: unknown mode {alpha_mode!r}; use one of {', '.join(ALPHA_MODES)}")
    if model.is_bicubic:
        out = imresize(image, float(model.scale))
        if progress is not None:
            progress(1.0)
        # MATLAB's bicubic overshoots at edges; a float image in [0, 1] stays in [0, 1], as a network's does
        return np.clip(out, 0.0, 1.0, out=out) if out.dtype.kind == "f" else out
    if model.device.type == "cpu":
        retain_freed_memory()  # layer outputs reuse freed pages instead of faulting in new ones
    squeeze = image.ndim == 2
    img3 = image[..., None] if squeeze else image
    if model.tile == 0:  # no tiling: one tile the image's size (very wide images still get row strips within
        # STRIP_BUDGET; halved like any tile on out-of-memory)
        tile, batch = max(img3.shape[:2]), 1
    else:
        tile, batch = (model.tile, gpu_batch(model, model.tile)) if model.tile else auto_tile(model)
    while True:
        try:
            out = _run_tiled(model, img3, alpha_mode, tile, batch, cancel, progress)
            break
        except Exception as exc:  # noqa: BLE001 -- only out-of-memory is retried
            if not _is_oom(exc):
                raise
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch > 1:
                batch //= 2
            elif tile > MIN_TILE:
                tile = max(MIN_TILE, tile // 2)
            else:
                raise UserError(
                    f"out of memory even with {MIN_TILE}-pixel tiles on {model.device}; "
                    "free memory or use --device cpu"
                ) from None
            print(f"notice: out of memory; retrying with tile {tile}, batch {batch}", file=sys.stderr)
    if model.device.type == "cpu" and out.nbytes >= RELEASE_AFTER_OUTPUT_BYTES:
        release_freed_memory()  # a large image's free pages go back before its output is encoded
    return out[..., 0] if squeeze else out


def check_model(model: Any) -> None:
    """A :class:`UserError` unless ``model`` is an :class:`SRModel` (a spec string gets load_model's hint)."""
    if isinstance(model, SRModel):
        return
    if isinstance(model, (str, os.PathLike)):
        hint = f"; load it first: srtool.load_model({str(model)!r})"
    elif isinstance(model, np.ndarray) or hasattr(model, "__array_interface__"):
        hint = "; the image came first? call upscale_image(model, image)"
    else:
        hint = ""
    raise UserError(f"model: expected an srtool model (srtool.load_model(...)), got {type(model).__name__}{hint}")


FLOAT_SLACK = 0.5  # float pixels beyond [-0.5, 1.5] are on another scale (0..255, -1..1), not an overshoot


def checked_image(image: Any) -> np.ndarray:
    """The pixels :func:`upscale_array` accepts, as a native-byte-order numpy array, or a :class:`UserError`
    naming what is wrong: an (H, W) or (H, W, C<=4) uint8, uint16 or float32/float64 array (a torch
    tensor is detached and copied to the CPU); float values finite and in [0, 1] (within FLOAT_SLACK).

    Why: float pixels on the 0..255 scale (the classic mistake) would come back as a white image, and a
    NaN would surface as a broken network output. Overshoots within :data:`FLOAT_SLACK` (another
    network's or a bicubic's output, a colour conversion's rounding) are taken as they are.
    """
    if image is None or isinstance(image, (str, bytes, os.PathLike, numbers.Number)):
        hint = "; read a file with srtool.imageio.read_image(path).array or PIL.Image.open" if not (
            image is None or isinstance(image, numbers.Number)) else ""
        raise UserError(f"expected an image (numpy array, torch tensor or PIL image), got {type(image).__name__}{hint}")
    if isinstance(image, torch.Tensor):
        if image.device.type == "meta":
            raise UserError("the image is a tensor on the meta device, which holds no data")
        if image.dtype == torch.bfloat16:
            raise UserError("unsupported image dtype bfloat16; use uint8, uint16 or float32/float64 in [0, 1]")
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and not 1 <= image.shape[2] <= 4):
        raise UserError(f"expected an (H, W) or (H, W, C<=4) image array, got shape {image.shape}{_shape_hint(image.shape)}")
    if not image.dtype.isnative:  # big-endian data (FITS, some TIFF readers): the same values, native order
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise UserError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float32/float64 in [0, 1]")
    if min(image.shape[:2]) < 1:
        raise UserError(f"empty image of shape {image.shape}")
    if image.dtype.kind == "f":
        low, high = float(image.min()), float(image.max())  # NaN propagates into both
        if not (math.isfinite(low) and math.isfinite(high)):
            raise UserError("the image holds NaN or infinite values; float images must hold values in [0, 1]")
        if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
            raise UserError(
                f"float image values span [{low:.4g}, {high:.4g}]; float images must be in [0, 1] "
                "(0..255 data: pass uint8 or divide by 255)"
            )
    return image


def _shape_hint(shape: tuple[int, ...]) -> str:
    if len(shape) == 3 and 1 <= shape[0] <= 4 and shape[2] > 4:
        return " (channels first? pass image.transpose(1, 2, 0))"
    if len(shape) == 4 and shape[0] == 1:
        return " (a batch of one? pass image[0])"
    return ""


def _run_tiled(model: SRModel, image: np.ndarray, alpha_mode: str, tile: int, batch: int,
               cancel: threading.Event | None = None,
               progress: Callable[[float], None] | None = None) -> np.ndarray:
    """One pass of the tiled engine over an (H, W, C) image; see the module docstring."""
    network, s = model.network, model.scale
    h, w, channels = image.shape
    traits = model.traits or network_traits(network)
    plan = _Plan(channels, alpha_mode, traits.in_channels, traits.out_channels)
    dtype = image.dtype
    out = np.empty((h * s, w * s, channels), dtype=dtype)
    pad = max(0, int(model.tile_pad))
    # The float strip spans the full output width; on very wide images the tiles get shorter so that
    # the strip stays within STRIP_BUDGET (or half the output canvas, if that is larger).
    row_bytes = s * (w * s) * 4 * (plan.acc_channels + 1)
    budget = max(STRIP_BUDGET, min(4 * STRIP_BUDGET, out.nbytes // 2))
    tile_h = max(MIN_TILE, min(tile, int(budget // row_bytes) - pad))
    rows, cols = axis_tiles(h, tile_h, pad, uniform=batch > 1), axis_tiles(w, tile, pad, uniform=batch > 1)
    hw_r, hw_c = blend_half_width(rows, pad), blend_half_width(cols, pad)
    col_weights = [axis_weights(cols, j, s, hw_c).astype(np.float32) for j in range(len(cols))]
    bicubic_alpha = None
    if plan.has_alpha and not plan.alpha_by_model:
        bicubic_alpha = _finish_alpha_plane(imresize(image[..., -1], float(s)), image.dtype)
    net_dtype = NET_DTYPES[model.precision]
    mem_format = torch.channels_last if model.device.type in ("cpu", "cuda") else torch.contiguous_format

    def forward(tiles: list[np.ndarray]) -> np.ndarray:
        x, n = plan.batch(tiles)
        th, tw = x.shape[-2:]
        x = pad_to_requirements(x.to(model.device, dtype=net_dtype), traits).contiguous(memory_format=mem_format)
        with torch.inference_mode(), _no_autocast(model.device):  # a caller's autocast would change precision
            y = network(x)
        check_network_output(y, x, s)
        if y.shape[-2:] != (th * s, tw * s):
            y = y[..., : th * s, : tw * s]
        return plan.unbatch(y, n)

    row_weights = [axis_weights(rows, i, s, hw_r).astype(np.float32) for i in range(len(rows))]
    row_spans = [_nonzero_span(rt, wts, s) for rt, wts in zip(rows, row_weights)]
    strip = _Strip(width=w * s, channels=plan.acc_channels, capacity=max(b - a for a, b in row_spans))
    calls = len(rows) * -(-len(cols) // batch)
    called = 0

    def sink(r0: int, values: np.ndarray) -> None:
        _write_rows(out, r0, values, plan, bicubic_alpha, dtype)

    for i, rt in enumerate(rows):
        y0, y1 = row_spans[i]
        wy = row_weights[i][y0 - rt.win0 * s : y1 - rt.win0 * s]
        strip.extend_to(y1)
        window_rows = _float_planes(image[rt.win0 : rt.win1])
        if plan.has_alpha:  # premultiply colour by alpha
            window_rows[..., : plan.colour] *= window_rows[..., plan.colour :]
        for j0 in range(0, len(cols), batch):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            group = cols[j0 : j0 + batch]
            outs = forward([window_rows[:, ct.win0 : ct.win1] for ct in group])
            for k, ct in enumerate(group):
                wx = col_weights[j0 + k]
                x0, x1 = _nonzero_span(ct, wx, s)
                tile_out = outs[k][y0 - rt.win0 * s : y1 - rt.win0 * s, x0 - ct.win0 * s : x1 - ct.win0 * s]
                strip.add(y0, x0, tile_out, wy, wx[x0 - ct.win0 * s : x1 - ct.win0 * s])
            called += 1
            if progress is not None:
                progress(called / calls)
        done = row_spans[i + 1][0] if i + 1 < len(rows) else h * s  # rows no later tile row touches
        strip.release(done, sink)
    return out


def _no_autocast(device: torch.device):
    """Autocast switched off for ``device`` (the network runs in the model's resolved precision)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _nonzero_span(t: AxisTile, weights: np.ndarray, scale: int) -> tuple[int, int]:
    """Output-pixel range [a, b) where a tile's weights are non-zero."""
    nz = np.flatnonzero(weights)
    return t.win0 * scale + int(nz[0]), t.win0 * scale + int(nz[-1]) + 1


def _first_conv_channels(network: nn.Module) -> int:
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def _finish_alpha_plane(alpha: np.ndarray, dtype: np.dtype) -> np.ndarray:
    peak = _PEAKS.get(np.dtype(dtype))
    return alpha.astype(np.float32) / np.float32(peak) if peak else np.clip(alpha.astype(np.float32), 0, 1)


def _write_rows(out: np.ndarray, r0: int, values: np.ndarray, plan: _Plan, bicubic_alpha, dtype) -> None:
    """Finished float rows -> output canvas, un-premultiplying colour when there is alpha.

    Colour is divided by the model's float alpha (exact straight colour where the premultiplied
    value was exact); with ``alpha="bicubic"`` by the MATLAB-bicubic alpha that is written out.
    """
    r1 = r0 + values.shape[0]
    if not plan.has_alpha:
        out[r0:r1] = _finish(values, dtype)
        return
    if plan.alpha_by_model:
        a = np.clip(values[..., plan.colour :], 0.0, 1.0)
        alpha_q = _finish(a, dtype)
    else:
        a = bicubic_alpha[r0:r1, :, None]
        alpha_q = _finish(a, dtype)
    colour = np.divide(values[..., : plan.colour], a, out=np.zeros_like(values[..., : plan.colour]), where=a > 0)
    out[r0:r1, :, : plan.colour] = _finish(colour, dtype)
    out[r0:r1, :, plan.colour :] = alpha_q


class _Strip:
    """Float32 running weighted mean over a band of output rows [top, bottom), in a fixed buffer.

    A tile's weights are separable (``wy`` x ``wx``). Where both are 1 no other tile contributes, so
    the values are copied; only the cross-fade frame around it takes the running-mean update.
    """

    def __init__(self, width: int, channels: int, capacity: int):
        self.mean = np.zeros((capacity, width, channels), np.float32)
        self.wsum = np.zeros((capacity, width), np.float32)
        self.top = self.bottom = 0

    def extend_to(self, bottom: int) -> None:
        if bottom > self.bottom:
            a, b = self.bottom - self.top, bottom - self.top
            self.mean[a:b] = 0
            self.wsum[a:b] = 0
            self.bottom = bottom

    def add(self, y0: int, x0: int, values: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> None:
        r0 = y0 - self.top
        ones_y, ones_x = np.flatnonzero(wy == 1), np.flatnonzero(wx == 1)
        if ones_y.size and ones_x.size:
            ya, yb, xa, xb = int(ones_y[0]), int(ones_y[-1]) + 1, int(ones_x[0]), int(ones_x[-1]) + 1
        else:
            ya = yb = xa = xb = 0
        if yb > ya and xb > xa:
            self.mean[r0 + ya : r0 + yb, x0 + xa : x0 + xb] = values[ya:yb, xa:xb]
            self.wsum[r0 + ya : r0 + yb, x0 + xa : x0 + xb] = 1
        h, w = values.shape[:2]
        frame = [(0, ya, 0, w), (yb, h, 0, w), (ya, yb, 0, xa), (ya, yb, xb, w)] if yb > ya and xb > xa else [(0, h, 0, w)]
        for a, b, c, d in frame:
            if b > a and d > c:
                self._blend(r0 + a, x0 + c, values[a:b, c:d], wy[a:b, None] * wx[None, c:d])

    def _blend(self, r: int, c: int, values: np.ndarray, weight: np.ndarray) -> None:
        """mean += w / (W + w) * (v - mean): exact where the tiles agree."""
        h, w = weight.shape
        wsum = self.wsum[r : r + h, c : c + w]
        mean = self.mean[r : r + h, c : c + w]
        wsum += weight
        frac = np.divide(weight, wsum, out=np.zeros_like(weight), where=weight > 0)
        mean += frac[..., None] * (values - mean)

    def release(self, upto: int, sink: Callable[[int, np.ndarray], None]) -> None:
        """Hand finished rows [top, upto) to ``sink``, then move the rest of the band to the buffer top."""
        upto = min(upto, self.bottom)
        n = upto - self.top
        if n > 0:
            sink(self.top, self.mean[:n])
        keep = self.bottom - upto
        if keep > 0:
            self.mean[:keep] = self.mean[n : n + keep].copy()
            self.wsum[:keep] = self.wsum[n : n + keep].copy()
        self.top = upto


# ------------------------------------------------------------------------------------ the Python API


def upscale_image(model: SRModel, image, alpha: str | None = None, progress: Callable[[float], None] | None = None):
    """Upscale a PIL image or numpy array with ``model``; returns the same type.

    PIL images keep their mode family: L stays L, LA stays LA, RGB(A) stays RGB(A), palette images
    come back as RGB or RGBA (never re-quantised), 16-bit grayscale stays 16-bit. A torch tensor
    (H, W[, C]) is read as an array (detached, copied to the CPU) and gives a numpy array.
    ``progress(fraction)`` is called after every tile (see :func:`upscale_array`).
    """
    from PIL import Image

    from .imageio import array_from_pil, pil_from_array

    if isinstance(image, Image.Image):
        try:
            arr = array_from_pil(image)
        except (ValueError, OSError, AssertionError) as exc:  # 'F'; 'I' beyond 16 bits; a closed or truncated file
            reason = str(exc).strip() or "its file was closed before the pixels were loaded (call image.load() first)"
            raise UserError(f"PIL image of mode {image.mode}: {reason}") from None
        return pil_from_array(upscale_array(model, arr, alpha=alpha, progress=progress))
    return upscale_array(model, image, alpha=alpha, progress=progress)
