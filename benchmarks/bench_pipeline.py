"""`srtool upscale` on a folder against the bare engine loop on the same images, in one run.

Issue 13 target: the CLI reaches >= 95 % of the bare ``SRModel`` loop's throughput, at any ``-j``.
Both sides run in fresh subprocesses (same interpreter, same thread settings), interleaved,
``--repeats`` times each; the figures are medians. Start-up (imports, ``load_model``) is excluded:

* bare:  ``for each image: model(decoded_array)`` on arrays decoded before the clock starts;
* CLI:   ``python -m srtool upscale FOLDER -o OUT --overwrite [-j N]``, unchanged, with a clock around
  ``srtool.upscale.run_batch`` (the whole batch: decode, network, encode, atomic writes), and as a
  cross-check its wall time minus that of a start-up-only subprocess (``import srtool.cli`` +
  ``load_model``) measured in the same round.

The CLI harness also clocks its engine calls (``upscale_array``, what the bare loop calls): their
share of the batch's wall time is the pipeline's efficiency measured inside one process, immune to the
machine's speed drifting between the two subprocesses (on the shared VM the same bare loop took 1.8 s
and 2.8 s in consecutive runs). Both sides also report CPU seconds (all threads): on a shared machine the wall-clock ratio is noise,
while the CPU ratio (bare CPU / pipeline CPU) still shows what the pipeline adds (decode, encode, and
any spinning of oversubscribed threads). ``--copies K`` puts each image in the folder K times (default 3).

The machine is shared (8 engineers on 2 cores at the time of writing): the load average is printed
with every run; compare the ratios, not the seconds. Holds /tmp/srtool-cpu.lock like the other
CPU benchmarks.

    .venv/bin/python benchmarks/bench_pipeline.py [--repeats 3] [--jobs 1 2 4]
    .venv/bin/python benchmarks/bench_pipeline.py --in-process --repeats 15 --copies 8 --jobs 1 2 4 [--io all]
    .venv/bin/python benchmarks/bench_pipeline.py --in-process --repeats 5 --copies 1 --jobs 1 2 --resize 512
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES = ("baboon", "comic", "lenna", "zebra")
SET14_LR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks" / "Set14" / "LR_bicubic" / "X4"
LOCK = "/tmp/srtool-cpu.lock"

BARE = r"""
import json, sys, time, resource
from pathlib import Path
from srtool.imageio import read_image
from srtool.loading import load_model
model = load_model(sys.argv[2], device="cpu", precision=sys.argv[3])
arrays = [read_image(p).array for p in sorted(Path(sys.argv[1]).iterdir())]
t0, c0 = time.perf_counter(), time.process_time()
for a in arrays:
    model(a)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# The CLI, unchanged, with a clock around srtool.upscale.run_batch (the whole batch: decode, network,
# encode, atomic writes), so that start-up is excluded exactly; CPU seconds cover all of its threads.
CLI = r"""
import atexit, json, resource, runpy, sys, time
import srtool.upscale as up
timing = {"engine": 0.0}
inner, engine = up.run_batch, up.upscale_array
def timed(*args, **kwargs):
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        return inner(*args, **kwargs)
    finally:
        timing.update(seconds=time.perf_counter() - t0, cpu=time.process_time() - c0)
def timed_engine(*args, **kwargs):  # the same engine call the bare loop makes, inside the CLI
    t0 = time.perf_counter()
    try:
        return engine(*args, **kwargs)
    finally:
        timing["engine"] += time.perf_counter() - t0
up.run_batch, up.upscale_array = timed, timed_engine
atexit.register(lambda: print(json.dumps({**timing, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
                              file=sys.stderr))
sys.argv = ["srtool"] + sys.argv[1:]
runpy.run_module("srtool", run_name="__main__")
"""


