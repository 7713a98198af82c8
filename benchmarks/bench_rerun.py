"""`srtool upscale` run a second time over the same photos (every output in place): wall time and peak
memory of the user's command, read against floors measured in the same run.

    .venv/bin/python benchmarks/bench_rerun.py [--rounds 5] [--model default]

The photos are `make demo`'s four (``python -m srtool.samples``); the first run writes their outputs,
then each round times, as fresh processes, alternating:

* the re-run itself (``srtool upscale IN -o OUT``, nothing to do: every output is skipped);
* ``srtool --help``: the CLI's own start-up (Python, typer, rich), the least any srtool command costs;
* ``python -c "import torch"``: what any path that imports PyTorch pays before doing anything; a re-run
  that loads the model (as every re-run did before it was answered without torch) costs at least this.

Wall seconds and peak RSS come from ``/usr/bin/time``-style ``wait4`` accounting of each child.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


LOCK = "/tmp/srtool-cpu.lock"


def run_measured(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stderr): the child is reaped with wait4 to read its own peak RSS."""
    started = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"failed ({child.returncode}): {' '.join(args)}\n{stderr}")
    return wall, usage.ru_maxrss / 1024, stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    srtool = [str(bin_dir / "srtool")] if (bin_dir / "srtool").exists() else [sys.executable, "-m", "srtool"]
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # other timing runs wait (benchmarks/bench_upscale.py takes it too)
    with tempfile.TemporaryDirectory() as scratch:
        photos, out = Path(scratch) / "in", Path(scratch) / "out"
        subprocess.run([sys.executable, "-m", "srtool.samples", str(photos)], check=True, capture_output=True)
        rerun = [*srtool, "upscale", str(photos), "-o", str(out), "-m", args.model, "--no-progress"]
        photo_count = len(list(photos.iterdir()))
        first, first_rss, _ = run_measured(rerun)
        print(f"srtool re-run benchmark, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"{len(list(photos.iterdir()))} photos, model {args.model}")
        print(f"first run (writes every output): {first:.2f} s, {first_rss:.0f} MB")
        commands = {"re-run (nothing to do)": rerun, "srtool --help": [*srtool, "--help"],
                    "python -c 'import torch'": [sys.executable, "-c", "import torch"]}
        walls: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                wall, rss, stderr = run_measured(command)
                if name.startswith("re-run") and stderr.count("skipped:") != photo_count:
                    raise SystemExit(f"the re-run did not skip all {photo_count} photos: not a re-run\n{stderr}")
                walls[name].append(wall)
                peaks[name].append(rss)
        for name in commands:
            print(f"  {name:26s} wall median {statistics.median(walls[name]):.2f} s "
                  f"(min {min(walls[name]):.2f}, max {max(walls[name]):.2f}), peak RSS {max(peaks[name]):.0f} MB")


if __name__ == "__main__":
    main()
