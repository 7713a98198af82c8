"""The CPU time and memory a Linux container grants this process (cgroup v1 and v2). Torch-free.

Why: Docker's ``--cpus`` and Kubernetes' CPU limits are a CFS bandwidth *quota*, not an affinity mask:
the process still sees every host core (``os.sched_getaffinity``, ``nproc`` and torch's default thread
count alike), starts an OpenMP thread per core, and the kernel then throttles the whole team for the rest
of every 100 ms period once the quota is spent. Threads that wait for each other at the end of each layer
convoy on the throttled ones (benchmarks/README.md, "CPU quota"). A memory limit is likewise invisible in
``/proc/meminfo``: past it the kernel's OOM killer ends the process instead of the allocation failing.

Both are read as the kernel exposes them: the process's group from ``/proc/self/cgroup``, the mount of
its hierarchy from ``/proc/self/mountinfo``, then every group from the process's own up to the mount's
root (a parent's limit binds its children too); the tightest one counts. ``None`` means no limit (or
nothing readable: not Linux, no cgroup mount, no permission).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

PROC_SELF = Path("/proc/self")
_UNLIMITED_V1 = 1 << 62  # cgroup v1 spells "no memory limit" as the largest page-aligned int64


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(proc_self: Path) -> list[tuple[str, Path, str, set[str]]]:
    """(root within the hierarchy, mount point, filesystem type, super options) of each cgroup mount."""
    text = _read(proc_self / "mountinfo") or ""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 4:
            continue
        fstype = fields[sep + 1]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((_unescape(fields[3]), Path(_unescape(fields[4])), fstype, set(fields[sep + 3].split(","))))
    return mounts


def _group_dirs(proc_self: Path, controller: str) -> list[Path]:
    """The folders of the process's ``controller`` group and of its ancestors up to the mount's root.

    cgroup v1 (a hierarchy per controller, ``N:cpu,cpuacct:/path``) is preferred where the controller
    is mounted there; otherwise the unified v2 hierarchy (``0::/path``).
    """
    text = _read(proc_self / "cgroup") or ""
    paths: dict[str, str] = {}  # "v2" or a v1 controller -> the group's path in its hierarchy
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths["v2"] = path
        for name in controllers.split(","):
            if name:
                paths[name] = path
    files = ("cpu.max", "cpu.cfs_quota_us") if controller == "cpu" else ("memory.max", "memory.limit_in_bytes")
    mounts = _mounts(proc_self)
    v1 = [(root, point, paths[controller]) for root, point, fstype, options in mounts
          if fstype == "cgroup" and controller in options and controller in paths]
    v2 = [(root, point, paths["v2"]) for root, point, fstype, _ in mounts if fstype == "cgroup2" and "v2" in paths]
    for root, point, group in v1 + v2:  # v1 first: in hybrid setups the v2 mount has no controllers
        # A group outside the mount's root (another namespace's view) is read at the mount's root.
        inside = root == "/" or group == root or group.startswith(root.rstrip("/") + "/")
        relative = group[len(root.rstrip("/")):] if inside else ""
        names = [p for p in relative.split("/") if p]
        if ".." in names:  # a group above this namespace's root ("0::/../.."): only the root is ours to read
            names = []
        dirs = [point.joinpath(*names[:k]) for k in range(len(names), -1, -1)]
        if any(os.path.exists(folder / name) for folder in dirs for name in files):  # never raises
            return dirs
    return []


def cpu_quota_cores(proc_self: Path = PROC_SELF) -> int | None:
    """Whole cores' worth of CPU time the tightest quota over this process grants (at least 1), or None.

    Rounded down (``1.5`` cores -> 1), as Go's automaxprocs does: one thread more than the quota can
    run is enough to get the whole team throttled.
    """
    tightest: float | None = None
    for folder in _group_dirs(proc_self, "cpu"):
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            fields = v2.split()
            quota, period = (fields + ["100000"])[:2] if fields else ("max", "100000")
        else:
            quota, period = (_read(folder / "cpu.cfs_quota_us") or "-1").strip(), (_read(folder / "cpu.cfs_period_us") or "100000").strip()
        try:
            cores = int(quota) / int(period)
        except ValueError:  # "max": no quota at this level
            continue
        if cores > 0 and (tightest is None or cores < tightest):
            tightest = cores
    return None if tightest is None else max(1, math.floor(tightest))


def _stat_value(folder: Path, keys: tuple[str, ...]) -> int:
    """The first of ``keys`` that ``memory.stat`` has (v1 lists ``inactive_file`` before its hierarchical
    ``total_inactive_file``, which is the one wanted)."""
    stats = {}
    for line in (_read(folder / "memory.stat") or "").splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return next((stats[key] for key in keys if key in stats), 0)


def memory_headroom(proc_self: Path = PROC_SELF) -> int | None:
    """Bytes this process may still allocate before the tightest memory limit over it, or None.

    The page cache the kernel reclaims first (``inactive_file``) counts as free, as ``docker stats`` and
    the kubelet count it; a limit already exceeded gives 0.
    """
    tightest: int | None = None
    for folder in _group_dirs(proc_self, "memory"):
        v2 = _read(folder / "memory.max")
        if v2 is not None:
            limit_text, usage_text, cache = v2.strip(), _read(folder / "memory.current"), ("inactive_file",)
        else:
            limit_text = (_read(folder / "memory.limit_in_bytes") or "").strip()
            usage_text, cache = _read(folder / "memory.usage_in_bytes"), ("total_inactive_file", "inactive_file")
        if not limit_text.isdigit() or int(limit_text) >= _UNLIMITED_V1:
            continue
        try:
            usage = int((usage_text or "").strip())
        except ValueError:
            continue
        headroom = max(0, int(limit_text) - usage + _stat_value(folder, cache))
        tightest = headroom if tightest is None else min(tightest, headroom)
    return tightest
