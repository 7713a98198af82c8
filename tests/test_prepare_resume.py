"""kill -9 in the middle of `srtool prepare folder`, run again: the output equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from srtool.prepare import prepare_folder


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kill_9_then_rerun_is_identical_to_an_uninterrupted_run(shared_data, tmp_path):
    sources = [shared_data / "train" / "T91"]
    reference = tmp_path / "reference"
    prepare_folder(sources, reference, scale=4, workers=2, progress=False)

    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "srtool", "prepare", "folder", *map(str, sources), "--out", str(out),
           "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = out / ".srtool-prepare" / "records"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run finished before it could be killed: {proc.stderr.read().decode()}"
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers, mid-write
    proc.wait()
    done = len(list(records.glob("*.json")))
    assert 5 <= done < 91, done
    assert not (out / "manifest.json").exists()  # written last: an interrupted run has none
    # nothing half-written carries a final name: every PNG and array there decodes
    for png in (out / "HR").glob("*.png"):
        Image.open(png).load()
    for npy in (out / "store").rglob("*.npy"):
        np.load(npy)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert tree(out) == tree(reference)
    assert not [p for p in out.rglob(".*.tmp")]
