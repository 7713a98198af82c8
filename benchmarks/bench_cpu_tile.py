"""The automatic CPU tile: speed and peak memory of the bundled model at several tile sizes, one run.

What a user's photo costs: Set14's HR images used as *inputs* (500x480 .. 720x576, the size of a
small photo; outputs 2000x1920 .. 2880x2304) upscaled by the bundled model through the engine
(``srtool.engine.upscale_array``, what ``srtool upscale`` calls) at each ``--tiles`` size and at the
automatic one (``srtool.engine.auto_tile``).

* speed: one process, the model loaded once, the tile sizes alternated round by round (order reversed
  every other round) so the machine's drift falls on all of them alike; each tile's time is read
  against the automatic tile's time in the same round, and the median ratio is reported with its
  quartiles; also the pixels each tiling computes (windows with their context) against one untiled pass;
* memory: a fresh process per tile size upscales the same images; its peak RSS (VmHWM) less the peak
  after loading the model and reading the images is the engine's working memory at that tile.

    .venv/bin/python benchmarks/bench_cpu_tile.py [--rounds 6] [--tiles 384 320 256 192] [--precision auto]
                                                  [--cli-rounds 6] [--no-memory]

``--cli-rounds N`` also times the user's whole path, ``srtool upscale FOLDER --tile T`` on the same images
as files, a fresh process per run (start-up ~2 s included in every run).

Needs ../shared/data (Set14). Holds /tmp/srtool-cpu.lock like the other CPU benchmarks.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SET14_HR = ROOT.parent / "shared" / "data" / "benchmarks" / "Set14" / "HR"


def _peak_mb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) // 1024
    return 0


def _images(count: int):
    import numpy as np
    from PIL import Image

    paths = sorted(SET14_HR.glob("*.png"), key=lambda p: -Image.open(p).size[0] * Image.open(p).size[1])[:count]
    return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in paths]


def _model(precision: str, tile: int | None):
    import srtool

    return srtool.load_model("default", precision=precision, tile=tile)


def _computed_pixels(model, shape: tuple[int, int], tile: int) -> float:
    """Pixels the windows of a tiling compute (context included), over the image's own pixels."""
    from srtool.engine import axis_tiles

    rows = axis_tiles(shape[0], tile, model.tile_pad)
    cols = axis_tiles(shape[1], tile, model.tile_pad)
    return sum((r.win1 - r.win0) * (c.win1 - c.win0) for r in rows for c in cols) / (shape[0] * shape[1])


def memory_child(precision: str, tile: int, count: int) -> None:
    """One tile size in this (fresh) process: the engine's peak working memory, printed as JSON."""
    from srtool.engine import upscale_array

    model = _model(precision, tile or None)
    images = _images(count)
    before = _peak_mb()
    for _name, image in images:
        upscale_array(model, image)
    print(json.dumps({"tile": tile, "before_mb": before, "peak_mb": _peak_mb(), "precision": model.precision}))


def _ratio_line(tile: int, times: dict[int, list[float]], auto: int, out_mp: float) -> str:
    ratios = sorted(a / b for a, b in zip(times[tile], times[auto]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return (f"  tile {tile}: median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}), "
            f"best {min(times[tile]):.2f} s = {out_mp / min(times[tile]):.2f} output MP/s")


def cli_rounds(tiles: list[int], auto: int, images: list, out_mp: float, rounds: int) -> None:
    """The user's path: ``srtool upscale FOLDER -m default --tile T`` in a fresh process per run (start-up,
    decode, encode and the PNG write included), the images as files, tiles alternated round by round."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="srtool-tile-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for name, _image in images:
            (folder / f"{name}.png").symlink_to(SET14_HR / f"{name}.png")

        def run(tile: int) -> float:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "srtool", "upscale", str(folder), "-m", "default", "-o",
                            str(Path(tmp) / "out"), "--tile", str(tile), "--overwrite", "--no-progress", "-q"],
                           check=True, cwd=ROOT)
            return time.perf_counter() - start

        run(auto)  # warm-up: page cache, the model file
        times: dict[int, list[float]] = {t: [] for t in tiles}
        for r in range(rounds):
            for tile in tiles if r % 2 == 0 else tiles[::-1]:
                times[tile].append(run(tile))
            print(f"  CLI round {r}: " + "  ".join(f"{t}: {times[t][-1]:.2f} s" for t in tiles), flush=True)
        print("srtool upscale, whole command (time / the automatic tile's time in the same round):")
        for tile in tiles:
            print(_ratio_line(tile, times, auto, out_mp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tiles", type=int, nargs="+", default=[384, 320, 256, 192])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--images", type=int, default=4, help="the largest N of Set14's HR images")
    parser.add_argument("--cli-rounds", type=int, default=0,
                        help="also time `srtool upscale` on the same images as files, fresh process per run")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory figure")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not SET14_HR.is_dir():
        sys.exit(f"skipped: {SET14_HR} not found (the shared data folder is not next to this checkout)")
    if args.memory_child is not None:
        memory_child(args.precision, args.memory_child, args.images)
        return

    with open("/tmp/srtool-cpu.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from srtool.engine import auto_tile, upscale_array

        model = _model(args.precision, None)
        auto, _batch = auto_tile(model)
        tiles = [auto] + [t for t in args.tiles if t != auto]
        images = _images(args.images)
        out_mp = sum(img.shape[0] * img.shape[1] for _, img in images) * model.scale**2 / 1e6
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  load {os.getloadavg()[0]:.1f}  "
              f"precision {model.precision}  automatic tile {auto}  {len(images)} images "
              f"({', '.join(f'{n} {i.shape[1]}x{i.shape[0]}' for n, i in images)}), {out_mp:.1f} output MP")
        for tile in tiles:
            ratio = statistics.mean(_computed_pixels(model, img.shape[:2], tile) for _, img in images)
            print(f"  tile {tile}: windows compute {ratio:.3f}x the image's pixels")

        def run(tile: int) -> float:
            model.tile = tile
            start = time.perf_counter()
            for _name, image in images:
                upscale_array(model, image)
            return time.perf_counter() - start

        for tile in tiles if args.rounds else []:  # warm-up: every window shape's primitives created once
            run(tile)
        times: dict[int, list[float]] = {t: [] for t in tiles}
        for r in range(args.rounds):
            for tile in tiles if r % 2 == 0 else tiles[::-1]:
                times[tile].append(run(tile))
            print(f"  round {r}: " + "  ".join(f"{t}: {times[t][-1]:.2f} s" for t in tiles), flush=True)
        if args.rounds:
            print("speed (time / the automatic tile's time in the same round; < 1 is faster):")
            for tile in tiles:
                print(_ratio_line(tile, times, auto, out_mp))
        if args.cli_rounds:
            cli_rounds(tiles, auto, images, out_mp, args.cli_rounds)
        if args.no_memory:
            return
        print("engine working memory (fresh process per tile, peak RSS less the peak before the first image):")
        for tile in tiles:
            done = subprocess.run([sys.executable, __file__, "--memory-child", str(tile), "--precision", args.precision,
                                   "--images", str(args.images)], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  tile {tile}: +{row['peak_mb'] - row['before_mb']} MB (peak {row['peak_mb']} MB)")


if __name__ == "__main__":
    main()
