"""Sharded batches where users go wrong: a bad option, '-', a missing dataset under torchrun (one line, every
rank stopped, no hang), and WORLD_SIZE set by hand without torchrun (one line, no traceback, no wait).

Two gloo processes on the CPU (OMP_NUM_THREADS=1), bicubic only: each torchrun launch costs a few seconds
of start-up, nothing more."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from srtool.errors import UserError
from srtool.ranks import Launch, is_secondary_on_node, is_secondary_rank, launch


@pytest.fixture
def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**clean, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def photos(benchmarks_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("bird", "head"):  # 72x72 and 70x70 LR images
        shutil.copy(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / f"{name}.png", folder / f"{name}.png")
    return folder


def torchrun(*args: str, env: dict, cwd, stdin=None) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m srtool ARGS` (a hang fails the test after two minutes)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "srtool", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=cwd, stdin=stdin)


def srtool_lines(stderr: str) -> list[str]:
    """srtool's own lines (torchrun adds its log and failure summary to stderr)."""
    return [line for line in stderr.splitlines() if line.startswith(("error:", "internal error:", "│ Invalid"))]


# ----------------------------------------------------------------------------- WORLD_SIZE by hand


@pytest.mark.parametrize("settings, words", [
    ({"WORLD_SIZE": "2"}, "but RANK, MASTER_ADDR, MASTER_PORT are not"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "but MASTER_ADDR, MASTER_PORT are not"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' in the environment is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}, "RANK=5 in the environment is outside 0..1"),
])
def test_a_half_set_torchrun_environment_is_named(monkeypatch, settings, words):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=words) as caught:
        launch()
    assert "torchrun --nproc-per-node N -m srtool" in str(caught.value) and "unset WORLD_SIZE" in str(caught.value)
    assert not is_secondary_rank() and not is_secondary_on_node()


def test_the_environment_torchrun_sets_is_read(monkeypatch):
    for name, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert launch() == Launch(3, 1, 4) and is_secondary_rank() and is_secondary_on_node()
    monkeypatch.setenv("LOCAL_RANK", "0")  # the first process of the second machine
    assert is_secondary_rank() and not is_secondary_on_node()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch() == Launch() and not is_secondary_rank() and not is_secondary_on_node()


@pytest.mark.parametrize("command", ["upscale", "eval"])
def test_world_size_set_by_hand_is_one_line_not_a_traceback_or_a_hang(photos, benchmarks_dir, tmp_path, env, command):
    """`export WORLD_SIZE=2` left in a shell, then a plain `srtool ...`: before, an 'internal error: KeyError'
    (or, with RANK set too, a wait of up to 30 minutes for ranks that never come)."""
    args = (["upscale", str(photos), "-o", str(tmp_path / "out"), "-m", "bicubic"] if command == "upscale" else
            ["eval", "-d", str(benchmarks_dir / "Set5"), "-m", "bicubic", "--json", str(tmp_path / "r.json")])
    done = subprocess.run([sys.executable, "-m", "srtool", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "WORLD_SIZE": "2"})
    assert done.returncode == 2, done.stderr
    assert srtool_lines(done.stderr) == [
        "error: WORLD_SIZE=2 is set in the environment, but RANK, MASTER_ADDR, MASTER_PORT are not: start several "
        "processes with `torchrun --nproc-per-node N -m srtool ...` (it sets them all), or unset WORLD_SIZE to run "
        "one process"], done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------- refusals under torchrun, once


