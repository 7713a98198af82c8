"""Sharded batches: `torchrun --nproc-per-node 2 -m srtool upscale|eval` (two gloo processes on the CPU) give
the same output files and the same per-image results as one process; rank 0 reports the whole batch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from srtool.sharding import Shard
from srtool.train.distributed import DistInfo


def _Rank(rank: int, world: int) -> DistInfo:
    return DistInfo(rank, rank, world)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 14])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_slices_cover_every_item_once_and_interleave_back_in_order(n, world):
    items = list(range(n))
    parts = [Shard(_Rank(r, world)).take(items) for r in range(world)]
    assert sorted(x for p in parts for x in p) == items
    assert Shard(_Rank(0, world)).interleave(parts) == items


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def srtool(*args: str, env: dict, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "srtool"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "srtool"]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_two_ranks_upscale_the_same_files_as_one_process(benchmarks_dir, tmp_path, env):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("bird", "butterfly", "head"):  # the three smallest Set5 LR images (72x72, 64x64, 70x70)
        shutil.copy(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / f"{name}.png", inputs / f"{name}.png")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "head_x4.png").write_bytes(b"the user's file")  # skipped by every rank alike
    one = srtool("upscale", str(inputs), "-o", str(tmp_path / "one"), env=env)
    assert one.returncode == 0, one.stderr
    two = srtool("upscale", str(inputs), "-o", str(tmp_path / "two"), env=env, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("bird", "butterfly"):
        assert (tmp_path / "two" / f"{name}_x4.png").read_bytes() == (tmp_path / "one" / f"{name}_x4.png").read_bytes()
    assert (tmp_path / "two" / "head_x4.png").read_bytes() == b"the user's file"
    # rank 0 alone prints the summary of the whole batch: 2 written (one per rank), 1 skipped
    assert two.stderr.count("srtool upscale") == 1 and two.stderr.count("skipped:") == 1
    assert re.search(r"\b2\s*│\s*1\s*│\s*0\s*│", two.stderr), two.stderr  # written, skipped, failed
    assert "(rank 0's 1 of 2 images)" in two.stderr  # rank 0's bar says it counts its share


@pytest.mark.slow
def test_two_ranks_evaluate_like_one_process_and_rank0_writes_the_table(benchmarks_dir, tmp_path, env):
    common = ["eval", "-d", str(benchmarks_dir / "Set5"), "-m", "default", "-m", "bicubic"]
    one = srtool(*common, "--json", str(tmp_path / "one.json"), env=env)
    assert one.returncode == 0, one.stderr
    two = srtool(*common, "--json", str(tmp_path / "two.json"), env=env, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert len(a["results"]) == len(b["results"]) == 2
    for ra, rb in zip(a["results"], b["results"]):
        assert [i["name"] for i in rb["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
        assert [(i["name"], i["psnr"], i["ssim"]) for i in ra["images"]] == \
               [(i["name"], i["psnr"], i["ssim"]) for i in rb["images"]]
        assert (ra["psnr"], ra["ssim"], ra["n_images"]) == (rb["psnr"], rb["ssim"], rb["n_images"])
    assert two.stdout.count("Set5") == one.stdout.count("Set5") > 0  # the table is printed once, by rank 0


RUN_EVERYWHERE = r"""
import sys
from srtool.errors import UserError
from srtool.sharding import current_shard

shard = current_shard()
rank = shard.info.rank
out = open(f"{sys.argv[1]}/rank{rank}.txt", "w")  # one file per rank: their stdout lines would interleave

def user_error_on_rank_1():
    if rank == 1:
        raise UserError("photos/bad.png: corrupt or truncated image")
    return "fine"

def bug_on_rank_0():
    if rank == 0:
        raise ZeroDivisionError("a bug")
    return "fine"

for work in (user_error_on_rank_1, bug_on_rank_0):
    try:
        print(f"rank {rank} {work.__name__}: returned {shard.run_everywhere(work)}", file=out)
    except UserError as exc:
        print(f"rank {rank} {work.__name__}: UserError {exc}", file=out)
    except ZeroDivisionError as exc:
        print(f"rank {rank} {work.__name__}: ZeroDivisionError {exc}", file=out)
print(f"rank {rank} {shard.run_everywhere(lambda: 'all well')}", file=out)
out.close()
"""


@pytest.mark.slow
def test_a_failure_on_one_rank_stops_every_rank_instead_of_hanging(tmp_path, env):
    """A sharded step ends in a gather: a rank that stopped on a bad image would leave the others waiting
    until gloo's 30-minute timeout. With run_everywhere every rank learns of the failure and raises the
    same one-line UserError naming the rank; a bug keeps its own exception (and traceback) where it
    happened. Two real gloo processes."""
    script = tmp_path / "run_everywhere.py"
    script.write_text(RUN_EVERYWHERE)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line for rank in (0, 1) for line in (tmp_path / f"rank{rank}.txt").read_text().splitlines()}
    for rank in (0, 1):
        assert f"rank {rank} user_error_on_rank_1: UserError rank 1: photos/bad.png: corrupt or truncated image" in lines
        assert f"rank {rank} all well" in lines  # the group is still usable afterwards
    assert "rank 0 bug_on_rank_0: ZeroDivisionError a bug" in lines
    assert "rank 1 bug_on_rank_0: UserError rank 0: ZeroDivisionError: a bug" in lines


@pytest.mark.slow
def test_a_bad_image_stops_every_rank_with_its_name(benchmarks_dir, tmp_path, env):
    """A garbled dataset image under torchrun: every rank refuses it up front, rank 0 prints it once, no hang."""
    data = tmp_path / "Set5"
    shutil.copytree(benchmarks_dir / "Set5", data)
    head = data / "HR" / "head.png"
    raw = head.read_bytes()
    n = len(raw)  # start and end markers intact, pixel data garbled
    head.write_bytes(raw[: n // 3] + bytes(b ^ 0x5A for b in raw[n // 3 : n // 2]) + raw[n // 2 :])
    two = srtool("eval", "-d", str(data), "-m", "bicubic", "--json", str(tmp_path / "r.json"), env=env, ranks=2)
    assert two.returncode != 0
    assert two.stderr.count("head.png: corrupt or truncated image") == 1, two.stderr[-3000:]
    assert "exitcode: 2" in two.stderr and "exitcode: 1" not in two.stderr  # a user error on every rank
    assert not any(line.strip().startswith("File") and "/srtool/" in line for line in two.stderr.splitlines())
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_two_ranks_score_plain_folders_like_one_process(benchmarks_dir, tmp_path, env):
    """`srtool eval --metric niqe -d FOLDER` without a model (images as they are) is sharded too."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("baby", "bird", "butterfly", "head", "woman"):
        shutil.copy(benchmarks_dir / "Set5" / "HR" / f"{name}.png", folder / f"{name}.png")
    common = ["eval", "-d", str(folder), "--metric", "niqe"]
    one = srtool(*common, "--json", str(tmp_path / "one.json"), env=env)
    assert one.returncode == 0, one.stderr
    two = srtool(*common, "--json", str(tmp_path / "two.json"), env=env, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert [(i["name"], i["niqe"]) for i in a["results"][0]["images"]] == \
           [(i["name"], i["niqe"]) for i in b["results"][0]["images"]]
    assert len(b["results"][0]["images"]) == 5
    assert two.stdout.count("photos") == one.stdout.count("photos") > 0
