"""CPU thread policy: the network's threads own the cores; helper threads take what is left.

torch runs each convolution on ``torch.get_num_threads()`` OpenMP threads, one per core, that wait for
each other at the end of every layer. A decode/encode thread that takes one of those cores in the
middle of a layer stalls every other OpenMP thread until the preempted one catches up, so on a small
machine concurrent image I/O costs the network far more than its own CPU time. Helper threads
therefore run at a lower scheduling priority (Linux keeps a nice value per thread): they use the idle
moments (between layers and images, while the main thread blends tiles) and yield the cores as soon as
the network needs them, whatever ``-j`` is. Work that runs *between* network calls instead (the CPU
path of ``srtool upscale``) is split with :func:`run_shared` over the calling thread and helpers.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")

HELPER_NICENESS = 10  # added to the process's nice value for I/O helper threads


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which is what torch's own check uses)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def lower_thread_priority(increment: int = HELPER_NICENESS) -> bool:
    """Make the calling thread yield the CPU to the process's other threads; False where unsupported.

    On Linux ``setpriority(PRIO_PROCESS, tid)`` changes only this thread (see setpriority(2), NOTES);
    elsewhere it would renice the whole process, so it is not attempted.
    """
    if not hasattr(os, "setpriority") or not os.uname().sysname == "Linux":
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
        return True
    except OSError:
        return False


def run_shared(task: Callable[[int], T], count: int, helpers: Executor | None = None, helper_count: int = 0) -> list[T]:
    """``[task(0), ..., task(count - 1)]``, the calls shared by this thread and up to ``helper_count``
    threads of ``helpers``: each takes the next unclaimed index until none is left.

    The calling thread always works too, so a helper that is busy elsewhere (or never scheduled while
    the network's threads hold the cores) delays nothing: the caller then does every part itself.
    An exception in any call is raised here once all claimed calls have finished.
    """
    results: list = [None] * count
    claims = itertools.count()
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(claims)
            if index >= count:
                return
            results[index] = task(index)

    futures = [helpers.submit(work) for _ in range(min(helper_count, count - 1))] if helpers is not None else []
    try:
        work()
    finally:
        for future in futures:
            if not future.cancel():  # a helper that never started is not waited for
                future.result()
    return results
