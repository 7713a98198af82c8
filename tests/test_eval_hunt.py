"""`srtool eval` on a researcher's everyday path (evalhunt): dataset spellings and odd folders.

Every case is a defect found by trying it: each test fails on the code before its fix. Images are crops
of the real Set5 images; bicubic is the model (no network, fast).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli_err


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture
def baby(shared_data) -> np.ndarray:
    return np.asarray(Image.open(shared_data / "benchmarks" / "Set5" / "HR" / "baby.png").convert("RGB"))


@pytest.mark.parametrize("size,scale", [(19, 4), (27, 8)])
def test_image_too_small_after_the_mod_crop_is_named_before_any_work(tmp_path, capsys, baby, size, scale):
    """19x19 at x4: 19 - 2*4 = 11 passed the SSIM-window check, but the generated LR comes from the
    mod-cropped 16x16 HR, 8x8 after the border crop: an internal error after the run started."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:size, :size]).save(folder / "small.png")
    Image.fromarray(baby[:64, :64]).save(folder / "fine.png")
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "--scale", str(scale), "-d", str(folder), "--no-progress")
    one_line(code, err, "small.png", f"{size}x{size}", "too small", "mod-crop")
