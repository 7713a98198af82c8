"""Wall time of everyday commands as the user runs them (fresh processes), old tree against this one.

Issue 13: the user waits for everything a command does, not only for the network. Each round runs every
command once with this tree and once with ``--old`` (a checkout of another commit; same interpreter,
same packages, only ``PYTHONPATH`` differs), in alternating order, next to two floors measured in the
same round: ``python -c "import torch"`` (what any command that runs a network pays first) and
``srtool --help``. The shared 2-core VM drifts between fast and slow states, so only medians over
rounds of alternated runs are read, and only against each other.

    git worktree add /tmp/startup-old 67feb83
    .venv/bin/python benchmarks/bench_startup.py --old /tmp/startup-old [--new /tmp/startup-new] [--rounds 5] [--only upscale,inspect]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
SET5 = SHARED / "benchmarks" / "Set5"
T91 = SHARED / "train" / "T91"
BUNDLED = ROOT / "srtool" / "weights" / "compact-x4.safetensors"


def commands(work: Path) -> dict[str, list[str]]:
    small = SET5 / "LR_bicubic" / "X4" / "baby.png"
    return {
        "--help": ["--help"],
        "presets list": ["presets", "list"],
        "models inspect compact-x4": ["models", "inspect", str(BUNDLED)],
        "upscale 1 image (128x128)": ["upscale", str(small), "-o", str(work / "up"), "--overwrite"],
        "eval -m default Set5": ["eval", "-m", "default", "-d", str(SET5)],
        "eval -m bicubic Set5": ["eval", "-m", "bicubic", "-d", str(SET5)],
        "prepare folder 4 T91": ["prepare", "folder", str(work / "t91"), "--out", str(work / "prep"), "--overwrite"],
    }


def timed(argv: list[str], pythonpath: str | None, cwd: Path) -> float:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} (PYTHONPATH={pythonpath}) exited {done.returncode}: {done.stderr[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the commit to compare with")
    parser.add_argument("--new", type=Path, default=ROOT, help="checkout to measure (default: this one); a frozen "
                        "worktree lets you keep editing this one while it runs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated substrings of the command names to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        (work / "t91").mkdir()
        for name in ("t1.png", "t2.png", "t3.png", "t4.png"):
            (work / "t91" / name).write_bytes((T91 / name).read_bytes())
        cmds = commands(work)
        if args.only:
            keys = [k.strip() for k in args.only.split(",")]
            cmds = {n: c for n, c in cmds.items() if any(k in n for k in keys)}
        times: dict[tuple[str, str], list[float]] = {}
        floors: dict[str, list[float]] = {"import torch": [], "srtool --help (new)": []}
        trees = {"old": str(args.old.resolve()), "new": str(args.new.resolve())}
        for r in range(args.rounds):
            floors["import torch"].append(timed([sys.executable, "-c", "import torch"], None, work))
            floors["srtool --help (new)"].append(timed([sys.executable, "-m", "srtool", "--help"], trees["new"], work))
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name, argv in cmds.items():
                for which in order:
                    times.setdefault((name, which), []).append(
                        timed([sys.executable, "-m", "srtool", *argv], trees[which], work))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"medians of {args.rounds} fresh processes, old/new alternated (old = {args.old}, new = {args.new})\n")
    print("| floor | median s | min s |\n|---|---|---|")
    for name, ts in floors.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} |")
    print("\n| command | old median s | new median s | new/old | old min | new min |\n|---|---|---|---|---|---|")
    for name in cmds:
        old, new = times[(name, "old")], times[(name, "new")]
        print(f"| {name} | {statistics.median(old):.2f} | {statistics.median(new):.2f} | "
              f"{statistics.median(new) / statistics.median(old):.2f}x | {min(old):.2f} | {min(new):.2f} |")


if __name__ == "__main__":
    main()