# --in-process: the bare loop and the CLI's run_batch alternate in ONE process on the same model and
# decoded inputs, so the machine's drift between processes (2x on the shared VM) cannot enter the ratio;
# each run_batch is read against the mean of the bare runs just before and after it, because the VM also
# switches between a fast and a slow state every few seconds (the same 4-image loop: 0.16 or 0.33 s).
# A second reference, "bare lanes", runs the same network calls in run_batch's image lanes (one thread
# per lane, one torch thread each) without any image I/O: the pipeline against it is what the I/O costs.
IN_PROCESS = r"""
import json, sys, threading, time
from collections import deque
from pathlib import Path
import srtool.upscale as up
import srtool.upscale_jobs as upscale_jobs
from srtool.imageio import read_image
from srtool.loading import load_model
from srtool.threads import torch_threads, use_torch_threads
folder, out, model_name, precision, workers, rounds, io_mode = sys.argv[1:8]
srtools_io, srtools_lanes = up.io_between_images, up.image_lanes
modes = ["lanes", "between", "beside"] if io_mode == "all" else [io_mode]

def place_io(mode):  # srtool's choice, or forced: image lanes, one image at a time with I/O between calls, or beside
    up.io_between_images = srtools_io if mode == "auto" else (lambda model: mode != "beside")
    up.image_lanes = (lambda model, workers, pending: 1) if mode == "between" else srtools_lanes

model = load_model(model_name, device="cpu", precision=precision)
arrays = [read_image(p).array for p in sorted(Path(folder).iterdir())]
options = upscale_jobs.UpscaleOptions(output=out, suffix=None, format="png", quality=95, recursive=False, overwrite=True,
                            outscale=None, max_pixels=10**8, workers=int(workers), alpha="model")
lanes = srtools_lanes(model, int(workers), len(arrays))
total = torch_threads()

def bare():
    t0 = time.perf_counter()
    for a in arrays:
        model(a)
    return time.perf_counter() - t0

def bare_lanes():  # run_batch's lanes without decode, encode or write
    queue = deque(arrays)
    def lane():
        use_torch_threads(max(1, total // lanes))
        while True:
            try:
                a = queue.popleft()
            except IndexError:
                return
            model(a)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    use_torch_threads(total)
    return time.perf_counter() - t0

def pipeline(mode):
    place_io(mode)
    jobs = upscale_jobs.plan_jobs([folder], options, model.scale)
    t0 = time.perf_counter()
    up.run_batch(model, jobs, options)
    assert all(job.status == "written" for job in jobs)
    return time.perf_counter() - t0

bare(); bare_lanes(); [pipeline(mode) for mode in modes]  # warm-up: oneDNN primitives, page cache
before = (bare(), bare_lanes())
for _ in range(int(rounds)):  # pipeline, bare, bare lanes, ...: each pipeline run is read against the references around it
    for mode in modes:
        p = pipeline(mode)
        after = (bare(), bare_lanes())
        print(json.dumps({"mode": mode, "lanes": lanes, "bare": before[0], "bare_after": after[0], "bare_lanes": before[1],
                          "bare_lanes_after": after[1], "cli": p}), flush=True)
        before = after
"""

STARTUP = "import srtool.cli, sys; from srtool.loading import load_model; load_model(sys.argv[1], device='cpu')"


