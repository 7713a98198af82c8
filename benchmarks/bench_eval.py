"""srtool eval speed: a whole `srtool eval --model bicubic` on Set14, and PSNR+SSIM of a 2040x1356 pair.

Run (one command; it takes /tmp/srtool-cpu.lock itself so timings are not polluted by other runs):

    .venv/bin/python benchmarks/bench_eval.py [--repeats 5] [--metric-repeats 11]
    .venv/bin/python benchmarks/bench_eval.py --lanes 8 [--models default bicubic] [--jobs 2]   # section 3 only
    .venv/bin/python benchmarks/bench_eval.py --niqe 8 [--jobs 2] [--niqe-folder DIR]           # section 4 only
    .venv/bin/python benchmarks/bench_eval.py --save-images 6 [--jobs 2]                         # section 5 only

1. ``srtool eval --model bicubic --data ../shared/data/benchmarks/Set14`` as a fresh process, wall-clock
   (target <= 5 s). Read against, measured in the same run: a bare ``python -c pass``, ``import torch``
   (srtool.resize needs it), importing the eval command's modules, and the in-process evaluation
   (warm) -- so start-up and work are separated.
2. ``compute_metrics(sr, hr, 4, "y")`` on a 2040x1356 RGB uint8 pair (target <= 0.25 s), with its parts
   (Y conversion, PSNR, SSIM single-threaded and default). Read against: scikit-image's
   ``structural_similarity`` with the matching arguments and a plain separable ``scipy.ndimage``
   filter (same values, checked), a float64 GEMM rate and a memory-copy bandwidth -- with the FLOPs and
   bytes involved.
3. (``--lanes``) image lanes: ``evaluate_models`` at ``-j 1`` and ``-j N`` alternating in one process, against
   the bare network loop on the same LR images; then ``srtool eval -j 1`` / ``-j N`` as fresh processes.
4. (``--niqe``) images scored as they are (``srtool eval --metric niqe -d FOLDER``, no model) on Set14's HR
   folder (or ``--niqe-folder``, e.g. ``srtool upscale`` outputs): ``score_images`` at ``-j 1`` and ``-j N`` alternating, against the bare NIQE loop on the decoded
   images (one thread, no reading), whose time divided by N is the perfect-scaling bound.
5. (``--save-images``) ``srtool eval --save-images``'s cost: ``evaluate_models`` on Set14 with the bundled
   model at ``-j N``, alternating: no saving, saving through ``srtool.imageio.write_png`` (srtool's PNG
   encoder), and saving through PIL at compress level 6 (what write_png used before) as the reference.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SRTOOL_SHARED_DATA", REPO.parent / "shared" / "data"))
LOCK = "/tmp/srtool-cpu.lock"


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def fmt(times: list[float], unit: float = 1.0, digits: int = 3) -> str:
    return f"median {statistics.median(times) * unit:.{digits}f}, min {min(times) * unit:.{digits}f}"


def run_process(args: list[str]) -> float:
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{res.stderr}")
    return elapsed


def bench_cli(repeats: int) -> None:
    set14 = SHARED / "benchmarks" / "Set14"
    print("== 1. srtool eval --model bicubic --data Set14 (fresh process, wall-clock, s)")
    if not set14.is_dir():
        print(f"   skipped: {set14} not present")
        return
    py = sys.executable
    command = [py, "-m", "srtool", "eval", "--model", "bicubic", "--data", str(set14)]
    run_process(command)  # warm the page cache
    rows = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -c 'import torch'", [py, "-c", "import torch"]),
        ("import eval command modules", [py, "-c", "import srtool.cli, srtool.evaluate, srtool.report, srtool.engine, srtool.loading, srtool.prepare"]),
        ("srtool eval --model bicubic --data Set14", command),
    ]
    for label, args in rows:
        print(f"   {label:44s} {fmt([run_process(args) for _ in range(repeats)])}")
    from srtool.evaluate import evaluate_dataset
    from srtool.loading import bicubic_model

    model = bicubic_model(4)
    evaluate_dataset(model, set14, progress=False)
    work = timed(lambda: evaluate_dataset(model, set14, progress=False), repeats)
    result = evaluate_dataset(model, set14, progress=False)
    print(f"   {'in-process evaluate_dataset (warm)':44s} {fmt(work)}")
    print(f"   result: {result.psnr:.4f} dB / {result.ssim:.4f} (published 25.9933 / 0.7023)")


def plain_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: the same SSIM with scipy.ndimage.correlate1d (separable, whole planes, one thread)."""
    from scipy.ndimage import correlate1d

    from srtool.metrics import gaussian_window_1d

    w = gaussian_window_1d()

    def f(x):
        return correlate1d(correlate1d(x, w, axis=0)[5:-5], w, axis=1)[:, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    s_aa, s_bb, s_ab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    return float(np.mean(((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))))


def test_pair() -> tuple[np.ndarray, np.ndarray, str]:
    """A 2040x1356 HR with real texture (Set14 baboon enlarged) and its x4 bicubic reconstruction."""
    from srtool.imageio import read_dataset_image
    from srtool.resize import downscale, imresize, upscale

    source = SHARED / "benchmarks" / "Set14" / "HR" / "baboon.png"
    if source.is_file():
        hr = imresize(read_dataset_image(source), output_shape=(1356, 2040))
        origin = "Set14 baboon enlarged to 2040x1356"
    else:
        hr = np.random.default_rng(0).integers(0, 256, (1356, 2040, 3), dtype=np.uint8)
        origin = "random 2040x1356 (shared data absent)"
    return upscale(downscale(hr, 4), 4), hr, origin


def bench_metrics(repeats: int) -> None:
    import torch
    from skimage.metrics import structural_similarity

    from srtool import metrics

    sr, hr, origin = test_pair()
    print(f"\n== 2. PSNR + SSIM, protocol y, on a 2040x1356 RGB uint8 pair ({origin}), ms")
    metrics.compute_metrics(sr, hr, 4)
    a, b = metrics.prepare_pair(sr, hr, 4, "y")
    out_h, out_w = a.shape[0] - 10, a.shape[1] - 10
    total = timed(lambda: metrics.compute_metrics(sr, hr, 4, "y"), repeats)
    rows = [
        ("compute_metrics(sr, hr, 4, 'y')  [the figure]", total),
        ("  crop + rgb2ycbcr Y (both images)", timed(lambda: metrics.prepare_pair(sr, hr, 4, "y"), repeats)),
        ("  PSNR", timed(lambda: metrics.psnr(a, b), repeats)),
        ("  SSIM (default threads)", timed(lambda: metrics.ssim(a, b), repeats)),
        ("  SSIM (threads=1)", timed(lambda: metrics.ssim(a, b, threads=1), repeats)),
        ("reference: scipy correlate1d SSIM (1 thread)", timed(lambda: plain_ssim(a, b), 3)),
        ("reference: skimage structural_similarity", timed(lambda: structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255), 3)),
    ]
    for label, times in rows:
        print(f"   {label:48s} {fmt(times, 1e3, 1)}")
    ours = metrics.ssim(a, b)
    theirs = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    print(f"   SSIM {ours:.12f}; skimage {theirs:.12f}; scipy {plain_ssim(a, b):.12f}; PSNR {metrics.psnr(a, b):.4f} dB")

    # Machine references, same run.
    torch.set_num_threads(1)
    x = torch.rand(1024, 1024, dtype=torch.float64)
    gemm = min(timed(lambda: torch.matmul(x, x), 5))
    gemm_rate = 2 * 1024**3 / gemm / 1e9
    plane = np.random.rand(*a.shape)
    dst = np.empty_like(plane)
    copy = min(timed(lambda: np.copyto(dst, plane), 5))
    bandwidth = 2 * plane.nbytes / copy / 1e9
    torch.set_num_threads(os.cpu_count() or 1)

    pixels = out_h * out_w
    useful = 5 * pixels * 2 * 2 * 11 + pixels * 20  # five planes x two 11-tap passes (mul+add), then the formula
    strip, block = metrics._STRIP_ROWS, metrics._BLOCK_COLS
    executed = 5 * pixels * 2 * ((block + 10) + (strip + 10))  # what the banded dense products actually run
    ssim_single = statistics.median(rows[4][1])
    print(f"   machine, same run: float64 GEMM 1 thread {gemm_rate:.1f} GFLOP/s; memory copy {bandwidth:.1f} GB/s (read+write)")
    print(f"   SSIM work: {useful / 1e9:.2f} GFLOP useful, {executed / 1e9:.2f} GFLOP executed by the banded products "
          f"-> {executed / ssim_single / 1e9:.1f} GFLOP/s single-threaded ({100 * executed / ssim_single / 1e9 / gemm_rate:.0f}% of the GEMM rate)")
    moved = sr.nbytes + hr.nbytes + 2 * a.nbytes
    print(f"   bytes: inputs {2 * sr.nbytes / 1e6:.1f} MB uint8, Y planes {2 * a.nbytes / 1e6:.1f} MB float64; "
          f"one pass over them at the copy bandwidth = {moved / (bandwidth / 2) / 1e9 * 1e3:.1f} ms")
    verdict = "meets" if statistics.median(total) <= 0.25 else "MISSES"
    print(f"   => {statistics.median(total) * 1e3:.0f} ms {verdict} the 250 ms target; "
          f"skimage takes {statistics.median(rows[6][1]) / statistics.median(rows[3][1]):.1f}x our SSIM time")


