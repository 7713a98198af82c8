"""The bundled default model: what it is, and that it reproduces the README's Results table."""

from __future__ import annotations

import json

import pytest

from srtool.evaluate import evaluate_dataset
from srtool.loading import load_model
from srtool.model_files import BUNDLED_WEIGHTS_DIR, bundled_model_path

# The README's Results table (srtool eval, protocol y), for the bundled model.
README_Y = {"Set5": (31.49, 0.8849), "Set14": (27.98, 0.7677)}
BICUBIC_Y = {"Set5": 28.4177, "Set14": 25.9933}
MIN_GAIN_DB = {"Set5": 2.0, "Set14": 1.9}  # Set5: the bar


def test_bundled_model_is_the_compact_srresnet_and_small():
    path = bundled_model_path()
    assert path is not None and path.name == "compact-x4.safetensors"
    assert path.stat().st_size <= 6_000_000
    meta = json.loads((BUNDLED_WEIGHTS_DIR / "compact-x4.json").read_text())
    assert meta["preset"] == "compact" and meta["stage"] == "psnr" and meta["weights"] == "ema"
    assert meta["generator"]["arch"] == "srresnet" and meta["generator"]["scale"] == 4
    model = load_model("default", device="cpu")
    assert not model.is_bicubic and model.scale == 4 and model.name == "compact-x4"


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_bundled_model_reproduces_readme_and_beats_bicubic(benchmarks_dir, dataset):
    model = load_model("default", device="cpu", precision="fp32")
    result = evaluate_dataset(model, benchmarks_dir / dataset, protocol="y", progress=False, strict=True)
    psnr, ssim = README_Y[dataset]
    assert result.psnr == pytest.approx(psnr, abs=0.006) and result.ssim == pytest.approx(ssim, abs=6e-5)
    assert result.psnr - BICUBIC_Y[dataset] >= MIN_GAIN_DB[dataset]
