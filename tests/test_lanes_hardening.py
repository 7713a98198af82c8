"""Image lanes (srtool upscale / srtool eval on the CPU) under bad input and shared state: workers=
validated from Python as on the command line, the LPIPS HR cache per lane and never two at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from srtool.errors import UserError
from srtool.evaluate import evaluate_models, run_eval
from srtool.loading import bicubic_model

from test_perceptual import _random_backbone, weights_dir  # noqa: F401 -- a fixture
from test_upscale import _write, nearest_model

BAD_WORKERS = [0, -2, True, 2.5, "2", None]


@pytest.mark.parametrize("workers", BAD_WORKERS)
def test_eval_workers_must_be_a_whole_number_of_at_least_one(benchmarks_dir, workers):
    """``workers=0`` (or -2, True, 2.5, "2") from Python was taken silently as one lane, or failed with
    a TypeError traceback; the CLI refuses ``-j 0``. Now a UserError names the value before any work."""
    if workers is None:  # None is evaluate_models' own default (up to 4 lanes), never an error
        assert evaluate_models([bicubic_model(4)], benchmarks_dir / "Set5", progress=False, workers=None)[0].complete
        return
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):
        evaluate_models([bicubic_model(4)], benchmarks_dir / "Set5", progress=False, workers=workers)
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):  # before any model loads
        run_eval([str(benchmarks_dir / "no-such-model.safetensors")], [benchmarks_dir / "Set5"], progress=False,
                 workers=workers)


@pytest.mark.parametrize("workers", BAD_WORKERS)
def test_upscale_workers_must_be_a_whole_number_of_at_least_one(tmp_path, workers, two_torch_threads):
    from srtool.upscale import UpscaleOptions, check_request, plan_jobs, run_batch

    src = _write(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8))
    opts = UpscaleOptions(output=str(tmp_path / "out"), workers=workers)
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):
        check_request([str(src)], opts)  # before the model loads
    model = nearest_model()
    good = UpscaleOptions(output=str(tmp_path / "out"), workers=2)
    jobs = plan_jobs([str(src)], good, model)
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):
        run_batch(model, jobs, opts)  # run_batch called on its own
    assert [job.status for job in jobs] == ["pending"] and not (tmp_path / "out").exists()
