"""MATLAB-compatible bicubic ``imresize``, bit for bit.

Every published x4 benchmark starts from ``imresize(HR, 1/4, 'bicubic')``; PIL's and OpenCV's bicubic
differ and shift PSNR by tenths of a dB. This module reproduces MATLAB exactly:

* Keys cubic kernel, a = -0.5, support [-2, 2];
* when shrinking (scale < 1) the kernel is stretched for antialiasing: ``scale * cubic(scale * x)``
  with width ``4 / scale``;
* output pixel ``x`` (1-based) samples input coordinate ``u = x / scale + 0.5 * (1 - 1 / scale)``;
* each row of weights is normalised to sum 1; output size ``ceil(in * scale)``;
* dimensions are resized one at a time, the one with the smallest scale first (height on ties);
* on integer input the result of *each* pass is rounded (half away from zero) and saturated, as
  MATLAB's ``imresize`` does on uint8 (keeping floats between passes is off by up to 2 levels);
* borders: ``replicate`` (clamp indices; the canonical published benchmark LR images) or ``mirror``
  (symmetric reflection; what current MATLAB releases do). ``../shared/data/README.md`` documents both.

Speed: the weights of one dimension form a banded matrix (16 taps per row at x1/4). The resize is done
as dense float64 matrix products over small row blocks of that band (cut once per geometry and cached),
tile by tile so each float64 tile stays in cache, with the uint8 rounding fused per tile; the width pass
runs on the transposed uint8 image so both passes read contiguous rows. float64 keeps the sums
bit-compatible with MATLAB's double arithmetic; ``tests/test_resize.py`` checks the result against a plain
gather-and-sum reference and against every published LR image. ``benchmarks/bench_resize.py`` times it.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np

EdgeMode = Literal["replicate", "mirror"]
EDGE_MODES: tuple[str, ...] = ("replicate", "mirror")
_BLOCK_ROWS_SHRINK = 8  # output rows per dense block of the banded product when shrinking (benchmarks/bench_resize.py)
_BLOCK_ROWS_ENLARGE = 64  # ... and when enlarging
_BLOCK_COLS = 1024  # columns per tile: a tile of the float64 input stays in L2


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, written as MATLAB writes it."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (
        -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
    ) * ((1 < absx) & (absx <= 2))


def contributions(
    in_length: int, out_length: int, scale: float, edge: EdgeMode = "replicate", antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's per-output-pixel taps: ``(weights, indices)`` of shape (out_length, P), 0-based indices."""
    if edge not in EDGE_MODES:
        raise ValueError(f"edge must be one of {EDGE_MODES}, got {edge!r}")
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel = lambda t: scale * cubic(scale * t)  # noqa: E731
        kernel_width = kernel_width / scale
    else:
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    indices = indices.astype(np.int64)
    if edge == "mirror":
        aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
        indices = aux[np.mod(indices - 1, aux.size)]
    else:
        indices = np.clip(indices, 1, in_length)
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep] - 1


def weight_matrix(in_length: int, out_length: int, scale: float, edge: EdgeMode = "replicate") -> np.ndarray:
    """Dense (out_length, in_length) float64 matrix of one resize pass (border taps folded in)."""
    weights, indices = contributions(in_length, out_length, scale, edge)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), weights.shape[1])
    np.add.at(matrix, (rows, indices.ravel()), weights.ravel())
    return matrix


