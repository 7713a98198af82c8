"""PSNR and SSIM exactly as published super-resolution tables compute them.

Toolkits disagree on Y vs RGB, rounding, border crop and the SSIM window, and the disagreement moves
numbers by tenths of a dB -- more than most papers' improvements. Every score srtool prints therefore
names its protocol, and the default reproduces the published per-image numbers of the SelfExSR
benchmark release within 4e-5 dB (see ``tests/test_metrics.py``).

Protocols (``PROTOCOLS``):

``y`` (default; published tables)
    SR is clamped to [0, 255] and rounded to uint8 (as published SR images are). ``scale`` pixels are
    cropped from every border. RGB becomes Y the way MATLAB's ``rgb2ycbcr`` does on uint8:
    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, rounded to an integer (half away from zero).
    Single-channel images are used as they are. PSNR = 10 log10(255^2 / MSE) in float64; SSIM of
    Wang et al. (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, L 255), valid region, mean of the map.
``rgb``
    Same rounding and crop, no colour conversion: PSNR over the MSE of all three channels, SSIM the
    mean of the per-channel SSIMs. Probably what the study's table used.
``y-float``
    Y is *not* rounded (BasicSR's ``calculate_psnr(..., test_y_channel=True)``), and float SR input
    is not rounded either (only clamped).

Inputs: ``uint8`` arrays are 0..255. Float arrays are network outputs in [0, 1] (srtool's networks
take and return [0, 1]); they are scaled by 255, clamped and -- except under ``y-float`` -- rounded.

SSIM is computed directly in float64 (scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255)`` gives the same value -- the tests prove it --
but takes 2-4x longer; see ``benchmarks/bench_eval.py``): the Gaussian window is separable, so each of the five local moments is two
1-D 11-tap correlations, evaluated only where the window fits (MATLAB ``filter2(..., 'valid')``).
"""

from __future__ import annotations

import math

import numpy as np

PROTOCOLS: tuple[str, ...] = ("y", "rgb", "y-float")
PROTOCOL_DESCRIPTIONS: dict[str, str] = {
    "y": "Y channel (MATLAB rgb2ycbcr, rounded), uint8 SR, border crop = scale, SSIM Wang 11x11 sigma 1.5",
    "rgb": "RGB (PSNR over all channels, SSIM mean of channels), uint8 SR, border crop = scale",
    "y-float": "Y channel unrounded (BasicSR), float SR kept, border crop = scale, SSIM Wang 11x11 sigma 1.5",
}

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# MATLAB rgb2ycbcr, first row of the BT.601 matrix for [0, 255] input; offset 16.
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_Y_ROWS = 64  # rows per chunk of the luma conversion


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is MATLAB's ``fspecial('gaussian', size, sigma)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def to_levels(image: np.ndarray, round_float: bool = True) -> np.ndarray:
    """An image on the 0..255 scale in float64: uint8 as is; floats in [0, 1] scaled, clamped, rounded."""
    if image.dtype == np.uint8:
        return image.astype(np.float64)
    if np.issubdtype(image.dtype, np.floating):
        top = float(np.nanmax(image)) if image.size else 0.0
        if top > 2.0:
            raise ValueError(
                f"float image with maximum {top:.3g}: float inputs must be in [0, 1]; pass uint8 for 0..255 data"
            )
        levels = np.clip(image.astype(np.float64) * PEAK, 0.0, PEAK)
        return np.floor(levels + 0.5) if round_float else levels
    raise TypeError(f"unsupported dtype {image.dtype}: use uint8 (0..255) or float in [0, 1]")


