"""Set14 / Set5 PSNR of the bundled model in bf16 against fp32 on the CPU, through the eval code path.

The rule (issue 13): ``precision auto`` may choose bf16 on CPUs with native bf16 only for a model whose
Set14 PSNR moves by < 0.02 dB (every image), and only where bf16 is native (AVX512-BF16/AMX).

    .venv/bin/python benchmarks/bf16_psnr.py [--data Set14 Set5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srtool.evaluate import evaluate_dataset
from srtool.loading import load_model

BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="*", default=["Set14", "Set5"])
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    for name in args.data:
        res = {p: evaluate_dataset(load_model(args.model, device="cpu", precision=p), BENCH / name, progress=False)
               for p in ("fp32", "bf16")}
        deltas = [(a.name, b.psnr - a.psnr, b.ssim - a.ssim) for a, b in zip(res["fp32"].images, res["bf16"].images)]
        worst = max(deltas, key=lambda d: abs(d[1]))
        print(f"{name}: fp32 {res['fp32'].psnr:.4f} dB / {res['fp32'].ssim:.4f}, bf16 {res['bf16'].psnr:.4f} dB / "
              f"{res['bf16'].ssim:.4f}; mean change {res['bf16'].psnr - res['fp32'].psnr:+.4f} dB, "
              f"largest per image {worst[1]:+.4f} dB ({worst[0]})")


if __name__ == "__main__":
    main()
