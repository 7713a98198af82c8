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

from srtool.png_writer import PART_BYTES, adler32_combine, encode_png8, part_count
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


def idat_stream(png: bytes) -> bytes:
    """The zlib stream of a PNG's pixels (its IDAT chunks joined)."""
    pos, stream = 8, b""
    while pos < len(png):
        length, kind = int.from_bytes(png[pos:pos + 4], "big"), png[pos + 4:pos + 8]
        if kind == b"IDAT":
            stream += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return stream


def filtered_rows(array: np.ndarray) -> bytes:
    """What a PNG with the 'Up' filter on every row compresses (filter byte 2, then row minus row above)."""
    raw = array.reshape(array.shape[0], -1)
    up = np.vstack([raw[:1], raw[1:] - raw[:-1]])
    return np.hstack([np.full((raw.shape[0], 1), 2, np.uint8), up]).tobytes()


def test_a_large_image_is_split_and_still_one_valid_zlib_stream(monkeypatch):
    array = photo(600, 500, 3)
    assert part_count(array.size + 600) == (array.size + 600) // PART_BYTES > 4
    with ThreadPoolExecutor(2) as pool:
        stream = idat_stream(encode_png8(array, None, helpers=pool, helper_count=2))
    assert zlib.decompress(stream) == filtered_rows(array)  # zlib checks the combined Adler-32 too
    monkeypatch.setitem(sys.modules, "isal", None)  # zlib's fallback, split the same way
    fallback = idat_stream(encode_png8(array, None))
    assert zlib.decompress(fallback) == filtered_rows(array) and fallback != stream


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
