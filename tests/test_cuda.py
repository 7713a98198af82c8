"""CUDA paths (run by benchmarks/gpu_check.sh on a GPU host; skipped where there is no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from srtool.loading import load_model
from srtool.models import SRResNet, SRResNetConfig
from srtool.models.export import save_export

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def export_path(tmp_path_factory):
    torch.manual_seed(0)
    net = SRResNet(SRResNetConfig(n_blocks=4, n_feats=32, batch_norm=False, trunk_batch_norm=False, tail_kernel=3))
    return save_export(tmp_path_factory.mktemp("m") / "tiny.safetensors", net)


def _image(h=150, w=170):
    rng = np.random.default_rng(0)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def test_cuda_fp32_matches_cpu(export_path):
    img = _image()
    cpu = load_model(export_path, device="cpu", precision="fp32")(img).astype(int)
    gpu = load_model(export_path, device="cuda", precision="fp32")(img).astype(int)
    assert gpu.shape == cpu.shape == (600, 680, 3)
    assert np.abs(gpu - cpu).max() <= 1  # TF32 convolutions may move a value by one level


def test_cuda_tiled_batched_equals_untiled(export_path):
    img = _image(230, 190)
    whole = load_model(export_path, device="cuda", precision="fp32", tile=512)(img).astype(int)
    tiled = load_model(export_path, device="cuda", precision="fp32", tile=48, tile_pad=24)(img).astype(int)
    diff = np.abs(whole - tiled)
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.999


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_psnr_cost_is_small(export_path, precision):
    img = _image()
    ref = load_model(export_path, device="cuda", precision="fp32")(img).astype(np.float64)
    half = load_model(export_path, device="cuda", precision=precision)(img).astype(np.float64)
    mse = np.mean((ref - half) ** 2)
    assert mse == 0 or 10 * np.log10(255**2 / mse) > 40


def test_cuda_training_bf16_runs_and_exports(tmp_path):
    from srtool.imageio import write_png
    from srtool.prepare import prepare_folder

    rng = np.random.default_rng(1)
    src = tmp_path / "hr"
    for i in range(6):
        base = rng.random((9, 9, 3))
        img = np.kron(base, np.ones((16, 16, 1)))[:136, :136]  # smooth blocks: learnable
        write_png(src / f"img{i}.png", (img * 255).astype(np.uint8))
    data = prepare_folder([src], tmp_path / "prep", scale=4)
    bench = tmp_path / "bench"
    prepare_bench = [sys.executable, "-m", "srtool", "prepare", "benchmark", str(src), "--out", str(bench), "--scale", "4"]
    assert subprocess.run(prepare_bench, capture_output=True, text=True).returncode == 0
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "srtool", "train", "--preset", "compact", "--data", str(data), "--out", str(run),
           "--device", "cuda", "--no-progress", "--set", "train.iters_per_epoch=40", "--set", "train.batch_size=8",
           "--set", "train.hr_crop=64", "--set", "validation.every=20", "--set", "checkpoint.every=20",
           "--set", f"validation.datasets=['{bench}']", "--set", "log.every=10", "--set", "train.num_workers=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    env = json.loads((run / "environment.json").read_text())
    assert "cuda" in json.dumps(env).lower()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss/pixel"] for r in records if r["kind"] == "train"]
    assert losses and all(np.isfinite(losses))
    model = load_model(run, device="cuda")
    assert model(_image(20, 20)).shape == (80, 80, 3)


def test_cuda_graph_training_step_matches_eager_and_reads_nothing_back(tmp_path):
    """train.compile_mode=reduce-overhead (CUDA graphs) gives the eager step's losses within bf16 noise,
    and no step synchronises with the host (torch's sync debug mode turns any sync into an error)."""
    from srtool.imageio import write_png
    from srtool.models.vgg import vgg19_features
    from srtool.prepare import prepare_folder
    from srtool.train import Trainer, TrainOptions

    rng = np.random.default_rng(2)
    src = tmp_path / "hr"
    for i in range(4):
        write_png(src / f"img{i}.png", (rng.random((160, 160, 3)) * 255).astype(np.uint8))
    data = prepare_folder([src], tmp_path / "prep", scale=4)
    vgg = tmp_path / "vgg.pth"
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, vgg)
    tiny = ["model.generator.n_blocks=2", "model.generator.n_feats=32", "train.batch_size=4", "train.hr_crop=64",
            "train.precision=bf16", "validation.datasets=[]", "train.num_workers=0", "train.iters_per_epoch=100",
            "log.every=1000", "checkpoint.every=1000"]
    losses = {}
    for mode in ("default", "reduce-overhead"):
        extra = [] if mode == "default" else ["train.compile=true", f"train.compile_mode={mode}"]
        trainer = Trainer(TrainOptions(preset="srgan", data=[data], out=tmp_path / mode, overrides=tiny + extra,
                                       vgg_weights=str(vgg), device="cuda", progress=False), warn=lambda m: None)
        g = torch.Generator().manual_seed(0)
        hr = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=g).cuda()
        lr = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g).cuda()
        history = []
        for step in range(6):
            if step == 4:  # warmed up (compiled, captured): from now on any host sync raises
                torch.cuda.set_sync_debug_mode("error")
            try:
                terms, _ = trainer.step(lr, hr)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            history.append({k: v.clone() for k, v in terms.items()})
        losses[mode] = {k: torch.stack([h[k] for h in history]).float().cpu() for k in history[0]}
        trainer.close()
    for key, eager in losses["default"].items():
        torch.testing.assert_close(losses["reduce-overhead"][key], eager, rtol=5e-2, atol=1e-3, msg=key)