def network_flops(models, lrs) -> float:
    """FLOPs of the models' networks on the LR images (srtool exports only)."""
    from bench_default_model import export_flops_per_lr_pixel

    pixels = sum(lr.shape[0] * lr.shape[1] for lr in lrs)
    return sum(export_flops_per_lr_pixel(m.source) * pixels for m in models
               if not m.is_bicubic and str(m.source).endswith(".safetensors"))


def bench_lanes(rounds: int, model_specs: list[str], jobs: int) -> None:
    """Image lanes: evaluate_models at -j 1 and -j JOBS alternating in one process, each -j JOBS run read
    against the mean of the -j 1 runs around it (the machine's speed drifts); the bare network loop
    (``model(lr)`` over the LR images on all threads, no reading or scoring) is the engine reference.
    Then the user's path: ``srtool eval -j 1`` and ``-j JOBS`` as fresh processes, alternating."""
    set14 = SHARED / "benchmarks" / "Set14"
    print(f"== 3. image lanes: evaluate_models -j 1 vs -j {jobs} on Set14, models {', '.join(model_specs)}")
    if not set14.is_dir():
        print(f"   skipped: {set14} not present")
        return
    from bench_default_model import gemm_rate  # the same fp32 reference as the engine benchmark

    from srtool.evaluate import evaluate_models, load_models, open_dataset

    models = load_models(model_specs, device="cpu")
    data = open_dataset(set14, models[0].scale)
    lrs = [data.load(pair)[1] for pair in data.pairs]
    flops = network_flops(models, lrs)

    def run(workers: int) -> float:
        t = time.perf_counter()
        evaluate_models(models, data, progress=False, workers=workers)
        return time.perf_counter() - t

    def bare() -> float:
        t = time.perf_counter()
        for lr in lrs:
            for model in models:
                model(lr)
        return time.perf_counter() - t

    run(1), run(jobs), bare()  # warm-up: oneDNN primitives, page cache
    print(f"   network work: {flops / 1e12:.3f} TFLOP for the {len(lrs)} images" if flops else
          "   network work: not counted (no srtool export among the models)")
    speedups, versus_bare, one, gemms, lane_times, bare_times = [], [], run(1), [], [], []
    for _ in range(rounds):
        gemm = max(gemm_rate(n, reps=3) for n in (1024, 2048))
        gemms.append(gemm)
        lanes, reference, after = run(jobs), bare(), run(1)
        speedups.append((one + after) / 2 / lanes)
        versus_bare.append(reference / lanes)
        rates = f"; GFLOP/s -j {jobs} {flops / lanes / 1e9:.0f}, bare {flops / reference / 1e9:.0f}" if flops else ""
        print(f"   -j 1 {one:.2f} / {after:.2f} s, -j {jobs} {lanes:.2f} s, bare network loop {reference:.2f} s; "
              f"fp32 GEMM {gemm / 1e9:.0f} GFLOP/s{rates}", flush=True)
        lane_times.append(lanes)
        bare_times.append(reference)
        one = after
    q = statistics.quantiles(speedups, n=4) if len(speedups) > 1 else [speedups[0]] * 3
    print(f"   speed-up of -j {jobs} over -j 1: median {statistics.median(speedups):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}); "
          f"-j {jobs} against the bare network loop: median {statistics.median(versus_bare):.3f}"
          + (f"; best -j {jobs} run at {flops / min(lane_times) / max(gemms):.0%} of the best GEMM rate, best bare loop at "
             f"{flops / min(bare_times) / max(gemms):.0%}" if flops else ""))
    py = sys.executable
    command = [py, "-m", "srtool", "eval", "--data", str(set14), "--no-progress"]
    for spec in model_specs:
        command += ["--model", spec]
    pairs = []
    for _ in range(max(1, rounds // 2)):
        pairs.append((run_process(command + ["-j", "1"]), run_process(command + ["-j", str(jobs)])))
    print("   srtool eval (fresh processes, wall s, -j 1 / -j %d): %s" % (jobs, ", ".join(f"{a:.2f} / {b:.2f}" for a, b in pairs)))


def bench_niqe_lanes(rounds: int, jobs: int, folder: Path | None = None) -> None:
    """Section 4: score_images -j 1 vs -j JOBS, bracketed as in section 3, against the bare NIQE loop."""
    folder = folder or SHARED / "benchmarks" / "Set14" / "HR"
    print(f"== 4. images as they are: score_images --metric niqe -j 1 vs -j {jobs} on {folder}")
    if not folder.is_dir():
        print(f"   skipped: {folder} not present")
        return
    from srtool.evaluate import open_image_folder, score_images
    from srtool.imageio import read_dataset_image
    from srtool.perceptual import niqe
    from srtool.scoring import Scorer

    data, scorer = open_image_folder(folder), Scorer(["niqe"], 1)
    images = [read_dataset_image(pair.hr_path) for pair in data.pairs]
    megapixels = sum(image.shape[0] * image.shape[1] for image in images) / 1e6

    def run(workers: int) -> float:
        t = time.perf_counter()
        score_images([data], scorer, progress=False, workers=workers)
        return time.perf_counter() - t

    def bare() -> float:
        t = time.perf_counter()
        for image in images:
            niqe(image)
        return time.perf_counter() - t

    run(1), run(jobs), bare()  # warm-up
    speedups, versus_bound, one = [], [], run(1)
    for _ in range(rounds):
        lanes, reference, after = run(jobs), bare(), run(1)
        speedups.append((one + after) / 2 / lanes)
        versus_bound.append(reference / jobs / lanes)
        print(f"   -j 1 {one:.3f} / {after:.3f} s, -j {jobs} {lanes:.3f} s, bare NIQE loop {reference:.3f} s "
              f"({megapixels:.2f} MP)", flush=True)
        one = after
    q = statistics.quantiles(speedups, n=4) if len(speedups) > 1 else [speedups[0]] * 3
    print(f"   speed-up of -j {jobs} over -j 1: median {statistics.median(speedups):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}); "
          f"-j {jobs} against the perfect-scaling bound (bare loop / {jobs}): median {statistics.median(versus_bound):.3f}")


def bench_save_images(rounds: int, jobs: int) -> None:
    """Section 5: evaluate_models with and without writing every SR output, two PNG encoders."""
    import io
    import tempfile

    from PIL import Image

    set14 = SHARED / "benchmarks" / "Set14"
    print(f"== 5. --save-images: evaluate_models -j {jobs} on Set14 with the bundled model, SR outputs written or not")
    if not set14.is_dir():
        print(f"   skipped: {set14} not present")
        return
    from srtool.atomic import atomic_path
    from srtool.evaluate import evaluate_models, load_models, open_dataset
    from srtool.imageio import write_png

    models = load_models(["default"], device="cpu")
    data = open_dataset(set14, models[0].scale)

    def pil_level_6(path: Path, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    with tempfile.TemporaryDirectory() as scratch:
        def run(writer) -> float:
            on_image = None
            if writer is not None:
                def on_image(name, hr, lr, outputs):
                    for sr in outputs.values():
                        writer(Path(scratch) / f"{name}.png", sr)
            t = time.perf_counter()
            evaluate_models(models, data, progress=False, on_image=on_image, workers=jobs)
            return time.perf_counter() - t

        modes = {"no saving": None, "write_png (srtool encoder)": write_png, "PIL level 6": pil_level_6}
        for writer in modes.values():
            run(writer)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(rounds):
            for name, writer in modes.items():
                times[name].append(run(writer))
            print("   " + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in times.items()), flush=True)
        base = statistics.median(times["no saving"])
        print("   medians: " + ", ".join(f"{name} {statistics.median(v):.2f} s ({statistics.median(v) / base:.3f}x)"
                                          for name, v in times.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="process runs per command")
    parser.add_argument("--metric-repeats", type=int, default=11)
    parser.add_argument("--lanes", type=int, default=0, metavar="ROUNDS",
                        help="only section 3: image lanes, ROUNDS bracketed rounds")
    parser.add_argument("--niqe", type=int, default=0, metavar="ROUNDS",
                        help="only section 4: images scored as they are (NIQE), ROUNDS bracketed rounds")
    parser.add_argument("--save-images", type=int, default=0, metavar="ROUNDS",
                        help="only section 5: --save-images cost, ROUNDS alternating rounds")
    parser.add_argument("--niqe-folder", type=Path, help="section 4's folder (default: Set14's HR images)")
    parser.add_argument("--models", nargs="+", default=["default"], help="section 3's models")
    parser.add_argument("--jobs", type=int, default=2, help="sections 3 and 4: -j")
    args = parser.parse_args()
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        print(f"srtool eval benchmark, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        if args.lanes or args.niqe or args.save_images:
            if args.lanes:
                bench_lanes(args.lanes, args.models, args.jobs)
            if args.niqe:
                bench_niqe_lanes(args.niqe, args.jobs, args.niqe_folder)
            if args.save_images:
                bench_save_images(args.save_images, args.jobs)
            return
        bench_cli(args.repeats)
        bench_metrics(args.metric_repeats)


if __name__ == "__main__":
    main()
