"""CPU thread policy: the network's threads own the cores; helper threads take what is left.

torch runs each convolution on ``torch.get_num_threads()`` OpenMP threads, one per core, that wait for
each other at the end of every layer. A decode/encode thread that takes one of those cores in the
middle of a layer stalls every other OpenMP thread until the preempted one catches up, so on a small
machine concurrent image I/O costs the network far more than its own CPU time. Helper threads
therefore run at a lower scheduling priority (Linux keeps a nice value per thread): they use the idle
moments (between layers and images, while the main thread blends tiles) and yield the cores as soon as
the network needs them, whatever ``-j`` is. Work that runs *between* network calls instead (the CPU
path of ``srtool upscale`` for one image) is split with :func:`run_shared` over the calling thread and
helpers. Several images on the CPU avoid the waits altogether: each runs on its own one-core team
(:func:`use_torch_threads`), and :class:`CoreGate` lets a large image have all cores to itself.
"""

from __future__ import annotations

import itertools
import numbers
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TypeVar

from .errors import UserError

T = TypeVar("T")

HELPER_NICENESS = 10  # added to the process's nice value for I/O helper threads
WAIT_POLL_SECONDS = 0.02  # how often run_in_threads looks whether its threads have returned


def usable_cores() -> int:
    """CPU cores this process may keep busy: its affinity mask (what torch's own check uses), or fewer
    where a container's CPU quota grants less time than that (:mod:`srtool.cgroups`)."""
    from .cgroups import cpu_quota_cores

    quota, visible = cpu_quota_cores(), visible_cores()
    return visible if quota is None else min(visible, quota)


def visible_cores() -> int:
    """Cores in this process's affinity mask (all of the host's in a container with only a quota)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def fit_threads_to_cpu_quota() -> int | None:
    """Size torch's (and NumPy's) thread teams to a container's CPU quota; the new count, or None.

    torch starts one OpenMP thread per visible core, and a quota (``docker run --cpus 2`` on a 32-core
    host) does not hide cores: the team outnumbers the time it may use and is throttled as a whole. Only
    when the quota is the tighter limit, and never over the user's own ``OMP_NUM_THREADS``: before
    torch is imported (the command line) through the environment, which OpenMP and the BLAS libraries
    read; afterwards with ``torch.set_num_threads``.
    """
    import sys

    try:
        cores = usable_cores()
    except Exception:  # noqa: BLE001 -- best effort: a cgroup file system this code cannot read changes nothing
        return None
    if os.environ.get("OMP_NUM_THREADS") or cores >= visible_cores():
        return None
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(min(cores, sys.modules["torch"].get_num_threads()))
    else:
        os.environ["OMP_NUM_THREADS"] = str(cores)
    return cores


def default_workers() -> int:
    """``-j``'s default for ``srtool upscale`` and ``srtool eval``: one image per core, at most 4."""
    return min(4, usable_cores())


def workers_or_default(workers: object) -> int:
    """``workers=None``: :func:`default_workers` (as on the command line); anything else :func:`check_workers`."""
    return default_workers() if workers is None else check_workers(workers)


def check_workers(workers: object) -> int:
    """``workers=`` (``-j``) from Python, refused as the command line refuses it: a whole number, at least 1.

    Why: ``0``, ``-2`` or ``True`` were taken as one image at a time without a word, and ``2.5`` or
    ``"2"`` failed deep inside the lanes with a TypeError. More than the cores is fine (capped there).
    """
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise UserError(f"workers={workers!r}: images at once (-j) must be a whole number of at least 1")
    return int(workers)


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


def use_torch_threads(count: int) -> None:
    """Give torch ops called from *this* thread a team of ``count`` OpenMP threads; other threads keep theirs.

    OpenMP keeps the team size per calling thread, so two image lanes can each run their network on
    one core. ``torch.set_num_threads`` also sets the process-wide value that torch copies into a
    thread on that thread's first op; asking for the current count first makes that copy happen now,
    so another lane changing the process-wide value later cannot resize this thread's team.
    """
    import torch

    torch.get_num_threads()
    torch.set_num_threads(count)


class CoreGate:
    """Images that share the cores (any number at once) or need all of them (one, alone).

    Image lanes hold the gate shared while their image is in flight; a large image holds it
    exclusively, so that its memory never adds to another image's. An exclusive request waits for
    the shared holders to finish and keeps new ones out meanwhile, so it cannot starve.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        with self._cond:
            if exclusive:
                self._exclusive_waiting += 1
                self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                self._exclusive_waiting -= 1
                self._exclusive = True
            else:
                self._cond.wait_for(lambda: not self._exclusive and self._exclusive_waiting == 0)
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


class LaneCores:
    """The cores of :func:`run_lanes`'s lanes: one image per lane on the lane's own team of torch threads,
    or a large image alone on all of them (:class:`CoreGate`), so two large images never share memory."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.gate = CoreGate()

    @contextmanager
    def image(self, alone: bool, team: int) -> Iterator[None]:
        """Hold the cores for one image: shared on the lane's ``team``, or (``alone``) all ``total`` threads."""
        with self.gate.hold(exclusive=alone):
            if alone:
                use_torch_threads(self.total)
            try:
                yield
            finally:
                if alone:
                    use_torch_threads(team)


