"""The run and cache locks die with the process that took them, not with its forked children."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from srtool.atomic import waiting_lock
from srtool.errors import UserError
from srtool.train.runstate import RunLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock and fork are POSIX")


def forked_sleeper() -> int:
    """A forked child that lingers, like a DataLoader worker noticing its parent is gone. Returns once
    the child runs Python code (fork's child hooks have run by then)."""
    ready, said = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(said, b"1")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(said)
    assert os.read(ready, 1) == b"1"
    os.close(ready)
    return pid


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_a_released_run_lock_is_free_while_a_forked_child_lives(tmp_path: Path):
    """flock belongs to the open file, which fork shares: after `kill -9` of a training, its DataLoader
    workers (forked while the run was locked) kept the run directory locked for 2-3 s, and a prompt
    `--resume` was refused as "another srtool train is training in this run directory"."""
    lock = RunLock(tmp_path)
    child = forked_sleeper()
    try:
        with pytest.raises(UserError, match="another srtool train"):
            RunLock(tmp_path)  # still held by this process
        lock.close()  # what the death of this process does
        RunLock(tmp_path).close()  # the child's copy no longer holds it
    finally:
        stop(child)


def test_a_released_cache_lock_is_free_while_a_forked_child_lives(tmp_path: Path):
    import fcntl

    path = tmp_path / ".srtool-cache.lock"
    with waiting_lock(path):
        child = forked_sleeper()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError before the fix
        finally:
            os.close(fd)
    finally:
        stop(child)
