"""End-to-end ``srtool prepare folder`` on synthetic DIV2K-size PNGs (2040x1356 RGB) with 2 workers.

Run:  flock /tmp/srtool-cpu.lock .venv/bin/python benchmarks/bench_prepare.py [--images 16] [--workers 2]

Prints images/s (target >= 4 with 2 workers), where the time goes per image (read+hash, PNG decode,
resize, PNG encode+write, store write, output hashing; summed over workers), and references measured in
the same run: PNG decode of one input alone, and PNG encode time/size at several zlib levels
(why ``--png-compress-level`` defaults to 1). The synthetic images are smooth content plus noise, so
they compress about like photographs (not like pure noise, not like flat colour).
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from srtool.prepare import run_folder
from srtool.resize import upscale

W, H = 2040, 1356


def synthetic_photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (H // 24 + 1, W // 24 + 1, 3), dtype=np.uint8)
    smooth = upscale(coarse, 24)[:H, :W].astype(np.float64)
    noisy = smooth + rng.normal(0, 3.0, smooth.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop", action="store_true", help="sizes not a multiple of 4 (forces HR re-encoding)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir on the system disk)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="srtool-bench-prepare-", dir=args.dir))
    try:
        src = scratch / "src"
        src.mkdir()
        base = [synthetic_photo(k) for k in range(4)]
        for k in range(args.images):  # DIV2K ships PNGs at zlib level 6-ish; vary content by flipping
            img = base[k % 4] if k < 4 else np.ascontiguousarray(base[k % 4][:: (-1) ** (k // 4), :: (-1) ** (k // 8)])
            if args.crop:
                img = img[: H - 1, : W - 2]
            Image.fromarray(img).save(src / f"{k:04d}.png", compress_level=6)
        in_mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6

        # references in the same run: decode alone, and encode at several zlib levels
        one = (src / "0000.png").read_bytes()
        decode = []
        for _ in range(5):
            t = time.perf_counter()
            Image.open(io.BytesIO(one)).load()
            decode.append(time.perf_counter() - t)
        from srtool.imageio import encode_png8

        ours = {}
        for level in (1, 6):
            t = time.perf_counter()
            blob = encode_png8(base[0], level)
            ours[level] = (time.perf_counter() - t, len(blob))
        levels = {}
        for level in (0, 1, 3, 6):
            buf = io.BytesIO()
            t = time.perf_counter()
            Image.fromarray(base[0]).save(buf, "PNG", compress_level=level)
            levels[level] = (time.perf_counter() - t, buf.tell())

        out = scratch / "out"
        t = time.perf_counter()
        result = run_folder([src], out, scale=4, workers=args.workers, progress=False)
        wall = time.perf_counter() - t
        assert result.ok and result.processed == args.images

        t = time.perf_counter()
        again = run_folder([src], out, scale=4, workers=args.workers, progress=False)
        rerun = time.perf_counter() - t
        assert again.reused == args.images

        # the training store in use: random 192x192 HR crops (+ aligned LR) vs decoding a 480x480 PNG sub-image
        # per sample as BasicSR's sub-image folders do; same run, warm page cache in both cases
        from srtool.prepare import TrainingStore

        store = TrainingStore.open(out, 4)
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        samples = 2000
        for _ in range(samples):
            i = int(rng.integers(len(store)))
            hr, lr = store.hr(i), store.lr(i)
            y, x = (int(rng.integers(0, (hr.shape[k] - 192) // 4 + 1)) * 4 for k in (0, 1))
            np.ascontiguousarray(hr[y : y + 192, x : x + 192]), np.ascontiguousarray(lr[y // 4 : y // 4 + 48, x // 4 : x // 4 + 48])
        store_rate = samples / (time.perf_counter() - t)
        sub_png = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(store.hr(0))).save(sub_png, "PNG", compress_level=3)
        t = time.perf_counter()
        for _ in range(50):
            np.asarray(Image.open(io.BytesIO(sub_png.getvalue())))
        png_rate = 50 / (time.perf_counter() - t)

        n = args.images
        print(f"srtool prepare folder: {n} synthetic {W - 2 * args.crop}x{H - args.crop} RGB PNGs ({in_mb / n:.1f} MB each), {args.workers} workers, "
              f"x4, store on, PNG level {result.records[0]['recipe']['png_compress_level']}, scratch {scratch}")
        print(f"  wall {wall:.2f} s -> {n / wall:.2f} images/s  (target >= 4)   [includes worker start-up]")
        print(f"  re-run (verify and skip everything): {rerun:.2f} s -> {n / rerun:.1f} images/s")
        print("  where the time goes (wall per image inside a worker; the machine's other load inflates these):")
        stages = {k: v for k, v in result.timings.items() if k != "cpu"}
        total = sum(stages.values())
        for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"    {stage:18s} {seconds / n * 1e3:8.1f} ms  {100 * seconds / total:5.1f} %")
        print(f"    {'sum':18s} {total / n * 1e3:8.1f} ms  -> {args.workers / (total / n):.2f} images/s on {args.workers} workers without start-up")
        cpu = result.timings["cpu"] / n
        print(f"  CPU time per image (process_time, load-independent): {cpu * 1e3:.1f} ms -> {args.workers / cpu:.2f} images/s "
              f"if each worker had a core to itself")
        print(f"  reference, same run: PNG decode alone {statistics.median(decode) * 1e3:.1f} ms/image "
              f"(the floor for any pipeline that must read the PNGs: {args.workers / statistics.median(decode):.1f} images/s)")
        print(f"  training store: {len(store)} sub-images; random 192x192 HR + 48x48 LR crops read {store_rate:,.0f}/s "
              f"(1 process) vs {png_rate:,.0f}/s decoding a 480x480 PNG sub-image (BasicSR-style), same run")
        print("  PNG encode of one HR image by zlib level (same run): PIL vs srtool.imageio.encode_png8 (Up filter)")
        for level, (sec, size) in levels.items():
            line = f"    level {level}: PIL {sec * 1e3:7.1f} ms {size / 1e6:6.2f} MB"
            if level in ours:
                line += f"   encode_png8 {ours[level][0] * 1e3:7.1f} ms {ours[level][1] / 1e6:6.2f} MB"
            print(line)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
