"""Training speed of each preset: FLOPs per iteration, it/s, and the fraction of the machine's peak.

    .venv/bin/python benchmarks/bench_train.py            # CPU: tiny configs, this machine
    python benchmarks/bench_train.py --gpu [--compile]    # GPU: full presets, batch 16, crop 128, bf16
    python benchmarks/bench_train.py --gpu --modes before eager graphs --presets srgan esrgan

GPU modes (issue 13): ``before`` = a host read of the losses every step (``train.on_nonfinite=skip``
still needs it: the step of the old engine), ``eager`` = the sync-free step, ``graphs`` = the sync-free
step with ``train.compile=true, train.compile_mode=reduce-overhead`` (CUDA graphs). Warm-up steps,
which include compilation and graph capture, are excluded from the timed window.

FLOPs are counted by ``torch.utils.flop_counter`` on the *real* iteration (``Trainer.step``: generator
forward/backward, VGG19 feature loss, discriminator steps), and for the full presets on meta tensors
(no compute) with the same networks and loss modules; the CPU run cross-checks the two counts on the
tiny configs. Peak reference: a dense GEMM (fp32 on the CPU, bf16 on the GPU) timed in the same run.
The CPU run holds /tmp/srtool-cpu.lock (like ``flock``). GPU targets (one H100): srgan >= 60 it/s,
esrgan >= 30 it/s. Timed steps use pre-made batches: loader throughput is benchmarks/bench_loader.py.
"""

from __future__ import annotations

import argparse
import fcntl
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

PRESETS = ("srresnet", "rrdbnet", "srgan", "esrgan")
GPU_TARGETS = {"srgan": 60.0, "esrgan": 30.0}
TINY = {
    "srresnet": ["model.generator.n_blocks=4", "model.generator.n_feats=32"],
    "rrdbnet": ["model.generator.n_blocks=2", "model.generator.n_feats=32", "model.generator.growth=16"],
    "srgan": ["model.generator.n_blocks=4", "model.generator.n_feats=32"],
    "esrgan": ["model.generator.n_blocks=2", "model.generator.n_feats=32", "model.generator.growth=16"],
}
TINY_D = ["model.discriminator.n_blocks=4", "model.discriminator.base_channels=16", "model.discriminator.max_channels=32",
          "model.discriminator.pool_size=2", "model.discriminator.hidden=64"]
TINY_TRAIN = ["train.batch_size=4", "train.hr_crop=64"]


def synthetic_training_set(root: Path) -> Path:
    """Eight random 256x256 images prepared by srtool prepare (speed does not depend on content)."""
    from PIL import Image

    from srtool.prepare import prepare_folder

    src = root / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(src / f"{i}.png")
    return prepare_folder([src], root / "prepared", scale=4, workers=1, progress=False)


def random_vgg(root: Path) -> Path:
    from srtool.models.vgg import vgg19_features

    path = root / "vgg19-random.pth"
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, path)
    return path


def make_trainer(name: str, overrides: list[str], root: Path, data: Path, vgg: Path, device: str):
    from srtool.train import Trainer, TrainOptions

    base = ["validation.datasets=[]", "train.num_workers=0", "train.epochs=1", "train.iters_per_epoch=1000000"]
    opts = TrainOptions(preset=name, data=[data], out=root / f"run-{name}-{time.monotonic_ns()}",
                        overrides=base + overrides, vgg_weights=str(vgg), device=device, progress=False)
    return Trainer(opts, warn=lambda m: None)