def rgb_to_y(image: np.ndarray, round_y: bool = True) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` luma (float64) of an (H, W, 3) uint8 or 0..255 float array.

    Evaluated as MATLAB's ``imlincomb`` does for uint8, in double and in this order:
    ``(65.481/255) R + (128.553/255) G + (24.966/255) B + 16``; ``round_y`` then rounds it like the
    uint8 output (half away from zero; Y lies in [16, 235]).
    """
    coeffs = [c / PEAK for c in _Y_COEFFS]
    y = np.empty(image.shape[:2], dtype=np.float64)
    term = np.empty((_Y_ROWS, image.shape[1]), dtype=np.float64)
    for r0 in range(0, image.shape[0], _Y_ROWS):  # row chunks that stay in cache: ~1.6x faster
        rows, t = y[r0 : r0 + _Y_ROWS], term[: min(_Y_ROWS, image.shape[0] - r0)]
        chunk = image[r0 : r0 + _Y_ROWS]
        np.multiply(chunk[..., 0], coeffs[0], out=rows)  # uint8 * float64 -> float64, no full-image copy
        np.multiply(chunk[..., 1], coeffs[1], out=t)
        rows += t
        np.multiply(chunk[..., 2], coeffs[2], out=t)
        rows += t
        rows += _Y_OFFSET
        if round_y:
            rows += 0.5
            np.floor(rows, out=rows)
    return y


def shave(image: np.ndarray, border: int) -> np.ndarray:
    """Crop ``border`` pixels from every side (SR benchmarks ignore the border the network cannot see)."""
    if border <= 0:
        return image
    return image[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """PSNR in dB of two float64 arrays on the same 0..peak scale; ``inf`` when identical."""
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _band_matrix(length: int) -> np.ndarray:
    """(length + 10, length) matrix whose column j holds the 11-tap Gaussian at rows j..j+10.

    ``x @ band`` is the 'valid' correlation of the rows of ``x`` (length + 10 columns) with the window;
    ``band.T @ x`` does the same down the columns.
    """
    window = gaussian_window_1d()
    band = np.zeros((length + SSIM_WINDOW - 1, length), dtype=np.float64)
    for j in range(length):
        band[j : j + SSIM_WINDOW, j] = window
    return band


_STRIP_ROWS = 32  # output rows per strip: the strip's five moment planes stay in cache
_BLOCK_COLS = 32  # output columns per banded block of the horizontal pass
_MIN_STRIPS_PER_THREAD = 8  # below this a second thread costs more than it saves


def ssim(a: np.ndarray, b: np.ndarray, peak: float = PEAK, threads: int | None = None) -> float:
    """Wang et al.'s SSIM of two 2-D float64 arrays: Gaussian 11x11/1.5, valid region, mean of the map.

    The same arithmetic as MATLAB's ``ssim_index`` (``filter2(window, x, 'valid')`` of x, y, x^2,
    y^2, xy, then the SSIM formula), organised for speed: the image is walked in strips of 32 output
    rows; the five moment planes of a strip are stacked and the separable window is applied as two
    small banded matrix products (float64 BLAS) while the strip is in cache. Strips are dealt out to
    ``threads`` Python threads (default: the calling thread's torch threads, i.e. its share of the
    cores in an image lane of ``srtool eval``; at most 4, and at least 8 strips each), each
    running single-threaded products: the tiles are far too small to split inside BLAS, whose
    worker threads would only spin (10x slower on a loaded machine). Results agree with a direct
    filter to ~1e-16; ``benchmarks/bench_eval.py`` times it against scikit-image.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"ssim expects two 2-D arrays of the same shape, got {a.shape} and {b.shape}")
    height, width = a.shape
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"image {width}x{height} is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out_h, out_w = height - (SSIM_WINDOW - 1), width - (SSIM_WINDOW - 1)
    starts = list(range(0, out_h, _STRIP_ROWS))
    import torch

    from .threads import use_torch_threads

    previous = torch.get_num_threads()
    workers = threads or min(previous, 4)
    workers = max(1, min(workers, len(starts) // _MIN_STRIPS_PER_THREAD))
    try:
        if previous != 1:
            use_torch_threads(1)
        if workers == 1:
            sums = _ssim_strips(a, b, starts, peak)
        else:
            from concurrent.futures import ThreadPoolExecutor

            sums = [0.0] * len(starts)
            # every helper sizes its own torch team to one thread (a new thread's team would otherwise be
            # all cores, or whatever another image lane last set process-wide)
            with ThreadPoolExecutor(workers, initializer=use_torch_threads, initargs=(1,)) as pool:
                for k, part in enumerate(pool.map(lambda k: _ssim_strips(a, b, starts[k::workers], peak), range(workers))):
                    sums[k::workers] = part
    finally:
        if previous != 1:
            use_torch_threads(previous)
    # strip by strip in image order, whatever the thread count: the same value with any -j on any machine
    return sum(sums) / (out_h * out_w)


def _ssim_strips(a: np.ndarray, b: np.ndarray, starts: list[int], peak: float) -> list[float]:
    """Sums of the SSIM map over each strip of output rows beginning at ``starts``."""
    import torch

    height, width = a.shape
    halo = SSIM_WINDOW - 1
    out_h, out_w = height - halo, width - halo
    c1 = (SSIM_K1 * peak) ** 2
    c2 = (SSIM_K2 * peak) ** 2
    strip = min(_STRIP_ROWS, out_h)
    block = min(_BLOCK_COLS, out_w)
    horizontal = torch.from_numpy(_band_matrix(block))
    vertical = torch.from_numpy(_band_matrix(strip).T.copy())
    moments = np.empty((strip + halo, 5, width))
    across = torch.empty(((strip + halo) * 5, out_w), dtype=torch.float64)
    local = np.empty((strip, 5 * out_w))
    moments_t, local_t = torch.from_numpy(moments), torch.from_numpy(local)
    sums = []
    for r0 in starts:
        rows = min(strip, out_h - r0)
        xa, xb = a[r0 : r0 + rows + halo], b[r0 : r0 + rows + halo]
        m = moments[: rows + halo]
        m[:, 0], m[:, 1] = xa, xb
        np.multiply(xa, xa, out=m[:, 2])
        np.multiply(xb, xb, out=m[:, 3])
        np.multiply(xa, xb, out=m[:, 4])
        flat = moments_t[: rows + halo].reshape(-1, width)
        h = across[: flat.shape[0]]
        for c0 in range(0, out_w, block):
            cols = min(block, out_w - c0)
            torch.matmul(flat[:, c0 : c0 + cols + halo], horizontal[: cols + halo, :cols], out=h[:, c0 : c0 + cols])
        torch.matmul(vertical[:rows, : rows + halo], h.reshape(rows + halo, 5 * out_w), out=local_t[:rows])
        moment = local[:rows].reshape(rows, 5, out_w)
        mu_a, mu_b = moment[:, 0], moment[:, 1]
        mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
        numerator = (2.0 * mu_ab + c1) * (2.0 * (moment[:, 4] - mu_ab) + c2)
        denominator = (mu_aa + mu_bb + c1) * ((moment[:, 2] - mu_aa) + (moment[:, 3] - mu_bb) + c2)
        sums.append(float(np.sum(numerator / denominator)))
    return sums


def prepare_pair(sr: np.ndarray, hr: np.ndarray, scale: int, protocol: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """The two float64 arrays a protocol compares: levels, border crop, colour conversion applied.

    Returns (H', W') arrays for Y protocols and single-channel images, (H', W', 3) for ``rgb``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    sr, hr = np.asarray(sr), np.asarray(hr)  # CPU tensors, memory maps, lists of rows
    for label, image in (("SR", sr), ("HR", hr)):
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"{label} dtype {image.dtype} unsupported: use uint8 (0..255) or float in [0, 1]")
    if sr.shape != hr.shape:
        raise ValueError(f"SR shape {sr.shape} differs from HR shape {hr.shape}")
    if sr.ndim == 3 and sr.shape[2] == 1:
        sr, hr = sr[..., 0], hr[..., 0]
    if sr.ndim not in (2, 3) or (sr.ndim == 3 and sr.shape[2] != 3):
        raise ValueError(f"expected (H, W) or (H, W, 3) images, got shape {sr.shape}")
    round_values = protocol != "y-float"
    sr, hr = shave(sr, scale), shave(hr, scale)
    if sr.ndim == 3 and protocol != "rgb":
        # uint8 goes straight into the luma formula (no float copy of all three channels).
        a = rgb_to_y(sr if sr.dtype == np.uint8 else to_levels(sr, round_values), round_y=round_values)
        b = rgb_to_y(hr if hr.dtype == np.uint8 else to_levels(hr, round_values), round_y=round_values)
        return a, b
    return to_levels(sr, round_values), to_levels(hr, round_values)


def compute_metrics(sr: np.ndarray, hr: np.ndarray, scale: int, protocol: str = "y") -> tuple[float, float]:
    """(PSNR dB, SSIM) of a super-resolved image against its ground truth under ``protocol``.

    ``sr``/``hr``: uint8 (H, W) or (H, W, 3), or floats in [0, 1]; ``scale`` is also the border crop.
    """
    a, b = prepare_pair(sr, hr, scale, protocol)
    if a.ndim == 2:
        return psnr(a, b), ssim(a, b)
    return psnr(a, b), float(np.mean([ssim(a[..., c], b[..., c]) for c in range(a.shape[2])]))
