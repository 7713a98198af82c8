"""srtool.threads: image lanes' thread start/wait under Ctrl-C, the core gate, per-thread torch teams."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch

from srtool.threads import CoreGate, run_in_threads, use_torch_threads


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_ctrl_c_while_waiting_stops_every_thread_and_waits_for_it():
    """A real SIGINT to the waiting thread: stop() is called, KeyboardInterrupt is raised only after
    every thread has returned (none is left running into interpreter shutdown)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGINT)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    stop = threading.Event()
    started = threading.Barrier(3, timeout=30)
    returned = []

    def target():
        started.wait()
        if threading.current_thread().name == "t-0":
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        assert stop.wait(30)  # a long call that ends once it is asked to stop
        time.sleep(0.2)
        returned.append(threading.current_thread().name)

    with pytest.raises(KeyboardInterrupt):
        run_in_threads(target, 3, "t", stop.set)
    assert stop.is_set() and sorted(returned) == ["t-0", "t-1", "t-2"]


def test_run_in_threads_returns_after_all_and_keeps_signal_mask():
    seen = []
    lock = threading.Lock()

    def target():
        with lock:
            seen.append(threading.current_thread().name)

    before = signal.pthread_sigmask(signal.SIG_BLOCK, set()) if hasattr(signal, "pthread_sigmask") else None
    run_in_threads(target, 4, "w", lambda: None)
    assert sorted(seen) == ["w-0", "w-1", "w-2", "w-3"]
    if before is not None:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


def test_core_gate_lets_shared_holders_overlap_and_an_exclusive_one_run_alone():
    """Shared holders overlap (a barrier inside proves it); while an exclusive holder is inside, nobody
    else is, checked at entry, half-way and at exit of every hold."""
    gate = CoreGate()
    lock = threading.Lock()
    inside = {"shared": 0, "exclusive": 0}
    violations, entered = [], []
    both_shared = threading.Barrier(2, timeout=30)

    def check(exclusive):
        with lock:
            if exclusive and (inside["shared"] or inside["exclusive"] != 1):
                violations.append(dict(inside))
            if not exclusive and inside["exclusive"]:
                violations.append(dict(inside))

    exclusive_inside = threading.Event()

    def holder(exclusive, meet, late=False):
        kind = "exclusive" if exclusive else "shared"
        if late:
            exclusive_inside.wait(30)  # asks while an exclusive holder is inside
        with gate.hold(exclusive):
            with lock:
                inside[kind] += 1
                entered.append(kind)
            if exclusive:
                exclusive_inside.set()
            check(exclusive)
            if meet:
                both_shared.wait()  # two shared holders at once, or this times out
            time.sleep(0.03)
            check(exclusive)
            time.sleep(0.03)
            check(exclusive)
            with lock:
                inside[kind] -= 1

    threads = [threading.Thread(target=holder, args=(False, True)) for _ in range(2)]
    threads += [threading.Thread(target=holder, args=(exclusive, False)) for exclusive in (True, False, True, False, False)]
    threads += [threading.Thread(target=holder, args=(False, False, True)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(entered) == 9 and not violations, violations


def test_torch_team_size_is_per_thread():
    before = torch.get_num_threads()
    sizes = []

    def lane():
        use_torch_threads(1)
        torch.ones(64, 64) @ torch.ones(64, 64)
        sizes.append(torch.get_num_threads())

    torch.set_num_threads(2)
    try:
        thread = threading.Thread(target=lane)
        thread.start()
        thread.join()
        assert sizes == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