def run_lanes(lane: Callable[[int, LaneCores], None], count: int, name: str, stop: threading.Event) -> None:
    """Run ``lane(team, cores)`` in ``count`` threads, each on its own team of ``team`` torch threads.

    The calling thread's torch threads are dealt out so that every core is used (when they do not
    divide evenly, some lanes get one more; ``count`` is at most the calling thread's torch threads).
    A lane's unexpected exception, or Ctrl-C (see :func:`run_in_threads`), sets ``stop``; lanes are
    expected to check it before each item (and pass it to the engine as its ``cancel`` event) and
    return. The first such exception is raised here once every lane has
    returned, and the calling thread's torch thread count is restored (also the process-wide value
    that threads started later copy).
    """
    total = torch_threads()
    count = max(1, min(count, total))
    cores = LaneCores(total)
    teams = [total // count + (k < total % count) for k in range(count)]
    teams_lock = threading.Lock()
    errors: list[BaseException] = []

    def body() -> None:
        with teams_lock:
            team = teams.pop()
        use_torch_threads(team)
        try:
            lane(team, cores)
        except BaseException as exc:  # noqa: BLE001 -- raised again in the calling thread
            errors.append(exc)
            stop.set()

    try:
        run_in_threads(body, count, name, stop.set)
    finally:
        use_torch_threads(total)
    if errors:
        raise errors[0]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the calling thread's torch ops on a one-thread team, then give it back its team.

    For many small memory-bound ops (the finiteness check of every weight of a model file): each one on
    a two-thread team ends in a barrier, and on a busy machine (a browser, another job, a shared VM)
    every barrier waits for the OS to schedule the second thread, a whole time slice per op, while one
    thread does the same op in microseconds. Results are the same whatever the team size.
    """
    import torch

    count = torch.get_num_threads()
    if count == 1:
        yield
        return
    use_torch_threads(1)
    try:
        yield
    finally:
        use_torch_threads(count)


def torch_threads() -> int:
    """The size of the calling thread's torch team (see :func:`use_torch_threads`)."""
    import torch

    return torch.get_num_threads()


def run_in_threads(target: Callable[[], None], count: int, name: str, stop: Callable[[], None]) -> None:
    """Run ``target()`` in ``count`` new threads; return once every one of them has returned.

    Ctrl-C in the calling thread calls ``stop()`` (the targets are expected to finish soon after) and is
    raised once every thread has returned, so no thread is left inside a torch op when the interpreter
    shuts down (such a thread aborts the process: "terminate called without an active exception").
    ``Thread.join`` is not used for the wait: a KeyboardInterrupt that lands inside it makes CPython
    3.11 mark a thread that is still running as finished (``_wait_for_tstate_lock`` releases the lock
    that the live thread holds), and interpreter shutdown then does not wait for that thread. Nor is a
    blocking lock or semaphore: an interrupt can land after such a wait has taken its count (a count
    lost for good), and in one CI run a SIGINT sent while the main thread waited on a semaphore was only
    seen 30 s later. The calling thread polls a list the threads append to instead, in short sleeps that
    Ctrl-C always interrupts (:data:`WAIT_POLL_SECONDS`).
    """
    finished: list[None] = []  # list.append is atomic: no lock for the waiting thread to hold or lose

    def body() -> None:
        try:
            target()
        finally:
            finished.append(None)

    started = 0
    interrupt: BaseException | None = None
    # SIGINT is held back while the threads start (they inherit the mask, so it always reaches this
    # thread), so that the count of started threads is exact when Ctrl-C arrives; it is let through
    # inside the wait below, where a pending one is raised and handled like any other
    masked = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if masked else None
    try:
        for index in range(count):
            threading.Thread(target=body, name=f"{name}-{index}").start()
            started += 1
    except Exception as exc:  # noqa: BLE001 -- e.g. no more threads: raised below, once the started ones return
        stop()
        interrupt = exc
    stopping = False
    while True:
        try:
            if masked:
                masked = False
                signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            if stopping:
                stop()
                stopping = False
            if len(finished) == started:
                break
            time.sleep(WAIT_POLL_SECONDS)
        except KeyboardInterrupt as exc:  # stop() runs in the try above, so a second Ctrl-C cannot skip the wait
            interrupt = interrupt or exc
            stopping = True
    if interrupt is not None:
        raise interrupt

