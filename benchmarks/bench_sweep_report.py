"""`srtool sweep report` with and without its score cache, each run a fresh CLI process.

Builds a tiny real sweep (2x2 SRResNet grid, n_feats=8, six iterations per point, on eight T91 images;
about a minute on two cores) unless SWEEP_DIR is given (then a copy of it is used), and times:

  1. the first report (empty cache: every point scored, both figures drawn),
  2. the same report again (nothing changed: nothing scored, no figure drawn),
  3. after one point's export is replaced (that point scored alone),
  4. ``--no-cache`` (the reference: what every report cost before the cache), in the same run,

and the floor: a fresh Python importing torch and the report module (what a report that scores
nothing still pays; the device check needs torch).

    python benchmarks/bench_sweep_report.py [--eval DIR ...] [--sweep SWEEP_DIR] [--repeat N]

Default evaluation sets: the shared Set5 and Set14 (HR + MATLAB LR x4). The machine is shared and noisy:
read the figures as orders of magnitude; ``--repeat`` takes the best of N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SRTOOL_SHARED_DATA", REPO.parent / "shared" / "data"))
SETTINGS = ["model.generator.n_feats=8", "train.batch_size=2", "train.epochs=1", "train.iters_per_epoch=6",
            "train.num_workers=0", "checkpoint.every=2", "log.every=1", "validation.every=6", "train.lr=1e-3",
            "train.ema_decay=0.5"]


def srtool(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "srtool", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"srtool {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stderr


def build_sweep(root: Path, evals: list[str]) -> Path:
    images = root / "T91sub"
    images.mkdir()
    for name in ("t1", "t2", "t3", "t5", "t8", "t10", "t11", "t12"):
        (images / f"{name}.png").symlink_to(SHARED / "train" / "T91" / f"{name}.png")
    srtool("prepare", "folder", str(images), "--out", str(root / "train"), "--no-progress")
    sets = [f"--set=validation.datasets=['{evals[0]}']"] + [f"--set={s}" for s in SETTINGS]
    seconds, _ = srtool("sweep", "--preset", "srresnet", "--data", str(root / "train"), "--out", str(root / "sweep"),
                        "--no-progress", "--grid", "model.generator.n_blocks=1,2", "--grid", "train.hr_crop=32,48", *sets)
    print(f"built the sweep in {seconds:.1f} s (4 points)")
    return root / "sweep"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", action="append", default=None)
    parser.add_argument("--sweep", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    evals = args.eval or [str(SHARED / "benchmarks" / "Set5"), str(SHARED / "benchmarks" / "Set14")]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-report-") as tmp:
        root = Path(tmp)
        if args.sweep:
            sweep = root / "sweep"
            shutil.copytree(args.sweep, sweep, symlinks=True)
            (sweep / "report-cache.json").unlink(missing_ok=True)
        else:
            sweep = build_sweep(root, evals)
        report = ["sweep", "report", str(sweep), "--no-progress", "--device", "cpu",
                  *[x for e in evals for x in ("--eval", e)]]

        def timed(label: str, *extra: str, prepare=None) -> None:
            best, said = float("inf"), ""
            for _ in range(args.repeat):
                if prepare is not None:
                    prepare()
                seconds, err = srtool(*report, *extra)
                best, said = min(best, seconds), next((l for l in err.splitlines() if l.startswith("scored")), "")
            print(f"{label:<44} {best:6.2f} s   ({said})")

        (sweep / "report-cache.json").unlink(missing_ok=True)
        timed("1. first report (empty cache)", prepare=lambda: (sweep / "report-cache.json").unlink(missing_ok=True))
        timed("2. again, nothing changed")
        point = next(p for p in sorted(sweep.iterdir()) if (p / "exports" / "best.safetensors").is_file())
        export = point / "exports" / "best.safetensors"

        def replace_one() -> None:  # other weights (one tensor nudged), a new file: that point is scored again
            from safetensors import safe_open
            from safetensors.torch import load_file, save_file

            with safe_open(str(export), framework="pt") as fh:
                metadata = fh.metadata()
            tensors = load_file(export)
            first = next(k for k, v in tensors.items() if v.is_floating_point())
            tensors[first] = tensors[first] * 1.01
            tmp = export.with_name(".bench.tmp")
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, export)

        timed("3. one point's export replaced", prepare=replace_one)
        timed("4. --no-cache (reference: every report before)", "--no-cache")
        floor = min(_python("import torch, srtool.sweep_report") for _ in range(args.repeat))
        label = "   floor: python -c 'import torch, srtool.sweep_report'"
        print(f"{label:<44} {floor:6.2f} s")


def _python(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
