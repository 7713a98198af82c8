"""srtool train across processes: a run killed with SIGKILL and resumed ends bitwise equal to an
uninterrupted one; two DDP processes (torchrun, gloo) at batch b match one process at batch 2b.

Both feed a plain folder of HR images (T91) as --data, so they also cover the prepare-into-cache path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srtool.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # one thread per process: deterministic and light on a shared 2-core machine
    return {**os.environ, "SRTOOL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "OMP_NUM_THREADS": "1"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "srtool", "train", *args]


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "it_per_s")} for r in records]


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(shared_data, benchmarks_dir, tmp_path, env):
    common = [
        "--preset", "srresnet", "--data", str(shared_data / "train" / "T91"), "--no-progress",
        "--set", "model.generator.n_blocks=1", "--set", "model.generator.n_feats=16", "--set", "train.batch_size=4",
        "--set", "train.hr_crop=32", "--set", "train.epochs=1", "--set", "train.iters_per_epoch=40",
        "--set", "checkpoint.every=5", "--set", "checkpoint.keep_last=2", "--set", "log.every=1",
        "--set", "validation.every=10", "--set", f"validation.datasets=['{benchmarks_dir / 'Set5'}']",
        "--set", "train.lr=1e-3", "--set", "train.ema_decay=0.5",
    ]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    res = subprocess.run(command(*common, "--out", str(whole), "--set", "train.num_workers=0"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    # the same run with two loader workers, killed without warning after its second checkpoint
    proc = subprocess.Popen(command(*common, "--out", str(cut), "--set", "train.num_workers=2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (cut / "checkpoints" / "iter_00000010.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (cut / "checkpoints" / "iter_00000040.pt").exists(), "the kill came too late to test anything"
    res = subprocess.run(command("--resume", str(cut), "--no-progress"), env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    a = load_checkpoint(whole / "checkpoints" / "iter_00000040.pt")
    b = load_checkpoint(cut / "checkpoints" / "iter_00000040.pt")
    for key in ("generator", "ema"):
        assert tensors_equal(a[key], b[key]), key
    for param_state_a, param_state_b in zip(a["optimizer_g"]["state"].values(), b["optimizer_g"]["state"].values()):
        assert tensors_equal(param_state_a, param_state_b)
    assert a["rng"]["torch"].equal(b["rng"]["torch"]) and a["best"] == b["best"]
    assert tensors_equal(load_file(whole / "exports" / "best.safetensors"), load_file(cut / "exports" / "best.safetensors"))
    # the log of the resumed run is the uninterrupted run's log, not a mix of both attempts
    assert train_records(whole) == train_records(cut)
    # checkpoints hold only tensors and plain containers
    torch.load(cut / "checkpoints" / "iter_00000040.pt", weights_only=True)


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process_with_twice_the_batch(shared_data, tmp_path, env):
    common = [
        "--preset", "rrdbnet", "--data", str(shared_data / "train" / "T91"), "--no-progress", "--device", "cpu",
        "--set", "model.generator.n_blocks=1", "--set", "model.generator.n_feats=16", "--set", "model.generator.growth=8",
        "--set", "train.hr_crop=32", "--set", "train.epochs=1", "--set", "train.iters_per_epoch=4",
        "--set", "checkpoint.every=4", "--set", "validation.datasets=[]", "--set", "train.num_workers=0",
        "--set", "train.ema_decay=0.9",
    ]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    res = subprocess.run(command(*common, "--out", str(single), "--set", "train.batch_size=4"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "srtool",
                "train", *common, "--out", str(ddp), "--set", "train.batch_size=2"]
    res = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_checkpoint(single / "checkpoints" / "iter_00000004.pt")
    b = load_checkpoint(ddp / "checkpoints" / "iter_00000004.pt")
    assert b["data"]["world_size"] == 2 and b["data"]["global_batch"] == a["data"]["global_batch"] == 4
    from srtool.config import load_preset
    from srtool.models import build_network

    torch.manual_seed(0)  # train.seed: the initial weights of both runs
    preset = load_preset("rrdbnet", [v for i, v in enumerate(common) if i and common[i - 1] == "--set"])
    init = build_network(preset.model.generator).state_dict()
    moved = 0.0
    for key in a["generator"]:
        torch.testing.assert_close(b["generator"][key], a["generator"][key], rtol=1e-4, atol=2e-6)
        moved = max(moved, (a["generator"][key] - init[key]).abs().max().item())
    assert moved > 3e-4  # 4 Adam steps at lr 2e-4 really trained: the comparison is not vacuous
    env_info = json.loads((ddp / "environment.json").read_text())
    assert env_info["world_size"] == 2
    assert not (ddp / "log.jsonl").read_text().count('"iter": 4,') > 1  # only rank 0 logs


def test_sigterm_saves_a_checkpoint_then_resume_finishes(shared_data, tmp_path, env):
    run = tmp_path / "run"
    args = [
        "--preset", "srresnet", "--data", str(shared_data / "train" / "T91"), "--out", str(run), "--no-progress",
        "--set", "model.generator.n_blocks=1", "--set", "model.generator.n_feats=16", "--set", "train.batch_size=4",
        "--set", "train.hr_crop=32", "--set", "train.epochs=1", "--set", "train.iters_per_epoch=100",
        "--set", "checkpoint.every=1000", "--set", "log.every=1", "--set", "validation.datasets=[]",
        "--set", "train.num_workers=1",
    ]
    proc = subprocess.Popen(command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.is_file() and log.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr  # 128 + SIGTERM, as shells expect
    assert "interrupted (SIGTERM)" in stderr and f"--resume {run}" in stderr
    (saved,) = sorted((run / "checkpoints").glob("iter_*.pt"))
    stopped_at = load_checkpoint(saved)["iteration"]
    assert 3 <= stopped_at < 100 and (run / "exports" / "last.safetensors").is_file()
    res = subprocess.run(command("--resume", str(run), "--no-progress"), env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(run / "checkpoints" / "iter_00000100.pt")["iteration"] == 100
