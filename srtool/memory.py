"""CPU allocator policy: keep freed feature maps for reuse instead of returning them to the kernel.

Why: glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
gives it back with ``munmap`` on free. A super-resolution network allocates feature maps of 16-270 MB
per layer, so every layer page-faults its output into existence again (the kernel zeroes each 4 KiB
page first). Serving all allocations from the heap (``M_MMAP_MAX = 0``) and never trimming it
(``M_TRIM_THRESHOLD``) lets the next layer reuse the pages of the previous ones. One arena for all
threads (``M_ARENA_MAX = 1``) extends that to threads other than the main one (``srtool upscale``'s image
lanes): glibc gives a thread its own arena, grown and shrunk in 64 MB heaps that fault their pages in
again (a lane's network took 1.5x the main thread's time before, 90,000 faults per six Set14 images).
Measured on the 2-core machine, bundled model, 256x256 input, six passes in one process: page faults 1.02-1.32 M -> 0.35-0.45 M,
system time 2.5-3.2 s -> 0.9-1.3 s, forward 1.21-1.44 s -> 1.03-1.11 s (benchmarks/README.md). Not
every fault goes: torch asks for 64-byte-aligned blocks, and an aligned request does not fit the exact
hole its predecessor of the same size left.

The cost: free pages stay in the process between images (peak RSS for one 256x256 image 1.35-1.72 GB
-> 1.65-2.02 GB) unless an image was large (:func:`release_freed_memory`). Long-running library users who
prefer the memory back set ``SRTOOL_RETAIN_FREED_MEMORY=0`` before loading a model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_applied: bool | None = None
_libc = None


def free_memory() -> int:
    """Bytes of memory the system can give this process now (Linux MemAvailable, or less where a
    container's memory limit leaves less: :mod:`srtool.cgroups`; elsewhere the free physical pages; 4 GB
    when neither can be read). Torch-free, for planning before any model loads."""
    from pathlib import Path

    from .cgroups import memory_headroom

    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 4 << 30
    headroom = memory_headroom()
    return available if headroom is None else min(available, headroom)


def retain_freed_memory() -> bool:
    """Apply the policy once per process (glibc Linux only); True when it is in effect.

    Idempotent and cheap after the first call. Opt out with ``SRTOOL_RETAIN_FREED_MEMORY=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("SRTOOL_RETAIN_FREED_MEMORY", "1").strip().lower() in ("0", "no", "false", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # absent on musl: nothing to do there
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(option, value) for option, value in
                   ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1)))
    if _applied and hasattr(libc, "malloc_trim"):
        global _libc
        _libc = libc
        _libc.malloc_trim.argtypes, _libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return _applied


def release_freed_memory() -> None:
    """Give the pages of freed feature maps back to the kernel (``malloc_trim``) after a large image.

    Why: kept beyond a large image, its free pages sit beside the next big allocations (the PNG
    encoder's image-sized buffers) and add to the peak: a 4000x3000 photo through ``srtool upscale``
    peaked at 4.27 GB with the policy, 3.71 GB with this release, 3.27 GB without the policy (at 168,
    153 and 198 s). The engine calls it only for outputs of 64 MB and more: after every image it would
    re-fault each forward pass's working set, which took the bundled model on 256x256 inputs from 82 %
    back to 59 % of the GEMM rate.
    """
    if _libc is not None:
        _libc.malloc_trim(0)
