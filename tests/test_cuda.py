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
