"""Progress within an image: the engine reports every tile, `srtool upscale`'s bar moves with it.

A single large photo takes minutes on a CPU; a bar counting whole images would sit at 0/1 with no
ETA until the end. These tests run the bundled model on Set14's real LR images with small tiles."""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import srtool
from srtool.engine import axis_tiles, upscale_array
from srtool.upscale import run_batch
from srtool.upscale_jobs import UpscaleOptions, plan_jobs

from cli_runner import run_cli

TILE = 48


@pytest.fixture(scope="module")
def model():
    return srtool.load_model("default", precision="fp32", tile=TILE)


@pytest.fixture(scope="module")
def set14_lr(benchmarks_dir: Path) -> Path:
    return benchmarks_dir / "Set14" / "LR_bicubic" / "X4"


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_every_tile_reports_its_fraction_and_no_pixel_changes(model, set14_lr):
    image = _read(set14_lr / "baboon.png")  # 125 x 120: 3 x 3 tiles of at most 48 px
    calls = len(axis_tiles(image.shape[0], TILE, model.tile_pad)) * len(axis_tiles(image.shape[1], TILE, model.tile_pad))
    assert calls == 9
    fractions: list[float] = []
    with_progress = upscale_array(model, image, progress=fractions.append)
    assert fractions == [k / calls for k in range(1, calls + 1)]
    np.testing.assert_array_equal(with_progress, upscale_array(model, image))


def test_the_python_api_reports_tiles_of_a_pil_image(model, set14_lr):
    fractions: list[float] = []
    with Image.open(set14_lr / "baboon.png") as im:
        big = srtool.upscale_image(model, im.convert("RGB"), progress=fractions.append)
    assert big.size == (125 * 4, 120 * 4)
    assert fractions == [k / 9 for k in range(1, 10)]


def test_bicubic_reports_once_when_done(set14_lr):
    fractions: list[float] = []
    upscale_array(srtool.load_model("bicubic"), _read(set14_lr / "baboon.png"), progress=fractions.append)
    assert fractions == [1.0]


@pytest.mark.parametrize("jobs", [1, 2])
def test_batch_reports_each_image_in_its_own_thread_before_it_is_done(model, set14_lr, tmp_path, jobs, two_torch_threads):
    """In order (-j 1) and in image lanes (-j 2): each image's fractions rise to 1, from the thread
    that upscales it, and all of them come before that image's per-image callback."""
    sources = [set14_lr / f"{name}.png" for name in ("baboon", "comic", "zebra")]
    options = UpscaleOptions(output=str(tmp_path / "out"), workers=jobs)
    planned = plan_jobs([str(s) for s in sources], options, model.scale)
    events: list[tuple[str, str, float, str]] = []
    lock = threading.Lock()

    def on_tile(job, fraction):
        with lock:
            events.append(("tile", job.label, fraction, threading.current_thread().name))

    def on_image(job, megapixels, seconds):
        with lock:
            events.append(("image", job.label, 1.0, threading.current_thread().name))

    result = run_batch(model, planned, options, progress=on_image, image_progress=on_tile)
    assert [job.status for job in result.jobs] == ["written"] * 3
    for job, source in zip(result.jobs, sources):
        mine = [e for e in events if e[1] == job.label]
        tiles = [fraction for kind, _, fraction, _ in mine if kind == "tile"]
        h, w = _read(source).shape[:2]
        assert len(tiles) == math.ceil(h / TILE) * math.ceil(w / TILE)  # 48-px tiles, balanced
        assert tiles == sorted(tiles) and tiles[-1] == 1.0 and tiles[0] > 0
        assert mine[-1][0] == "image"  # the image is counted done after its last tile
        threads = {name for kind, _, _, name in mine if kind == "tile"}
        assert len(threads) == 1
        if jobs > 1:
            assert threads != {"MainThread"}  # lanes: the lane's thread, not the main one
    lanes = {name for kind, _, _, name in events if kind == "tile"}
    assert (len(lanes) == 2) if jobs > 1 else (lanes == {"MainThread"})


def test_animation_frames_share_the_image_fraction(model, set14_lr, tmp_path):
    frame = Image.open(set14_lr / "baboon.png").convert("RGB")
    source = tmp_path / "two.gif"
    frame.save(source, save_all=True, append_images=[frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], duration=100)
    options = UpscaleOptions(output=str(tmp_path / "out"), workers=1)
    planned = plan_jobs([str(source)], options, model.scale)
    fractions: list[float] = []
    result = run_batch(model, planned, options, image_progress=lambda job, f: fractions.append(f))
    assert [job.status for job in result.jobs] == ["written"]
    assert len(fractions) == 18 and fractions[8] == 0.5 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)


def test_the_cli_bar_moves_with_the_tiles_and_ends_whole(set14_lr, tmp_path, monkeypatch):
    """`srtool upscale` on one image: the bar's position goes through the tile fractions (9 tiles of
    1/9) and ends exactly at 1, set from whole images plus in-flight fractions (a running sum of
    ninths can fall short of one and show 0/1 at the end)."""
    from rich.console import Console
    from rich.progress import Progress

    from srtool import cli, cli_common

    positions: list[float] = []
    update = Progress.update

    def recording_update(self, task_id, **fields):
        update(self, task_id, **fields)
        positions.append(self.tasks[0].completed)

    monkeypatch.setattr(Progress, "update", recording_update)
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(cli_common, "err_console", terminal)
    monkeypatch.setattr(cli, "err_console", terminal)
    assert run_cli("upscale", str(set14_lr / "baboon.png"), "-o", str(tmp_path / "out"), "--tile", str(TILE),
                   "--precision", "fp32") == 0
    assert positions[:-1] == pytest.approx([k / 9 for k in range(1, 10)]) and positions[-1] == 1
    assert "1/1" in terminal.file.getvalue()
    assert (tmp_path / "out" / "baboon_x4.png").is_file()
