"""Issue 15 item 9: through the Python API, a model whose output has the wrong channel count, the
wrong scale or NaN values is recorded as failed on every image and the dataset mean is marked
incomplete (never scored as if it were a valid output)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from srtool.engine import SRModel, upscale_array
from srtool.evaluate import evaluate_dataset


class Faulty(nn.Module):
    """A one-conv upscaler declaring x4 that returns ``channels`` channels at ``factor`` x, optionally NaN."""

    scale = 4

    def __init__(self, channels: int = 3, factor: int = 4, bad_value: float | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)
        self.factor, self.bad_value = factor, bad_value

    def forward(self, x):
        y = F.interpolate(self.conv(x), scale_factor=self.factor, mode="nearest")
        if self.bad_value is not None:
            y = y.clone()
            y[..., 3:5, 3:5] = self.bad_value
        return y


@pytest.mark.parametrize(
    "network, reason",
    [
        (Faulty(channels=1), "1 channels instead of 3"),
        (Faulty(factor=5), "x5"),
        (Faulty(bad_value=math.nan), "NaN"),
        (Faulty(bad_value=math.inf), "infinite"),
    ],
    ids=["one-channel", "x5-for-x4", "nan", "inf"],
)
def test_bad_outputs_are_failures_and_the_mean_is_incomplete(shared_data, network, reason):
    torch.manual_seed(0)
    model = SRModel(name="faulty", scale=4, network=network.eval(), tile=64)
    result = evaluate_dataset(model, shared_data / "benchmarks" / "Set5", progress=False)
    assert len(result.images) == 5 and all(r.failed for r in result.images)
    assert all(reason in r.error for r in result.images), [r.error for r in result.images]
    assert not result.complete and math.isnan(result.psnr)


def test_engine_refuses_the_output_directly():
    import numpy as np

    from srtool.engine import ModelOutputError

    model = SRModel(name="faulty", scale=4, network=Faulty(bad_value=math.nan).eval(), tile=32)
    with pytest.raises(ModelOutputError, match="NaN"):
        upscale_array(model, np.zeros((40, 40, 3), np.uint8))
    good = SRModel(name="ok", scale=4, network=Faulty().eval(), tile=32)
    assert upscale_array(good, np.zeros((40, 40, 3), np.uint8)).shape == (160, 160, 3)
