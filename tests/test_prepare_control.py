"""`srtool prepare` run control: two runs on one --out (the second names the first's pid), and Ctrl-C stops
within about a second leaving only complete files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srtool.atomic import sha256_file


def start(source: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "srtool", "prepare", "folder", str(source), "--out", str(out),
                             "--workers", "2", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    records = out / ".srtool-prepare" / "records"
    deadline = time.monotonic() + timeout
    while not (records.is_dir() and len(list(records.glob("*.json"))) >= n):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "prepare made no progress"
        time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGINT to a child are POSIX")
def test_second_run_names_the_first_and_ctrl_c_stops_at_once_leaving_complete_files(shared_data, tmp_path):
    source, out = shared_data / "train" / "BSD200", tmp_path / "out"
    first = start(source, out)
    try:
        wait_for_records(out, 3, first)
        second = subprocess.run([sys.executable, "-m", "srtool", "prepare", "folder", str(source), "--out", str(out),
                                 "--no-progress"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"another srtool prepare (pid {first.pid})" in lines[0] and str(out) in lines[0]
        # Ctrl-C: the run stops within about a second, not after the queued images
        wait_for_records(out, 10, first)
        sent = time.monotonic()
        first.send_signal(signal.SIGINT)
        code = first.wait(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if first.poll() is None:
            first.kill()
    assert code == 130
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
    records = list((out / ".srtool-prepare" / "records").glob("*.json"))
    assert len(records) < 150, "the run was not stopped early"
    # only complete files: no temporaries, every image decodes, every array is whole, every record verifies
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")]
    for p in files:
        if p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
        elif p.suffix == ".npy":
            assert np.load(p).dtype == np.uint8  # a truncated array would not load
    for r in records:
        record = json.loads(r.read_text())
        assert all(sha256_file(out / rel) == digest for rel, digest in record["outputs"].items())
    # and the lock went with the process: a new run can take it at once
    import fcntl

    with open(out / ".srtool-prepare" / "lock", "rb+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
