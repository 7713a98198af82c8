"""MATLAB bicubic: bit for bit on every published LR image, and equal to a plain reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from srtool.resize import contributions, downscale, imresize, modcrop, upscale


def reference_imresize_axis(image: np.ndarray, axis: int, out_len: int, scale: float, edge: str) -> np.ndarray:
    """Plain NumPy gather-and-sum, MATLAB's loop order: for each output pixel, sum weight * input tap."""
    weights, indices = contributions(image.shape[axis], out_len, scale, edge)
    moved = np.moveaxis(image.astype(np.float64), axis, 0)
    acc = np.zeros((out_len, *moved.shape[1:]), dtype=np.float64)
    for tap in range(weights.shape[1]):
        acc += weights[:, tap].reshape(-1, *([1] * (moved.ndim - 1))) * moved[indices[:, tap]]
    acc = np.moveaxis(acc, 0, axis)
    if image.dtype == np.uint8:
        return np.clip(np.floor(acc + 0.5), 0, 255).astype(np.uint8)
    return acc


def reference_imresize(image: np.ndarray, scale: float, shape: tuple[int, int], edge: str) -> np.ndarray:
    out = reference_imresize_axis(image, 0, shape[0], scale, edge)
    return reference_imresize_axis(out, 1, shape[1], scale, edge)


def _pairs(folder):
    for hr_path in sorted((folder / "HR").glob("*.png")):
        yield hr_path.stem, np.asarray(Image.open(hr_path)), np.asarray(Image.open(folder / "LR_bicubic" / "X4" / hr_path.name))


@pytest.mark.parametrize("dataset,edge", [("Set5", "replicate"), ("Set14", "replicate"), ("Set5-mirror-edge", "mirror")])
def test_bit_exact_against_published_lr(benchmarks_dir, dataset, edge):
    count = 0
    for name, hr, lr in _pairs(benchmarks_dir / dataset):
        out = downscale(modcrop(hr, 4), 4, edge=edge)
        assert out.shape == lr.shape, name
        assert out.dtype == np.uint8
        assert np.array_equal(out, lr), f"{dataset}/{name}: {np.count_nonzero(out != lr)} pixels differ"
        count += 1
    assert count == {"Set5": 5, "Set14": 14, "Set5-mirror-edge": 5}[dataset]


def test_edge_modes_differ_only_at_the_border(benchmarks_dir):
    for name, hr, lr in _pairs(benchmarks_dir / "Set5"):
        mirror = np.asarray(Image.open(benchmarks_dir / "Set5-mirror-edge" / "LR_bicubic" / "X4" / f"{name}.png"))
        diff = np.argwhere(downscale(hr, 4, edge="mirror") != lr)
        assert np.array_equal(downscale(hr, 4, edge="mirror"), mirror)
        if diff.size:
            h, w = lr.shape[:2]
            assert all(min(y, x, h - 1 - y, w - 1 - x) < 2 for y, x, *_ in diff)


def test_keeping_floats_between_passes_is_not_matlab(benchmarks_dir):
    # the README's fact: rounding after each pass matters; float throughout is off by up to 2 levels
    name, hr, lr = next(_pairs(benchmarks_dir / "Set5"))
    as_float = imresize(hr.astype(np.float64), 0.25)
    assert not np.array_equal(np.clip(np.floor(as_float + 0.5), 0, 255).astype(np.uint8), lr)


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("edge", ["replicate", "mirror"])
def test_fast_path_matches_reference_on_odd_sizes(factor, edge):
    rng = np.random.default_rng(factor * 10 + (edge == "mirror"))
    for h, w in [(37, 53), (61, 19), (3 * factor + 1, 101)]:
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = modcrop(img, factor)
        shape = (img.shape[0] // factor, img.shape[1] // factor)
        assert np.array_equal(downscale(img, factor, edge), reference_imresize(img, 1 / factor, shape, edge))
        # and upscaling by the same integer factor
        up_shape = (h * factor, w * factor)
        img2 = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        assert np.array_equal(upscale(img2, factor, edge), reference_imresize(img2, factor, up_shape, edge))


def test_non_integer_scale_and_float_input():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(45, 67, 3), dtype=np.uint8)
    out = imresize(img, 0.7)
    assert out.shape == (32, 47, 3)
    assert np.array_equal(out, reference_imresize(img, 0.7, (32, 47), "replicate"))
    f = rng.random((20, 30)).astype(np.float32) * 2 - 0.5  # out-of-range floats are kept, not clipped
    out_f = imresize(f, 4.0)
    assert out_f.dtype == np.float32 and out_f.shape == (80, 120)
    assert np.allclose(out_f, reference_imresize(f, 4.0, (80, 120), "replicate"), atol=1e-5)
    assert out_f.min() < 0 or out_f.max() > 1


def test_constant_image_stays_constant():
    img = np.full((40, 40, 3), 77, dtype=np.uint8)
    assert np.all(downscale(img, 4) == 77) and np.all(upscale(img, 4) == 77)


@pytest.mark.parametrize("edge", ["replicate", "mirror"])
def test_fast_path_matches_reference_across_column_tiles(edge):
    # wider than one 1024-column tile in both passes, so tile borders are exercised (shrink and enlarge)
    rng = np.random.default_rng(5 + (edge == "mirror"))
    img = rng.integers(0, 256, size=(52, 1400, 3), dtype=np.uint8)
    assert np.array_equal(downscale(img, 4, edge), reference_imresize(img, 0.25, (13, 350), edge))
    small = rng.integers(0, 256, size=(23, 530, 3), dtype=np.uint8)
    assert np.array_equal(upscale(small, 3, edge), reference_imresize(small, 3, (69, 1590), edge))
    f = rng.random((40, 1100)) * 300 - 20  # float64: no rounding, no clipping
    assert np.allclose(imresize(f, 0.5, edge=edge), reference_imresize(f, 0.5, (20, 550), edge), rtol=0, atol=1e-9)
