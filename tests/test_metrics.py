"""PSNR/SSIM: golden per-image numbers of the published benchmark, and protocol details that can bite.

The golden tests upscale the published Set5/Set14 LR images with the MATLAB bicubic recipe
(srtool.resize, uint8, rounded per pass) and must reproduce every published per-image bicubic number
within 1e-3 dB / 1e-4 SSIM under the ``y`` protocol.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from srtool.imageio import read_dataset_image
from srtool.metrics import PROTOCOLS, compute_metrics, gaussian_window_1d, prepare_pair, psnr, rgb_to_y, ssim
from srtool.resize import upscale

PUBLISHED_MEANS = {"Set5": (28.418, 0.8101), "Set14": (25.993, 0.7023)}


def _published(shared_data: Path, name: str) -> dict[str, tuple[float, float]]:
    with open(shared_data / "reference" / f"{name}_x4_published.csv", newline="") as fh:
        return {r["image"]: (float(r["psnr_y_bicubic"]), float(r["ssim_y_bicubic"])) for r in csv.DictReader(fh)}


def _bicubic_pair(benchmarks_dir: Path, dataset: str, image: str) -> tuple[np.ndarray, np.ndarray]:
    hr = read_dataset_image(benchmarks_dir / dataset / "HR" / f"{image}.png")
    lr = read_dataset_image(benchmarks_dir / dataset / "LR_bicubic" / "X4" / f"{image}.png")
    return upscale(lr, 4), hr


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_golden_bicubic_reproduces_every_published_number(shared_data, benchmarks_dir, dataset):
    published = _published(shared_data, dataset)
    assert len(published) == {"Set5": 5, "Set14": 14}[dataset]
    ours = {}
    for image in published:
        sr, hr = _bicubic_pair(benchmarks_dir, dataset, image)
        ours[image] = compute_metrics(sr, hr, scale=4, protocol="y")
    bad = [
        f"{image}: ours {ours[image][0]:.6f}/{ours[image][1]:.6f} published {p:.6f}/{s:.6f}"
        for image, (p, s) in published.items()
        if abs(ours[image][0] - p) > 4e-5 or abs(ours[image][1] - s) > 3e-6  # the README's stated agreement
    ]
    assert not bad, "\n".join(bad)
    mean_psnr = float(np.mean([v[0] for v in ours.values()]))
    mean_ssim = float(np.mean([v[1] for v in ours.values()]))
    want_psnr, want_ssim = PUBLISHED_MEANS[dataset]
    assert round(mean_psnr, 3) == want_psnr and round(mean_ssim, 4) == want_ssim


@pytest.fixture(scope="module")
def butterfly(benchmarks_dir):
    return _bicubic_pair(benchmarks_dir, "Set5", "butterfly")


def test_ssim_matches_scikit_image_structural_similarity(butterfly):
    from skimage.metrics import structural_similarity

    a, b = prepare_pair(*butterfly, scale=4, protocol="y")
    theirs = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(theirs, abs=1e-12)
    # ... and a window other than 11x11 / sigma 1.5 (skimage's default 7x7 box) would not match.
    box = structural_similarity(a, b, data_range=255)
    assert abs(box - ssim(a, b)) > 1e-3


def test_ssim_matches_plain_2d_filter_of_wang_et_al():
    """A direct, unoptimised transcription of ssim_index.m (filter2 'valid' with fspecial)."""
    from scipy.signal import correlate2d

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (57, 75)).astype(np.float64)  # odd sizes: strip/block remainders
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).round()
    w = np.outer(gaussian_window_1d(), gaussian_window_1d())
    f = lambda x: correlate2d(x, w, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    s_aa, s_bb, s_ab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    ref = np.mean(((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)))
    assert ssim(a, b) == pytest.approx(ref, abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_gaussian_window_is_matlab_fspecial():
    g = gaussian_window_1d()
    x = np.arange(-5, 6)
    two_d = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    assert np.allclose(np.outer(g, g), two_d / two_d.sum(), atol=1e-15)


def test_rgb_to_y_is_matlab_rgb2ycbcr_rounded():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [10, 200, 30]]], np.uint8)
    # MATLAB: rgb2ycbcr(uint8([255 0 0])) -> Y 81; [0 255 0] -> 145; [0 0 255] -> 41; white 235; black 16.
    expected = [81, 145, 41, 235, 16, round(16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255)]
    assert rgb_to_y(pixels).ravel().tolist() == expected
    unrounded = rgb_to_y(pixels, round_y=False).ravel()
    assert unrounded[0] == pytest.approx(16 + 65.481)


def test_rounding_y_changes_the_result(butterfly):
    y = compute_metrics(*butterfly, scale=4, protocol="y")
    y_float = compute_metrics(*butterfly, scale=4, protocol="y-float")
    assert abs(y[0] - y_float[0]) > 1e-3  # rounding Y is not a no-op: it is why protocols must be named
    assert y[0] == pytest.approx(22.099166, abs=1e-3)  # the published value needs the rounded Y


def test_rgb_protocol_is_mse_over_channels_and_mean_channel_ssim(butterfly):
    sr, hr = butterfly
    p, s = compute_metrics(sr, hr, scale=4, protocol="rgb")
    a, b = sr[4:-4, 4:-4].astype(np.float64), hr[4:-4, 4:-4].astype(np.float64)
    assert p == pytest.approx(10 * math.log10(255**2 / np.mean((a - b) ** 2)), abs=1e-10)
    assert s == pytest.approx(np.mean([ssim(a[..., c], b[..., c]) for c in range(3)]), abs=1e-12)
    assert p < compute_metrics(sr, hr, scale=4, protocol="y")[0]  # RGB PSNR is lower than Y PSNR here


def test_border_crop_equals_scale():
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[:4] = 255 - sr[:4]  # damage exactly the 4-pixel top border
    sr[:, -4:] = 0
    for protocol in PROTOCOLS:
        assert compute_metrics(sr, hr, scale=4, protocol=protocol) == (math.inf, pytest.approx(1.0))
        assert compute_metrics(sr, hr, scale=3, protocol=protocol)[0] < 40  # a smaller crop sees the damage
    sr[4, 10] = 0  # first row inside the crop now differs
    assert math.isfinite(compute_metrics(sr, hr, scale=4)[0])


def test_known_psnr_value_and_single_channel_used_as_is():
    hr = np.full((40, 40), 100, np.uint8)
    sr = hr + np.uint8(1)
    assert psnr(sr.astype(float), hr.astype(float)) == pytest.approx(10 * math.log10(255**2))
    # Grayscale: used as is under every protocol (no Y conversion).
    for protocol in PROTOCOLS:
        assert compute_metrics(sr, hr, scale=4, protocol=protocol)[0] == pytest.approx(48.130803608679, abs=1e-9)
    # The same image as RGB goes through rgb2ycbcr: the luma step is 219/255 of a level -> rounded to 1 or 0.
    rgb_sr, rgb_hr = np.repeat(sr[..., None], 3, 2), np.repeat(hr[..., None], 3, 2)
    y_rgb = compute_metrics(rgb_sr, rgb_hr, scale=4, protocol="y")[0]
    y_float_rgb = compute_metrics(rgb_sr, rgb_hr, scale=4, protocol="y-float")[0]
    assert y_float_rgb == pytest.approx(10 * math.log10(255**2 / (219 / 255) ** 2))
    assert y_rgb != pytest.approx(y_float_rgb)


def test_float_sr_is_clamped_and_rounded_except_under_y_float(butterfly):
    sr, hr = butterfly
    noisy = sr.astype(np.float32) / 255 + np.float32(0.3 / 255)  # +0.3 of a level: rounds back to sr
    noisy[0, 0] = 1.7  # out of range: clamped (and in the cropped border anyway)
    assert compute_metrics(noisy, hr, 4, "y") == compute_metrics(sr, hr, 4, "y")
    assert compute_metrics(noisy, hr, 4, "rgb") == compute_metrics(sr, hr, 4, "rgb")
    assert compute_metrics(noisy, hr, 4, "y-float") != compute_metrics(sr, hr, 4, "y-float")


def test_bad_inputs_raise_clear_errors():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="protocol"):
        compute_metrics(a, a, 4, protocol="ycbcr")
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(a[:30], a, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_metrics(a.astype(np.float32) + 200, a, 4)
    with pytest.raises(TypeError, match="uint16"):
        compute_metrics(a.astype(np.uint16), a, 4)
    with pytest.raises(ValueError, match="smaller than"):
        compute_metrics(a[:16, :16], a[:16, :16], 4)
