"""The MATLAB resize stays banded for any aspect ratio: a 10000 x 1 or 1 x 10000 image costs memory in
proportion to its pixels (a dense weight matrix for the long side took 4.45 GB), and the banded blocks
are the dense matrix's bit for bit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from srtool.resize import _band_plan, downscale, upscale, weight_matrix
from test_resize import reference_imresize

# the user's whole path: `srtool upscale IMAGE --model bicubic`, its peak RSS read by a parent that ran nothing else
PEAK = textwrap.dedent("""
    import resource, subprocess, sys
    res = subprocess.run([sys.executable, "-m", "srtool", "upscale", sys.argv[1], "--model", "bicubic", "-o", sys.argv[2]],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
""")


def peak_mb(path, out) -> int:
    res = subprocess.run([sys.executable, "-c", PEAK, str(path), str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return int(res.stdout)


@pytest.fixture(scope="module")
def base_peak(tmp_path_factory) -> int:
    """Peak RSS of the same command on a 32 x 32 image: the interpreter, torch and srtool themselves."""
    folder = tmp_path_factory.mktemp("base")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "small.png")
    return peak_mb(folder / "small.png", folder / "out")


@pytest.mark.slow  # three CLI processes (about 10 s each, mostly importing torch)
@pytest.mark.parametrize("size", [(10000, 1), (1, 10000)])
def test_long_thin_images_use_memory_in_proportion(tmp_path, size, base_peak):
    thin = tmp_path / "thin.png"
    w, h = size
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(thin)
    base = base_peak
    peak = peak_mb(thin, tmp_path / "out")
    assert Image.open(tmp_path / "out" / "thin_x4.png").size == (4 * w, 4 * h)
    # the output is 40000 x 4 x 3 (0.5 MB as uint8): anything near a dense 40000 x 10000 float64 matrix (3.2 GB)
    # fails; 150 MB is a generous bound for the interpreter's noise
    assert peak - base < 150, (peak, base)


@pytest.mark.parametrize("edge", ["replicate", "mirror"])
@pytest.mark.parametrize("in_len, out_len", [(1, 4), (3, 12), (7, 2), (1000, 4000), (1000, 250), (97, 23), (5, 5)])
def test_banded_blocks_equal_the_dense_matrix(in_len, out_len, edge):
    dense = weight_matrix(in_len, out_len, out_len / in_len, edge)
    for r0, r1, c0, c1, block in _band_plan(in_len, out_len, out_len / in_len, edge):
        assert np.array_equal(block, dense[r0:r1, c0:c1])
        assert not dense[r0:r1, :c0].any() and not dense[r0:r1, c1:].any()


@pytest.mark.parametrize("edge", ["replicate", "mirror"])
def test_thin_images_match_the_reference(edge):
    rng = np.random.default_rng(1)
    for h, w in ((1, 3000), (3000, 1), (2, 777), (777, 3)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(upscale(img, 4, edge), reference_imresize(img, 4, (4 * h, 4 * w), edge))
        img4 = rng.integers(0, 256, (4 * h, 4 * w, 3), dtype=np.uint8)
        assert np.array_equal(downscale(img4, 4, edge), reference_imresize(img4, 0.25, (h, w), edge))
