"""Run control of ``srtool prepare``: one run per ``--out`` at a time, and a prompt stop on Ctrl-C.

* Lock: ``--out/.srtool-prepare/lock`` is held with ``flock`` for the whole run and holds the owner's pid,
  so a second run on the same ``--out`` says which process is writing there instead of racing it (the
  kernel drops the lock when the owner dies, so a killed run never leaves a stale lock). The file is
  emptied when the run ends.
* Stop: worker processes ignore SIGINT (the parent handles it); on Ctrl-C the parent sends them SIGTERM,
  which a worker turns into an exception so the atomic write in progress deletes its temporary file.
  What is left are complete files only; the next run redoes the images that had no record yet.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

LOCK_NAME = "lock"
STOP_GRACE_S = 0.8  # how long stopped workers get to delete their temporary files before being killed


@contextlib.contextmanager
def out_lock(state_dir: Path, out: Path) -> Iterator[None]:
    """Hold the exclusive lock of one ``--out`` folder, or fail naming the process that holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not serialised there
        yield
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise UserError(
                f"--out {out}: another srtool prepare (pid {holder}) is writing there; wait for it to finish or "
                "stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            # left empty (not deleted: unlinking a flock'd file races a run that opened it), so a finished
            # run's folder is byte-identical whichever process made it
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


_STOPPING = False


def _raise_on_sigterm(_signum, _frame) -> None:
    global _STOPPING
    _STOPPING = True
    raise SystemExit(143)  # unwinds the worker's atomic writes, which delete their temporary files


def worker_signals() -> None:
    """In each worker: Ctrl-C is the parent's to handle; SIGTERM (the parent's stop) unwinds cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)


def stoppable(fn, *args):
    """Run one job in a worker; once stopped, leave the process instead of taking the next job
    (the executor's worker loop would otherwise catch the exit and carry on with the queue)."""
    if _STOPPING:
        os._exit(143)
    try:
        return fn(*args)
    except SystemExit:
        os._exit(143)  # the job has unwound: its temporary files are gone


def stop_workers(pool) -> None:
    """Stop a ``ProcessPoolExecutor`` now: cancel the queue, SIGTERM the workers, kill stragglers."""
    processes = list(getattr(pool, "_processes", {}).values())  # the executor offers no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.terminate()
    import time

    deadline = time.monotonic() + STOP_GRACE_S
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
