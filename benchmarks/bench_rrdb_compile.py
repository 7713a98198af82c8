"""RRDBNet on the CPU: srtool's eager fused network vs ``torch.compile`` (inductor, freezing, weight
prepacking), both read against the fp32 GEMM rate measured in the same rounds (issue 13, item 2).

    .venv/bin/python benchmarks/bench_rrdb_compile.py [--blocks 2] [--side 160] [--rounds 6]

A few RRDB blocks stand for the 23 of ESRGAN (compiling all 23 takes minutes; the per-block work is the
same). FLOPs are counted from the convolutions' shapes (benchmarks/bench_upscale.py's ``conv_flops``).
The compile happens once, outside the clock; the rounds alternate GEMM, eager and compiled.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_upscale import conv_flops, gemm_rate  # noqa: E402

from srtool.fusion import prepare_network  # noqa: E402
from srtool.models import RRDBNet, RRDBNetConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2, help="RRDB blocks (ESRGAN has 23)")
    parser.add_argument("--side", type=int, default=160, help="LR side in pixels")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    import torch._inductor.config as inductor

    torch.manual_seed(0)
    network = RRDBNet(RRDBNetConfig(n_blocks=args.blocks)).eval()
    flops = conv_flops(network, args.side, args.side)
    eager = prepare_network(network, torch.device("cpu"), "fp32")
    x = torch.rand(1, 3, args.side, args.side).contiguous(memory_format=torch.channels_last)
    inductor.freezing = True
    inductor.cpp.weight_prepack = True
    plain = RRDBNet(RRDBNetConfig(n_blocks=args.blocks)).eval()
    plain.load_state_dict(network.state_dict())
    compiled = torch.compile(plain.to(memory_format=torch.channels_last))
    started = time.perf_counter()
    with torch.no_grad():
        out_compiled = compiled(x)
    compile_seconds = time.perf_counter() - started
    with torch.inference_mode():
        out_eager = eager(x)
    print(f"RRDBNet {args.blocks} blocks, {args.side}x{args.side} LR, fp32, {torch.get_num_threads()} threads; "
          f"{flops / 1e9:.1f} GFLOP per pass; compile {compile_seconds:.1f} s; "
          f"max |eager - compiled| {(out_eager - out_compiled).abs().max().item():.1e}")

    def timed(fn, grad_mode) -> float:
        with grad_mode():
            started = time.perf_counter()
            fn(x)
            return time.perf_counter() - started

    times: dict[str, list[float]] = {"eager (srtool)": [], "compiled (inductor)": []}
    gemms = []
    for _ in range(args.rounds):
        gemms.append(gemm_rate(n=2048, reps=2, rounds=2))
        times["eager (srtool)"].append(timed(eager, torch.inference_mode))
        times["compiled (inductor)"].append(timed(compiled, torch.no_grad))
    best_gemm = max(gemms)
    print(f"fp32 GEMM 2048^3 per round: {', '.join(f'{g:.0f}' for g in gemms)} GFLOP/s")
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        print(f"  {name:20s} best {best:.3f} s = {flops / best / 1e9:.0f} GFLOP/s = {flops / best / 1e9 / best_gemm:.0%} "
              f"of the best GEMM; median {median:.3f} s = {flops / median / 1e9 / best_gemm:.0%}")


if __name__ == "__main__":
    main()
