"""How fast `srtool` answers an argument error (the shell habit: a typo must not cost a PyTorch import).

Runs each command REPEATS times in fresh interpreters and reports the median wall time, next to two
references measured in the same run: a bare interpreter and `import torch`. Usage:

    .venv/bin/python benchmarks/bench_cli_argument_errors.py [REPEATS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
    "srtool upscale x.png --quality 0": [sys.executable, "-m", "srtool", "upscale", "{img}", "--quality", "0"],
    "srtool upscale --bogus": [sys.executable, "-m", "srtool", "upscale", "--bogus"],
    "srtool upscale x.png --tile_pad 4": [sys.executable, "-m", "srtool", "upscale", "{img}", "--tile_pad", "4"],
    "srtool eval --json": [sys.executable, "-m", "srtool", "eval", "--json"],
    "srtool upscale -h": [sys.executable, "-m", "srtool", "upscale", "-h"],
}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "x.png"
        img.write_bytes(b"")  # never read: the argument error comes first
        for label, command in COMMANDS.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                subprocess.run([c.format(img=img) for c in command], capture_output=True)
                times.append(time.perf_counter() - t0)
            print(f"{label:42s} median {statistics.median(times):6.3f} s  min {min(times):6.3f} s")


if __name__ == "__main__":
    main()
