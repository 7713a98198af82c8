"""CPU thread policy: the network's threads own the cores; helper threads take what is left.

torch runs each convolution on ``torch.get_num_threads()`` OpenMP threads, one per core, that wait for
each other at the end of every layer. A decode/encode thread that takes one of those cores in the
middle of a layer stalls every other OpenMP thread until the preempted one catches up, so on a small
machine concurrent image I/O costs the network far more than its own CPU time. Helper threads
therefore run at a lower scheduling priority (Linux keeps a nice value per thread): they use the idle
moments (between layers and images, while the main thread blends tiles) and yield the cores as soon as
the network needs them, whatever ``-j`` is.
"""

from __future__ import annotations

import os
import threading

HELPER_NICENESS = 10  # added to the process's nice value for I/O helper threads


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