@functools.lru_cache(maxsize=32)
def _band_plan(in_length: int, out_length: int, scale: float, edge: EdgeMode) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The banded weight matrix cut into dense blocks ``(r0, r1, c0, c1, matrix[r0:r1, c0:c1])``, cached.

    Small row blocks when shrinking (8 output rows read ~44 input rows at x1/4, so the dense product wastes
    little); larger ones when enlarging, where a block's input span is short anyway. Each block is built
    straight from the taps, never from the whole (out_length, in_length) matrix, so memory stays
    proportional to the image whatever its aspect ratio (a 1 x 20000 image would need a 12.8 GB dense
    matrix). The blocks equal :func:`weight_matrix`'s bit for bit: the same taps are accumulated in the
    same order, and each block spans exactly the columns holding a non-zero weight of its rows.
    """
    weights, indices = contributions(in_length, out_length, scale, edge)
    rows = _BLOCK_ROWS_SHRINK if scale < 1 else _BLOCK_ROWS_ENLARGE
    plan = []
    for r0 in range(0, out_length, rows):
        r1 = min(r0 + rows, out_length)
        w, idx = weights[r0:r1], indices[r0:r1]
        lo = int(idx.min())
        block = np.zeros((r1 - r0, int(idx.max()) + 1 - lo), dtype=np.float64)
        np.add.at(block, (np.repeat(np.arange(r1 - r0), w.shape[1]), (idx - lo).ravel()), w.ravel())
        used = np.flatnonzero((block != 0).any(axis=0))
        c0, c1 = lo + int(used[0]), lo + int(used[-1]) + 1
        block = np.ascontiguousarray(block[:, c0 - lo : c1 - lo])
        block.flags.writeable = False  # shared by every call through the cache
        plan.append((r0, r1, c0, c1, block))
    return tuple(plan)


def _resize_rows(data: np.ndarray, out_length: int, scale: float, edge: EdgeMode) -> np.ndarray:
    """Resize a 2-D array along axis 0: ``matrix @ data`` over the band, one cache-sized tile at a time.

    Each tile (a row block x up to 1024 columns) is converted to float64, multiplied (float64 keeps
    the sums as MATLAB's double arithmetic has them), and -- for integer data -- rounded half away from
    zero, saturated and stored straight into the integer output, so no full-size float64 copy of the
    image is ever made. The tiles are too small for BLAS to split across threads.
    """
    plan = _band_plan(data.shape[0], out_length, scale, edge)
    integer = np.issubdtype(data.dtype, np.integer)
    out = np.empty((out_length, data.shape[1]), dtype=data.dtype if integer else np.float64)
    buffer = np.empty((max(r1 - r0 for r0, r1, *_ in plan), _BLOCK_COLS), dtype=np.float64)
    low, high = (np.iinfo(data.dtype).min, np.iinfo(data.dtype).max) if integer else (0, 0)
    for n0 in range(0, data.shape[1], _BLOCK_COLS):
        n1 = min(n0 + _BLOCK_COLS, data.shape[1])
        for r0, r1, c0, c1, block in plan:
            src = data[c0:c1, n0:n1].astype(np.float64)
            if integer:
                tile = buffer[: r1 - r0, : n1 - n0]
                np.matmul(block, src, out=tile)
                tile += 0.5
                np.floor(tile, out=tile)
                np.clip(tile, low, high, out=tile)
                out[r0:r1, n0:n1] = tile  # exact: the values are integral and in range
            else:
                np.matmul(block, src, out=out[r0:r1, n0:n1])
    return out


def _resize_axis(image: np.ndarray, axis: int, out_length: int, scale: float, edge: EdgeMode) -> np.ndarray:
    """One pass along ``axis``. The other axes are flattened into columns; for the width pass the (small,
    integer) image is transposed first so the product always runs down contiguous rows."""
    source = image.dtype
    data = image if np.issubdtype(source, np.integer) or source == np.float64 else image.astype(np.float64)
    moved = data if axis == 0 else np.ascontiguousarray(np.swapaxes(data, 0, 1))
    flat = np.ascontiguousarray(moved.reshape(moved.shape[0], -1))
    result = _resize_rows(flat, out_length, scale, edge).reshape((out_length, *moved.shape[1:]))
    if axis != 0:
        result = np.ascontiguousarray(np.swapaxes(result, 0, 1))
    return result if result.dtype == source else result.astype(source)


def output_size(in_size: int, scale: float) -> int:
    """MATLAB's output length for a scale factor: ``ceil(in * scale)``."""
    return int(math.ceil(in_size * scale))


def imresize(
    image: np.ndarray,
    scale: float | tuple[float, float] | None = None,
    output_shape: tuple[int, int] | None = None,
    edge: EdgeMode = "replicate",
) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array exactly like MATLAB ``imresize(..., 'bicubic')``.

    Give ``scale`` (one factor or per-axis (sy, sx)) or ``output_shape`` (H, W); with only a shape the
    factors are ``out / in`` per axis, as in MATLAB. uint8/uint16 input is rounded after every pass;
    float input (e.g. a network's output) is never rounded or clipped.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise TypeError(f"unsupported dtype {image.dtype}; use uint8, uint16, float32 or float64")
    in_hw = image.shape[:2]
    if scale is None and output_shape is None:
        raise ValueError("give scale or output_shape")
    if scale is not None:
        scales = (float(scale), float(scale)) if np.isscalar(scale) else tuple(float(s) for s in scale)
        shape = output_shape or tuple(output_size(n, s) for n, s in zip(in_hw, scales))
    else:
        shape = tuple(int(n) for n in output_shape)
        scales = tuple(o / i for o, i in zip(shape, in_hw))
    if min(scales) <= 0 or min(shape) < 1:
        raise ValueError(f"invalid resize of {in_hw} by {scales} to {shape}")
    order = sorted(range(2), key=lambda axis: scales[axis])  # stable: height first on ties
    out = image
    for axis in order:
        if out.shape[axis] != shape[axis] or scales[axis] != 1:
            out = _resize_axis(out, axis, shape[axis], scales[axis], edge)
    return out


def downscale(image: np.ndarray, factor: int, edge: EdgeMode = "replicate") -> np.ndarray:
    """``imresize(image, 1/factor)`` for an image whose sides are multiples of ``factor`` (after modcrop)."""
    h, w = image.shape[:2]
    if h % factor or w % factor:
        raise ValueError(f"image {w}x{h} is not a multiple of {factor}; modcrop it first")
    return imresize(image, 1.0 / factor, output_shape=(h // factor, w // factor), edge=edge)


def upscale(image: np.ndarray, factor: float, edge: EdgeMode = "replicate") -> np.ndarray:
    """``imresize(image, factor)``: the bicubic baseline of SR papers."""
    h, w = image.shape[:2]
    return imresize(image, float(factor), output_shape=(round(h * factor), round(w * factor)), edge=edge)


def modcrop(image: np.ndarray, factor: int) -> np.ndarray:
    """Crop bottom/right so both sides are multiples of ``factor`` (MATLAB ``modcrop``: top-left kept)."""
    h, w = image.shape[:2]
    return image[: h - h % factor, : w - w % factor]
