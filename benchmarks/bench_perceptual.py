"""Perceptual-metric speed on a 2040x1356 RGB image (DIV2K size): NIQE and LPIPS-alex (targets <= 1 s each).

Run (takes /tmp/srtool-cpu.lock itself so timings are not polluted by other benchmark runs):

    .venv/bin/python benchmarks/bench_perceptual.py [--repeats 3] [--threads 2]

The image: Set14 ``baboon`` enlarged to 2040x1356 with MATLAB bicubic (DIV2K is not on this machine;
a natural image of the right size is what matters for the timing).

1. ``srtool.perceptual.niqe`` against, in the same run, a line-by-line transcription of BasicSR's
   Python NIQE (``basicsr/metrics/niqe.py``: a Python loop over blocks, a 9801-entry argmin per fit,
   ``scipy.ndimage.convolve`` with the 7x7 window) -- the "several seconds per 2K image" reference.
   Both values are printed (they differ in the 4th decimal: BasicSR's float32 filtering vs srtool's
   exact flat-neighbourhood handling; srtool matches MATLAB's golden value to 5e-7).
2. LPIPS-alex: one full distance (both images through AlexNet) and one with the HR features cached
   (what ``srtool eval`` does when several models share an HR image), with the FLOPs of AlexNet's
   five conv layers at this size. The backbone weights are random (ImageNet weights cannot be
   downloaded here); speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import LOCK, SHARED, timed  # noqa: E402  (same lock, data folder and timer as the other benchmarks)


def basicsr_niqe(img: np.ndarray, mu_pris, cov_pris, window) -> float:
    """BasicSR's niqe() transcribed (per-block Python loop); its imresize replaced by srtool's MATLAB one."""
    from scipy.ndimage import convolve
    from scipy.special import gamma

    from srtool.resize import imresize

    gam = np.arange(0.2, 10.001, 0.001)
    r_gam = np.square(gamma(2 / gam)) / (gamma(1 / gam) * gamma(3 / gam))

    def aggd(block):
        block = block.flatten()
        left = np.sqrt(np.mean(block[block < 0] ** 2))
        right = np.sqrt(np.mean(block[block > 0] ** 2))
        gammahat = left / right
        rhat = np.mean(np.abs(block)) ** 2 / np.mean(block**2)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / ((gammahat**2 + 1) ** 2)
        alpha = gam[np.argmin((r_gam - rhatnorm) ** 2)]
        factor = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
        return alpha, left * factor, right * factor

    def features(block):
        alpha, bl, br = aggd(block)
        feat = [alpha, (bl + br) / 2]
        for shift in ([0, 1], [1, 0], [1, 1], [1, -1]):
            alpha, bl, br = aggd(block * np.roll(block, shift, axis=(0, 1)))
            feat.extend([alpha, (br - bl) * (gamma(2 / alpha) / gamma(1 / alpha)), bl, br])
        return feat

    h, w = img.shape
    nh, nw = h // 96, w // 96
    img = img[: nh * 96, : nw * 96]
    dist = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(np.square(img), window, mode="nearest") - np.square(mu)))
        norm = (img - mu) / (sigma + 1)
        size = 96 // scale
        dist.append(np.array([features(norm[i * size:(i + 1) * size, j * size:(j + 1) * size])
                              for j in range(nw) for i in range(nh)]))
        if scale == 1:
            img = imresize(img / 255.0, 0.5, edge="mirror") * 255.0
    dist = np.concatenate(dist, axis=1)
    mu_d = np.nanmean(dist, axis=0)
    cov_d = np.cov(dist[~np.isnan(dist).any(axis=1)], rowvar=False)
    delta = np.reshape(mu_pris, -1) - mu_d
    return float(np.sqrt(delta @ np.linalg.pinv((cov_pris + cov_d) / 2) @ delta))


def conv_flops(module, height: int, width: int) -> float:
    """Multiply-adds x 2 of every Conv2d in ``module`` for a (1, 3, height, width) input."""
    import torch

    total = [0.0]

    def hook(layer, inputs, output):
        k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
        total[0] += 2.0 * k * output.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        module(torch.zeros(1, 3, height, width))
    for handle in handles:
        handle.remove()
    return total[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from srtool.imageio import read_dataset_image
    from srtool.perceptual import BACKBONES, load_lpips, niqe, niqe_luma
    from srtool.resize import imresize

    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    base = read_dataset_image(SHARED / "benchmarks" / "Set14" / "HR" / "baboon.png")
    hr = imresize(base, output_shape=(1356, 2040))
    sr = imresize(imresize(hr, output_shape=(339, 510)), output_shape=(1356, 2040))  # a bicubic x4 "SR"

    print("== 1. NIQE, 2040x1356 (s; median of repeats)")
    niqe(hr)  # warm: scipy import, gamma table
    ours = timed(lambda: niqe(hr), args.repeats)
    params = np.load(REPO / "srtool" / "data" / "niqe_pris_params.npz")
    plane = niqe_luma(hr)
    reference = timed(lambda: basicsr_niqe(plane.copy(), params["mu_pris_param"], params["cov_pris_param"],
                                           params["gaussian_window"]), 1)
    value_ref = basicsr_niqe(plane.copy(), params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"])
    print(f"  srtool niqe          {statistics.median(ours):7.3f}  (runs {', '.join(f'{t:.3f}' for t in ours)})  "
          f"value {niqe(hr):.6f}")
    print(f"  BasicSR transcription {reference[0]:7.3f}  value {value_ref:.6f}  -> speed-up x{reference[0] / statistics.median(ours):.1f}")

    print("== 2. LPIPS-alex, 2040x1356 pair (s; median)")
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    weights = folder / "bench-alexnet-random.pth"
    import torchvision

    with torch.device("meta"):
        network = torchvision.models.alexnet(weights=None)
    features = network.features.to_empty(device="cpu")
    for module in features:
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, weights)
    metric = load_lpips("alex", weights)
    flops = conv_flops(metric.module.features, 1356, 2040)

    def full():
        metric.forget()
        return metric.score(sr, hr)

    full()
    cold = timed(full, args.repeats)
    cached = timed(lambda: metric.score(sr, hr), args.repeats)
    rate = flops / statistics.median(cached) / 1e9
    print(f"  both images           {statistics.median(cold):7.3f}  (runs {', '.join(f'{t:.3f}' for t in cold)})")
    print(f"  HR features cached    {statistics.median(cached):7.3f}  ({flops / 1e9:.1f} GFLOP of AlexNet convs per image "
          f"-> {rate:.0f} GFLOP/s)")
    print(f"  taps {BACKBONES['alex'].taps}; {math.ceil(2040 / 4)}x{math.ceil(1356 / 4)} first-layer map")
    weights.unlink()


if __name__ == "__main__":
    main()
