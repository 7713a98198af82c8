"""What libgomp's spin-wait (``GOMP_SPINCOUNT``) does to the bare engine: two processes taking turns.

torch's OpenMP threads spin after every parallel region before they sleep (libgomp's default: about
10 ms on the 2-core VM), which keeps a core busy while ``srtool upscale`` encodes between network
calls. A lower spin count frees that core sooner, but only pays if the network itself does not slow
down, and the variable is read once per process. So two long-lived processes load the same model, one
with the default environment (A) and one with ``KEY=VALUE`` (B), and run the same bare
``SRModel`` loop in turns (A, B, A, B, ...); each B run is read against the mean of the A runs around it,
which cancels the VM's switching between fast and slow states. With ``X=1`` as the variable the two
processes are identical: that control run shows the method's own spread.

    .venv/bin/python benchmarks/bench_omp_spin.py GOMP_SPINCOUNT=10000 [--rounds 60] [--precision auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SET14_LR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks" / "Set14" / "LR_bicubic" / "X4"

WORKER = r"""
import sys, time
from pathlib import Path
from srtool.imageio import read_image
from srtool.loading import load_model
model = load_model("default", device="cpu", precision=sys.argv[1])
arrays = [read_image(p).array for p in sorted(Path(sys.argv[2]).glob("*.png"))][:int(sys.argv[3])]
for a in arrays:
    model(a)
print("ready", flush=True)
for _ in sys.stdin:
    t0 = time.perf_counter()
    for a in arrays:
        model(a)
    print(time.perf_counter() - t0, flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", help="KEY=VALUE for process B, e.g. GOMP_SPINCOUNT=10000 (X=1: the control)")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--images", type=int, default=8, help="Set14 LR images per turn")
    args = ap.parse_args()
    key, _, value = args.setting.partition("=")
    cmd = [sys.executable, "-c", WORKER, args.precision, str(SET14_LR), str(args.images)]
    a = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    b = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, key: value})
    for proc in (a, b):
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a worker failed to start")

    def turn(proc) -> float:
        time.sleep(0.05)  # the other process's OpenMP threads stop spinning first
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    ratios, before = [], turn(a)
    for _ in range(args.rounds):
        b_time, after = turn(b), turn(a)
        ratios.append((before + after) / 2 / b_time)
        before = after
    for proc in (a, b):
        proc.stdin.close()
        proc.wait()
    q = statistics.quantiles(ratios, n=4)
    print(f"{args.setting} (B) against the default (A), {args.precision}, {args.images} images per turn: speed B/A "
          f"median {statistics.median(ratios):.3f}, quartiles {q[0]:.3f}-{q[2]:.3f}, n={len(ratios)}")


if __name__ == "__main__":
    main()
