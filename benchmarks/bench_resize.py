"""x1/4 MATLAB-bicubic resize of a 2040x1356 RGB uint8 image (a DIV2K-size HR) -- fast path vs plain NumPy.

Run:  flock /tmp/srtool-cpu.lock .venv/bin/python benchmarks/bench_resize.py [--repeats 21]

Prints the median time of ``srtool.resize.downscale`` (one BLAS thread, as each prepare worker runs it),
the plain gather-and-sum reference of ``tests/test_resize.py`` measured in the same run, the bytes and
FLOPs involved, and, to read the numbers against the machine, a float64 GEMM rate and a memory-copy
bandwidth measured in the same run. The two results are checked to be identical.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as each prepare worker runs it (before numpy loads)

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_resize import reference_imresize  # noqa: E402 - the one plain reference, kept with the tests

from srtool.resize import _band_plan, contributions, downscale  # noqa: E402


def median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm up (plan cache, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--reference-repeats", type=int, default=3)
    args = parser.parse_args()

    h, w, c, s = 1356, 2040, 3, 4
    image = np.random.default_rng(0).integers(0, 256, (h, w, c), dtype=np.uint8)
    fast_ms, fast_all = median_ms(lambda: downscale(image, s), args.repeats)
    ref_ms, _ = median_ms(lambda: reference_imresize(image, 1 / s, (h // s, w // s), "replicate"), args.reference_repeats)
    identical = np.array_equal(downscale(image, s), reference_imresize(image, 1 / s, (h // s, w // s), "replicate"))

    # work counted: useful multiply-adds (taps per output sample) and what the banded dense blocks execute
    taps = contributions(h, h // s, 1 / s)[0].shape[1]
    useful = 2 * taps * ((h // s) * w * c + (h // s) * (w // s) * c)
    executed = 0
    for in_len, out_len, cols in ((h, h // s, w * c), (w, w // s, (h // s) * c)):
        executed += sum(2 * (r1 - r0) * (c1 - c0) * cols for r0, r1, c0, c1, _ in _band_plan(in_len, out_len, 1 / s, "replicate"))
    bytes_moved = image.nbytes + (h // s) * w * c * 2 + (h // s) * (w // s) * c  # in, intermediate (write+read), out

    # machine references, same run: float64 GEMM (1 thread) and memory copy bandwidth
    a = np.random.default_rng(1).standard_normal((1024, 1024))
    gemm_ms, _ = median_ms(lambda: a @ a, 5)
    gemm_gflops = 2 * 1024**3 / gemm_ms / 1e6
    big = np.ones(64 * 1024 * 1024 // 8)
    dst = np.empty_like(big)
    copy_ms, _ = median_ms(lambda: np.copyto(dst, big), 5)
    copy_gbs = 2 * big.nbytes / copy_ms / 1e6

    print(f"x1/{s} MATLAB bicubic resize of a {w}x{h} RGB uint8 image (replicate edges), numpy {np.__version__}, "
          f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    print(f"  fast path (srtool.resize.downscale)   median {fast_ms:8.2f} ms  (min {min(fast_all):.2f}, max {max(fast_all):.2f}, n={args.repeats})  target <= 60 ms")
    print(f"  plain NumPy gather-and-sum reference  median {ref_ms:8.2f} ms  (n={args.reference_repeats})")
    print(f"  speed-up vs reference                 {ref_ms / fast_ms:8.1f} x   results identical: {identical}")
    print(f"  useful FLOPs {useful / 1e6:.1f} M ({taps} taps/sample), executed by the banded blocks {executed / 1e6:.1f} M "
          f"-> {executed / fast_ms / 1e6:.2f} GFLOP/s vs float64 GEMM 1024^3 {gemm_gflops:.1f} GFLOP/s (same BLAS, same run)")
    print(f"  bytes in/out/intermediate {bytes_moved / 1e6:.1f} MB -> {bytes_moved / fast_ms / 1e6:.2f} GB/s "
          f"vs memory copy {copy_gbs:.1f} GB/s (same run)")
    if not identical:
        raise SystemExit("fast path and reference differ")


if __name__ == "__main__":
    main()