def _timed_child(cmd: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def run_bare(folder: Path, model: str, precision: str) -> dict:
    _wall, out = _timed_child([sys.executable, "-c", BARE, str(folder), model, precision])
    return json.loads(out.strip().splitlines()[-1])


def run_startup(model: str) -> float:
    return _timed_child([sys.executable, "-c", STARTUP, model])[0]


def run_cli(folder: Path, out_dir: Path, model: str, precision: str, jobs: int | None, startup: float) -> dict:
    cmd = [sys.executable, "-m", "srtool", "upscale", str(folder), "-o", str(out_dir), "--overwrite", "-m", model,
           "--precision", precision, "--device", "cpu"]
    if jobs is not None:
        cmd += ["-j", str(jobs)]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI, *cmd[3:]], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"srtool upscale failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stderr.strip().splitlines()[-1])
    row = [line for line in proc.stderr.splitlines() if line.count("│") == 4][-1]  # written|skipped|failed|MP|s
    assert int(row.split("│")[0]) == len(list(folder.iterdir())), row  # every image written
    return {**data, "wall": wall, "net_wall": wall - startup}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, nargs="*", default=[None], help="CLI -j values (default: the CLI's default)")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("--precision", default="auto", help="both sides (auto: bf16 for the bundled model on AMX CPUs)")
    ap.add_argument("--data", type=Path, default=SET14_LR)
    ap.add_argument("--resize", type=int, default=0,
                    help="inputs: the four images' Set14 HR versions resized to N x N (PIL bicubic) instead of the LR ones")
    ap.add_argument("--in-process", action="store_true",
                    help="bare loop and run_batch alternating in one process (drift-free ratio) instead of subprocesses")
    ap.add_argument("--io", choices=("auto", "lanes", "between", "beside", "all"), default="auto",
                    help="--in-process only: where run_batch puts the work (auto: srtool's choice; lanes: one image "
                         "per core; between: one image at a time, I/O between its network calls; beside: I/O "
                         "overlapping them; all: the three alternating in one process)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = Path(tmp) / "in"
        folder.mkdir()
        for name in IMAGES:
            for k in range(args.copies):
                if args.resize:
                    from PIL import Image

                    with Image.open(args.data.parents[1] / "HR" / f"{name}.png") as hr:
                        hr.convert("RGB").resize((args.resize, args.resize), Image.BICUBIC).save(folder / f"{name}_{k}.png")
                else:
                    shutil.copy(args.data / f"{name}.png", folder / f"{name}_{k}.png")
        print(f"cpus {os.cpu_count()}, precision {args.precision}, load average at start {load_average()}")
        if args.in_process:
            in_process(folder, Path(tmp) / "out", args)
            return
        bare, cli = [], {j: [] for j in args.jobs}
        for r in range(args.repeats):
            startup = run_startup(args.model)
            b = run_bare(folder, args.model, args.precision)
            bare.append(b)
            print(f"[{r}] bare {b['seconds']:.2f} s, cpu {b['cpu']:.2f} s (rss {b['rss_mb']:.0f} MB)  "
                  f"load {load_average()}", flush=True)
            for j in args.jobs:
                c = run_cli(folder, Path(tmp) / "out", args.model, args.precision, j, startup)
                cli[j].append(c)
                print(f"[{r}] cli -j {j or 'default'}: {c['seconds']:.2f} s (engine calls {c['engine']:.2f} s = "
                      f"{c['engine'] / c['seconds']:.1%}), cpu {c['cpu']:.2f} s; wall {c['wall']:.2f} s - start-up "
                      f"{startup:.2f} s = {c['net_wall']:.2f} s; rss {c['rss_mb']:.0f} MB  "
                      f"load {load_average()}", flush=True)
        bare_med = statistics.median(b["seconds"] for b in bare)
        print(f"\nbare loop median {bare_med:.2f} s over {len(IMAGES)} Set14 LR images x {args.copies} "
              f"(peak RSS {max(b['rss_mb'] for b in bare):.0f} MB)")
        for j, runs in cli.items():
            med = statistics.median(c["seconds"] for c in runs)
            ratios = [b["seconds"] / c["seconds"] for b, c in zip(bare, runs)]
            net = statistics.median(c["net_wall"] for c in runs)
            cpu_ratios = [b["cpu"] / c["cpu"] for b, c in zip(bare, runs)]
            shares = [c["engine"] / c["seconds"] for c in runs]
            print(f"cli -j {j or 'default'}: in-process engine share of the batch (same process, drift-free) median "
                  f"{statistics.median(shares):.3f} ({', '.join(f'{x:.3f}' for x in shares)})")
            print(f"cli -j {j or 'default'}: median {med:.2f} s -> throughput ratio {bare_med / med:.3f} "
                  f"(per interleaved pair: {', '.join(f'{x:.3f}' for x in ratios)}; target >= 0.95); "
                  f"by wall - start-up {bare_med / net:.3f}; CPU ratio median {statistics.median(cpu_ratios):.3f} "
                  f"({', '.join(f'{x:.3f}' for x in cpu_ratios)}); peak RSS {max(c['rss_mb'] for c in runs):.0f} MB")
        print(f"load average at end {load_average()}")


def in_process(folder: Path, out: Path, args) -> None:
    """The --in-process comparison: for each -j, one process alternating the bare loop and run_batch."""
    for j in args.jobs:
        j = j or 4
        _wall, text = _timed_child([sys.executable, "-c", IN_PROCESS, str(folder), str(out), args.model,
                                    args.precision, str(j), str(args.repeats), args.io])
        all_rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        for mode in dict.fromkeys(r["mode"] for r in all_rows):
            rows = [r for r in all_rows if r["mode"] == mode]
            for ref, label in (("bare", "bare loop"), ("bare_lanes", f"bare lanes ({rows[0]['lanes']})")):
                ratios = [(r[ref] + r[ref + "_after"]) / 2 / r["cli"] for r in rows]
                quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
                print(f"-j {j} ({mode}): run_batch {statistics.median(r['cli'] for r in rows):.2f} s against {label} "
                      f"{statistics.median(r[ref] for r in rows):.2f} s (medians of {len(rows)}): throughput ratio "
                      f"(against the mean of the runs before and after it) median {statistics.median(ratios):.3f}, "
                      f"quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}  load {load_average()}", flush=True)


if __name__ == "__main__":
    main()
