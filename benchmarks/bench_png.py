"""CPU cost and size of the 8-bit PNGs `srtool upscale` writes, against the other ways to write them.

The images are what upscale really encodes: the bundled model's x4 outputs of four Set14 LR images
(baboon, comic, lenna, zebra; computed first, not timed). Each encoder runs on all four, best of
``--reps``; the reference in the same run is a plain copy of the same raw bytes (memory speed).
"2 threads": the caller and one helper share the parts, as in ``srtool upscale`` on a 2-core CPU.

    .venv/bin/python benchmarks/bench_png.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from srtool import png_writer
from srtool.imageio import encode_png8, read_image
from srtool.loading import load_model

SET14_LR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks" / "Set14" / "LR_bicubic" / "X4"
IMAGES = ("baboon", "comic", "lenna", "zebra")


def pil_png(array: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@contextlib.contextmanager
def _deflate_with(factory):
    """encode_png8's fast path with another raw-deflate compressor (``factory()`` -> compressobj)."""
    saved = png_writer._codec
    png_writer._codec = lambda: (factory, zlib.adler32, zlib)
    try:
        yield
    finally:
        png_writer._codec = saved


def _fast_png(array: np.ndarray, factory=None, helpers=None) -> bytes:
    if factory is None:
        return encode_png8(array, None, helpers=helpers, helper_count=1 if helpers else 0)
    with _deflate_with(factory):
        return encode_png8(array, None, helpers=helpers, helper_count=1 if helpers else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from isal import isal_zlib

    model = load_model("default", device="cpu")
    outputs = [model(read_image(SET14_LR / f"{name}.png").array) for name in IMAGES]
    raw = sum(a.nbytes for a in outputs)
    helper = ThreadPoolExecutor(1)
    isal3 = lambda: isal_zlib.compressobj(3, isal_zlib.DEFLATED, -15)  # noqa: E731
    zlib_rle = lambda: zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)  # noqa: E731
    zlib_huffman = lambda: zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_HUFFMAN_ONLY)  # noqa: E731
    encoders = {
        f"upscale: Up filter, ISA-L {png_writer.ISAL_LEVEL}, 1 thread": lambda a: _fast_png(a),
        f"upscale: Up filter, ISA-L {png_writer.ISAL_LEVEL}, 2 threads": lambda a: _fast_png(a, helpers=helper),
        "Up filter, ISA-L 3, 1 thread (round 3)": lambda a: _fast_png(a, isal3),
        "Up filter, zlib 1, Z_RLE (without isal)": lambda a: _fast_png(a, zlib_rle),
        "Up filter, zlib 1, default search": lambda a: encode_png8(a, 1),
        "Up filter, zlib 6": lambda a: encode_png8(a, 6),
        "Up filter, zlib Huffman only": lambda a: _fast_png(a, zlib_huffman),
        "PIL, level 6 (all filters per row)": lambda a: pil_png(a, 6),
        "reference: copy of the raw bytes": lambda a: a.copy().data,
    }
    print(f"{len(outputs)} bundled-model outputs, {raw / 1e6:.2f} MB raw RGB")
    for name, encode in encoders.items():
        best = min(_timed(lambda: [encode(a) for a in outputs]) for _ in range(args.reps))
        size = sum(len(bytes(encode(a))) for a in outputs)
        if not name.startswith("reference"):
            for a in outputs:  # lossless, or the figure means nothing
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode(a)))), a), name
        print(f"  {name:44s} {best * 1e3:7.1f} ms  {size / 1e6:6.3f} MB  ({raw / best / 1e6:6.0f} MB/s raw)")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