def fixed_batch(trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    t = trainer.preset.train
    g = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (t.batch_size, 3, t.hr_crop, t.hr_crop), dtype=torch.uint8, generator=g)
    lr = torch.randint(0, 256, (t.batch_size, 3, t.hr_crop // 4, t.hr_crop // 4), dtype=torch.uint8, generator=g)
    return lr.to(device), hr.to(device)


def step_flops(trainer, lr: torch.Tensor, hr: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        trainer.step(lr, hr)
    return float(counter.get_total_flops())


def meta_flops(name: str, overrides: list[str]) -> float:
    """FLOPs of one iteration on meta tensors: the networks and loss modules of the engine, no compute."""
    from srtool.config import load_preset
    from srtool.models import build_network
    from srtool.train.losses import GeneratorLoss, discriminator_loss

    p = load_preset(name, overrides)
    t = p.train
    with torch.device("meta"):
        g = build_network(p.model.generator)
        d = build_network(p.model.discriminator) if p.stage == "gan" else None
        loss = GeneratorLoss(p.loss, vgg_weights="random")
        lr = torch.rand(t.batch_size, 3, t.hr_crop // 4, t.hr_crop // 4)
        hr = torch.rand(t.batch_size, 3, t.hr_crop, t.hr_crop)
    with FlopCounterMode(display=False) as counter:
        sr = g(lr)
        fake = real = None
        if d is not None:
            d.requires_grad_(False)
            fake = d(sr)
            if p.loss.adversarial.kind == "ragan":
                with torch.no_grad():
                    real = d(hr)
        g_total = sum(loss(sr, hr, fake, real).values())
        g_total.backward()
        if d is not None:
            d.requires_grad_(True)
            sum(discriminator_loss(p.loss.adversarial.kind, d(hr), d(sr.detach())).values()).backward()
    return float(counter.get_total_flops())


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        k += 10
        sync()
    return 2 * n**3 * k / (time.perf_counter() - t0)


def time_steps(trainer, lr, hr, steps: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(max(3, steps // 5)):
        trainer.step(lr, hr)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(lr, hr)
    sync()
    return steps / (time.perf_counter() - t0)


def run_cpu(root: Path, data: Path, vgg: Path, steps: int) -> None:
    device = torch.device("cpu")
    print(f"srtool train benchmark (CPU, {torch.get_num_threads()} threads, torch {torch.__version__})")
    with open("/tmp/srtool-cpu.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        peak = gemm_rate(device, torch.float32, 1024)
        print(f"  reference: fp32 GEMM 1024^3 = {peak / 1e9:.1f} GFLOP/s")
        print(f"  {'preset':9s} {'tiny config':58s} {'GFLOP/it':>9s} {'it/s':>7s} {'GFLOP/s':>8s} {'of GEMM':>8s}")
        for name in PRESETS:
            overrides = TINY[name] + TINY_TRAIN + (TINY_D if name in ("srgan", "esrgan") else [])
            trainer = make_trainer(name, overrides, root, data, vgg, "cpu")
            lr, hr = fixed_batch(trainer, device)
            flops = step_flops(trainer, lr, hr)
            check = meta_flops(name, overrides)
            assert abs(check - flops) <= 1e-6 * flops, (name, check, flops)  # the meta count is the real step's
            rate = time_steps(trainer, lr, hr, steps, device)
            trainer.close()
            cfg = ", ".join(o.split(".")[-1] for o in TINY[name] + TINY_TRAIN)
            print(f"  {name:9s} {cfg:58s} {flops / 1e9:9.2f} {rate:7.2f} {flops * rate / 1e9:8.1f} "
                  f"{flops * rate / peak:8.1%}")
    print("  full presets (batch 16, HR crop 128), FLOPs per iteration counted on meta tensors:")
    for name in PRESETS:
        flops = meta_flops(name, [])
        target = GPU_TARGETS.get(name)
        need = f"; at the H100 target {target:.0f} it/s: {flops * target / 1e12:.1f} TFLOP/s" if target else ""
        print(f"    {name:9s} {flops / 1e12:7.3f} TFLOP/it{need}")


GPU_MODES = {
    "before": ["train.on_nonfinite=skip"],
    "eager": [],
    "compile": ["train.compile=true"],
    "graphs": ["train.compile=true", "train.compile_mode=reduce-overhead"],
}


def run_gpu(root: Path, data: Path, vgg: Path, steps: int, compile_: bool, modes: list[str] | None = None,
            presets: list[str] | None = None) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA GPU visible to PyTorch")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    print(f"srtool train benchmark (GPU: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"bf16, channels_last, compile={compile_})")
    peak = gemm_rate(device, torch.bfloat16, 8192)
    print(f"  reference: bf16 GEMM 8192^3 = {peak / 1e12:.0f} TFLOP/s")
    runs = [(preset, mode) for preset in (presets or PRESETS) for mode in (modes or ["compile" if compile_ else "eager"])]
    for preset, mode in runs:
        overrides = ["train.batch_size=16", "train.hr_crop=128", "train.precision=bf16", "train.channels_last=true",
                     *GPU_MODES[mode]]
        flops = meta_flops(preset, overrides)
        trainer = make_trainer(preset, overrides, root, data, vgg, "cuda")
        lr, hr = fixed_batch(trainer, device)
        rate = time_steps(trainer, lr, hr, steps, device)
        trainer.close()
        mem = torch.cuda.max_memory_allocated(device) / 2**30
        target = GPU_TARGETS.get(preset)
        verdict = f"  target >= {target:.0f}: {'PASS' if rate >= target else 'FAIL'}" if target else ""
        print(f"  {preset:9s} {mode:7s} {rate:7.1f} it/s  {flops / 1e12:6.3f} TFLOP/it  {flops * rate / 1e12:6.1f} TFLOP/s "
              f"({flops * rate / peak:5.1%} of GEMM)  peak mem {mem:5.1f} GiB{verdict}")
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="full presets on the CUDA GPU (batch 16, crop 128, bf16)")
    ap.add_argument("--compile", action="store_true", help="GPU mode: torch.compile the networks")
    ap.add_argument("--steps", type=int, default=None, help="timed iterations per preset")
    ap.add_argument("--modes", nargs="*", choices=sorted(GPU_MODES), help="GPU: step variants to time (see above)")
    ap.add_argument("--presets", nargs="*", choices=PRESETS, help="GPU: presets to time (default: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="srtool-bench-train-") as tmp:
        root = Path(tmp)
        data, vgg = synthetic_training_set(root), random_vgg(root)
        if args.gpu:
            run_gpu(root, data, vgg, args.steps or 50, args.compile, args.modes, args.presets)
        else:
            run_cpu(root, data, vgg, args.steps or 10)


if __name__ == "__main__":
    main()
