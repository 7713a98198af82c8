"""`srtool` inside a container-style CPU quota: threads sized to the quota vs to the visible cores.

    sudo .venv/bin/python benchmarks/bench_cpu_quota.py [--quota 1] [--rounds 5]

Docker's ``--cpus`` and Kubernetes' CPU limits are a CFS bandwidth quota: the process still sees every
core. This script makes such a quota itself (a cgroup under the v1 ``cpu`` or the v2 hierarchy; it needs
root and a writable cgroup file system, else it says so and exits 1), runs each workload in it as fresh
processes, alternating:

* **srtool**: the command as a user types it (srtool reads the quota: ``srtool.cgroups``);
* **visible cores**: what srtool did before it read quotas, one torch thread per visible core and ``-j``
  as many images (``OMP_NUM_THREADS`` and ``-j`` set to the visible core count).

Workloads: ``srtool upscale`` on the four Set14 LR images of issue 13 (baboon, comic, lenna, zebra),
``srtool upscale`` on one larger image (Set14 HR zebra, 2.9 MP output; one image takes every thread), and
``srtool eval -m default -d Set5``. Printed per workload: the median wall seconds of each mode, their
ratio, CPU seconds (``wait4``) against the time the quota grants, the throttled periods the kernel
counted (``cpu.stat``), and the upscale's network rate in GFLOP/s per granted core against a one-thread
GEMM in the precision the model runs in, measured in the same cgroup (the quota's limit).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "benchmarks"
PHOTOS = ["baboon", "comic", "lenna", "zebra"]
SRTOOL = [sys.executable, "-m", "srtool"]


def make_cgroup(cores: float) -> Path:
    """A fresh cgroup with a CFS quota of ``cores`` CPUs (v1 ``cpu`` controller, else v2)."""
    name = f"srtool-bench-{os.getpid()}"
    v1 = Path("/sys/fs/cgroup/cpu")
    period = 100_000
    if (v1 / "cpu.cfs_quota_us").exists():
        group = v1 / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(cores * period)))
        return group
    v2 = Path("/sys/fs/cgroup")
    if "cpu" in (v2 / "cgroup.controllers").read_text().split():
        group = v2 / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{int(cores * period)} {period}")
        return group
    raise OSError("no cgroup cpu controller to write (v1 /sys/fs/cgroup/cpu or v2 with cpu enabled)")


def throttled(group: Path) -> int:
    for line in (group / "cpu.stat").read_text().splitlines():
        if line.startswith("nr_throttled "):
            return int(line.split()[1])
    return 0


def run_in(group: Path, args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, throttled periods) of ``args`` run inside ``group``; it must exit 0."""
    before = throttled(group)

    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    started = time.perf_counter()
    child = subprocess.Popen(args, env=env, preexec_fn=enter, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {stderr.decode()[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime, throttled(group) - before


GEMM_IN_GROUP = r"""
import sys, time, torch
torch.set_num_threads(1)
a, b = torch.randn(1024, 1024, dtype=getattr(torch, sys.argv[1])), torch.randn(1024, 1024, dtype=getattr(torch, sys.argv[1]))
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(10))
print(2 * 1024**3 / best)
"""


def gemm_rate_in(group: Path, dtype: str) -> float:
    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    out = subprocess.run([sys.executable, "-c", GEMM_IN_GROUP, dtype], preexec_fn=enter, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quota", type=float, default=None, help="CPUs of quota (default: half the visible cores, at least 1)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from srtool.threads import visible_cores

    visible = visible_cores()
    quota = args.quota if args.quota is not None else max(1.0, visible / 2)
    lr_dir = DATA / "Set14" / "LR_bicubic" / "X4"
    if not lr_dir.is_dir():
        raise SystemExit(f"{lr_dir}: benchmark data missing (../shared/data)")
    try:
        group = make_cgroup(quota)
    except OSError as exc:
        raise SystemExit(f"cannot make a cgroup with a CPU quota here ({exc}); run as root on Linux") from None
    work = Path(tempfile.mkdtemp(prefix="srtool-quota-"))
    try:
        photos = work / "photos"
        photos.mkdir()
        for name in PHOTOS:
            (photos / f"{name}.png").symlink_to(lr_dir / f"{name}.png")
        big = DATA / "Set14" / "HR" / "zebra.png"
        from srtool.imageio import read_image
        from bench_default_model import export_flops_per_lr_pixel
        from srtool.model_files import bundled_model_path

        flops_per_lr_px = export_flops_per_lr_pixel(bundled_model_path())
        photo_px = sum(int(np.prod(read_image(photos / f"{n}.png").array.shape[:2])) for n in PHOTOS)
        big_px = int(np.prod(read_image(big).array.shape[:2]))
        workloads = {
            "upscale 4 Set14 LR": (SRTOOL + ["upscale", str(photos), "-o", str(work / "o1"), "--overwrite", "-q", "--no-progress"], photo_px),
            "upscale Set14 HR zebra": (SRTOOL + ["upscale", str(big), "-o", str(work / "o2.png"), "--overwrite", "-q", "--no-progress"], big_px),
            "eval -m default -d Set5": (SRTOOL + ["eval", "-m", "default", "-d", str(DATA / "Set5"), "-q", "--no-progress"], 0),
        }
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        old = {**base, "OMP_NUM_THREADS": str(visible)}
        import srtool

        precision = srtool.load_model("default").precision  # what `srtool upscale` runs it in here
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
        gemm = gemm_rate_in(group, dtype)
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {visible} visible cores, quota {quota:g} CPU "
              f"({group}), upscale runs the bundled model in {precision}; one-thread {dtype} GEMM 1024^3 in the group "
              f"{gemm / 1e9:.0f} GFLOP/s; {args.rounds} rounds")
        for label, (cmd, lr_px) in workloads.items():
            runs: dict[str, list[tuple[float, float, int]]] = {"srtool": [], "visible": []}
            old_cmd = cmd + ["-j", str(visible)]
            run_in(group, cmd, base)  # warm the page cache
            for _ in range(args.rounds):
                for mode, (c, env) in (("visible", (old_cmd, old)), ("srtool", (cmd, base))):
                    runs[mode].append(run_in(group, c, env))

            def summary(mode: str) -> tuple[float, str]:
                wall = statistics.median(r[0] for r in runs[mode])
                cpu = statistics.median(r[1] for r in runs[mode])
                thr = statistics.median(r[2] for r in runs[mode])
                return wall, f"{wall:.2f} s wall, {cpu:.2f} s CPU ({cpu / (wall * quota):.0%} of the quota's time), {thr:.0f} throttled periods"

            new, new_text = summary("srtool")
            prev, prev_text = summary("visible")
            line = f"{label}: srtool {new_text}; visible cores {prev_text}; visible/srtool {prev / new:.2f}x"
            if lr_px:
                rate = flops_per_lr_px * lr_px / min(r[0] for r in runs["srtool"]) / quota
                line += f"; best srtool run {rate / 1e9:.0f} GFLOP/s per granted core (start-up included) = {rate / gemm:.0%} of the GEMM"
            print(line, flush=True)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        try:
            group.rmdir()
        except OSError:
            pass


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
