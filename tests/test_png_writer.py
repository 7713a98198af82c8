"""srtool's PNG writer: the fast deflate in parts is one valid zlib stream, the same bytes however many
threads share it, and lossless; the thread-sharing helper behind it."""

from __future__ import annotations

import io
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from srtool.png_writer import PART_BYTES, adler32_combine, encode_png8, fast_deflate, part_count
from srtool.threads import run_shared

RNG = np.random.default_rng(7)


def photo(h: int, w: int, c: int) -> np.ndarray:
    """Smooth gradients plus noise: compressible like an upscaled photo, but not trivially."""
    base = np.cumsum(RNG.integers(-3, 4, (h, w, c)), axis=1) + np.arange(h)[:, None, None] // 3
    return base.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 4), (300, 200, 3), (700, 400, 2), (512, 700, 1)])
def test_parts_give_the_same_bytes_with_any_number_of_helpers(shape):
    array = photo(*shape)
    if shape[2] == 1:
        array = array[..., 0]
    alone = encode_png8(array, None)
    for helpers in (1, 3):
        with ThreadPoolExecutor(helpers) as pool:
            assert encode_png8(array, None, helpers=pool, helper_count=helpers) == alone
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(alone))), array)


def test_a_large_image_is_split_and_still_one_valid_zlib_stream(monkeypatch):
    data = photo(600, 500, 3).tobytes()
    assert part_count(len(data)) == len(data) // PART_BYTES > 4
    with ThreadPoolExecutor(2) as pool:
        stream = fast_deflate(data, pool, 2)
    assert zlib.decompress(stream) == data  # zlib checks the combined Adler-32 too
    monkeypatch.setitem(sys.modules, "isal", None)  # zlib's fallback, split the same way
    fallback = fast_deflate(data)
    assert zlib.decompress(fallback) == data and len(fallback) < len(data)


def test_adler32_combine_matches_zlib():
    data = RNG.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65520, 65521, 100_000, len(data)):
        a, b = data[:cut], data[cut:]
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data)


def test_run_shared_keeps_order_and_lets_the_caller_do_everything():
    with ThreadPoolExecutor(2) as pool:
        assert run_shared(lambda k: k * k, 50, pool, 2) == [k * k for k in range(50)]
        assert run_shared(lambda k: k, 1, pool, 5) == [0]
        # a helper that is busy elsewhere delays nothing: the caller takes every part itself
        release = threading.Event()
        blocker = pool.submit(release.wait)
        blocker2 = pool.submit(release.wait)
        who = run_shared(lambda k: threading.current_thread().name, 8, pool, 2)
        assert set(who) == {threading.current_thread().name}
        release.set()
        blocker.result(), blocker2.result()


def test_run_shared_raises_a_failing_part():
    def task(k):
        if k == 5:
            raise ValueError("part 5")
        return k

    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="part 5"):
        run_shared(task, 12, pool, 2)