@pytest.mark.parametrize("case", ["unknown format", "usage error", "stdout", "stdin", "missing dataset", "json exists"])
def test_a_refusal_under_torchrun_stops_every_rank_and_is_printed_once(photos, benchmarks_dir, tmp_path, env, case):
    """Every rank finds the same problem before any work; rank 0 alone prints it (before: once per rank,
    and '-' was refused only after every rank had loaded the model, its progress bar already drawn)."""
    out = tmp_path / "out"
    args, expected = {
        "unknown format": (["upscale", str(photos), "-o", str(out), "--format", "xyz"],
                           "error: --format: unknown value 'xyz'; use one of png, jpg, webp, tiff, bmp, gif, keep"),
        "usage error": (["upscale", str(photos), "-o", str(out), "--quality", "200"],
                        "│ Invalid value for '--quality': Input should be less than or equal to 100"),
        "stdout": (["upscale", str(photos / "bird.png"), "-o", "-", "-m", "bicubic"],
                   "error: -o -: standard input and output cannot be split over torchrun ranks; run it in one "
                   "process (without torchrun)"),
        "stdin": (["upscale", "-", "-o", str(out), "-m", "bicubic"],
                  "error: -: standard input and output cannot be split over torchrun ranks; run it in one "
                  "process (without torchrun)"),
        "missing dataset": (["eval", "-d", str(benchmarks_dir / "Set5"), "-d", str(tmp_path / "Set9"), "-m", "bicubic",
                             "--json", str(tmp_path / "r.json")],
                            f"error: dataset '{tmp_path / 'Set9'}': no such folder, and not a known dataset name"),
        "json exists": (["eval", "-d", str(benchmarks_dir / "Set5"), "-m", "bicubic", "--json", str(tmp_path / "old.json")],
                        f"error: --json {tmp_path / 'old.json'}: file exists (use --overwrite to replace it)"),
    }[case]
    (tmp_path / "old.json").write_text("the user's file")
    with open(photos / "bird.png", "rb") as stdin:
        done = torchrun(*args, env=env, cwd=tmp_path, stdin=stdin)
    assert done.returncode != 0
    lines = srtool_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(expected), done.stderr[-3000:]
    # a user error on every rank (torchrun's summary spells it "exitcode  : 2"), and no rank's traceback
    # (a secondary rank stopped by torchrun while it waited used to print one and exit 1)
    assert re.search(r"exitcode\s*:\s*2\b", done.stderr) and not re.search(r"exitcode\s*:\s*1\b", done.stderr)
    assert "srtool.errors" not in done.stderr and "During handling" not in done.stderr, done.stderr[-3000:]
    assert done.stdout == "" and "MP/s" not in done.stderr  # no progress bar: refused before any work
    assert not out.exists() and not (tmp_path / "r.json").exists()
    assert (tmp_path / "old.json").read_text() == "the user's file"


# ------------------------------------------------------------------------------- ranks that disagree


DIFFERENT_PLANS = r"""
import sys
from pathlib import Path
from srtool.errors import UserError
from srtool.loading import bicubic_model
from srtool.sharding import current_shard
from srtool.upscale import run_batch_sharded
from srtool.upscale_jobs import UpscaleOptions, plan_jobs

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
shard = current_shard()
rank = shard.info.rank
options = UpscaleOptions(output=str(out))
jobs = plan_jobs([str(folder)], options, 4)
if rank == 1:  # as if this node's file system still showed an earlier output of the first image
    jobs[0].status, jobs[0].message = "skipped", "exists"
try:
    run_batch_sharded(bicubic_model(4), jobs, options, shard)
    outcome = "finished"
except UserError as exc:
    outcome = f"UserError {exc}"
except Exception as exc:
    outcome = f"{type(exc).__name__} {exc}"
(out.parent / f"rank{rank}.txt").write_text(outcome)
"""


def test_ranks_that_plan_different_batches_stop_instead_of_mixing_up_outcomes(photos, tmp_path, env):
    """Each rank slices its own plan: where two ranks see the files differently (a node's cached view of a
    network file system, another run writing meanwhile), images were done twice or not at all and rank 0
    failed after the work putting the outcomes back (an internal error). Now every rank refuses before any
    work, in one line naming the rank."""
    script = tmp_path / "different_plans.py"
    script.write_text(DIFFERENT_PLANS)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(photos), str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = ("UserError rank 1 planned the batch (inputs, outputs, skips) differently from rank 0: every rank "
                "must see the same files at the same paths (is another run writing into them?)")
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == [expected, expected]
    assert not (tmp_path / "out").exists()


ONE_RANK_FAILS_IN_TRAINING = r"""
import sys
from srtool.cli_common import err_console
from srtool.cli import report_user_error
from srtool.errors import UserError
from srtool.sharding import report_once
from srtool.train.distributed import init_distributed

info = init_distributed("cpu")  # how srtool train joins (not through srtool.sharding)
if info.rank == 1:  # e.g. out of memory, or a damaged store file in this rank's part of the data
    report_once(UserError("rank 1 alone: out of memory"), report_user_error)
    sys.exit(2)
import torch, torch.distributed as dist
try:
    dist.all_reduce(torch.zeros(1))  # rank 0 waits for a rank that will never come
except Exception:
    pass
"""


def test_an_error_one_training_rank_alone_hits_is_printed_by_that_rank(tmp_path, env):
    """srtool train joins its process group itself: an error only rank 1 hit (out of memory, its part of
    the data damaged) was taken for one every rank shares and left unprinted; only torchrun's summary
    showed, without the reason."""
    script = tmp_path / "one_rank.py"
    script.write_text(ONE_RANK_FAILS_IN_TRAINING)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert "rank 1 alone: out of memory" in done.stderr, done.stderr[-3000:]
