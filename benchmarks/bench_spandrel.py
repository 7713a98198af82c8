"""srtool's engine versus spandrel's bare model call, same input, same threads (issue 10).

For RRDBNet-23 (ESRGAN x4, loaded from an old-layout file: srtool maps it onto its own RRDBNet),
SRVGGNetCompact (realesr-general-x4v3 shape) and SwinIR-M (classical x4), all with random weights in
their real layouts: time ``spandrel.ModelLoader().load_from_state_dict(sd)(x)`` (its bare call, float
tensor in, float tensor out) against ``srtool.upscale_image`` on the same image (uint8 in and out,
so srtool also pays conversion and rounding), untiled and tiled (4 tiles, the architecture's own tile
context). Repeats are interleaved (A, B, A, B...) because the machine is shared; the median ratio is
reported. Run: ``.venv/bin/python benchmarks/bench_spandrel.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _models():
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    return {
        "RRDBNet-23 (ESRGAN x4)": (lambda: ESRGAN(num_filters=64, num_blocks=23, scale=4), 48),
        "SRVGGNetCompact (general-x4v3)": (lambda: Compact(num_feat=64, num_conv=32, upscale=4, act_type="prelu"), 96),
        "SwinIR-M (classical x4)": (lambda: SwinIR(upscale=4, img_size=48, window_size=8, embed_dim=180, depths=[6] * 6,
                                                   num_heads=[6] * 6, mlp_ratio=2, upsampler="pixelshuffle"), 48),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    import os
    import tempfile

    import spandrel

    import srtool

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    tmp = tempfile.mkdtemp()
    for name, (build, side) in _models().items():
        if args.only and args.only not in name:
            continue
        torch.manual_seed(0)
        state = build().state_dict()
        path = os.path.join(tmp, "m.pth")
        torch.save(state, path)
        descriptor = spandrel.ModelLoader().load_from_state_dict(state).eval()
        img = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        whole = srtool.load_model(path, device="cpu", precision="fp32", tile=512)
        tiled = srtool.load_model(path, device="cpu", precision="fp32", tile=side // 2)

        def bare():
            with torch.inference_mode():
                descriptor(x)

        bare()
        srtool.upscale_image(whole, img)  # warm-up (oneDNN primitive caches)
        runs = {"spandrel": [], "srtool untiled": [], "srtool tiled": []}
        for _ in range(args.repeats):
            runs["spandrel"].append(_timed(bare))
            runs["srtool untiled"].append(_timed(lambda: srtool.upscale_image(whole, img)))
            runs["spandrel"].append(_timed(bare))
            runs["srtool tiled"].append(_timed(lambda: srtool.upscale_image(tiled, img)))
        med = {k: statistics.median(v) for k, v in runs.items()}
        from srtool.engine import axis_tiles

        def computed(length: int, tile: int, pad: int) -> int:  # LR pixels the network computes along one axis
            return sum(t.win1 - t.win0 for t in axis_tiles(length, tile, pad))

        from srtool.engine import cpu_cache_tile

        default_tile = cpu_cache_tile(whole.network, "fp32", tiled.tile_pad)
        overhead = (computed(1024, default_tile, tiled.tile_pad) / 1024) ** 2
        print(f"{name}: {side}x{side} LR, srtool net {type(whole.network).__name__}, tile pad {tiled.tile_pad}")
        print(f"  spandrel bare call {med['spandrel'] * 1e3:8.1f} ms   srtool untiled {med['srtool untiled'] * 1e3:8.1f} ms "
              f"({med['srtool untiled'] / med['spandrel']:.2f}x)   srtool tiled(4) {med['srtool tiled'] * 1e3:8.1f} ms "
              f"({med['srtool tiled'] / med['spandrel']:.2f}x)")
        print(f"  default CPU tile ({default_tile}) on a 1024x1024 LR image computes {overhead:.3f}x the pixels of one untiled pass "
              f"(context {tiled.tile_pad} px)")


if __name__ == "__main__":
    main()
