"""Container limits (srtool/cgroups.py): the kernel's files as cgroup v1 and v2 lay them out, then real
cgroups where this machine lets the tests make them (root, a writable cgroup file system)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from srtool import cgroups
from srtool.threads import visible_cores


def _tree(tmp_path: Path, mounts: list[str], membership: str, files: dict[str, str]) -> Path:
    """A fake ``/proc/self`` (``mountinfo``, ``cgroup``) and cgroup files under ``tmp_path``; mount
    points in ``mounts`` lines are written as ``{root}`` + a folder under ``tmp_path``."""
    proc = tmp_path / "proc_self"
    proc.mkdir(parents=True)
    (proc / "mountinfo").write_text("".join(line.format(root=tmp_path) + "\n" for line in mounts))
    (proc / "cgroup").write_text(membership)
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc


V2_MOUNT = "30 23 0:26 / {root}/cg rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"


def test_v2_tightest_quota_and_memory_of_the_ancestors(tmp_path):
    proc = _tree(tmp_path, [V2_MOUNT], "0::/kubepods/pod1/ctr\n", {
        "cg/kubepods/pod1/ctr/cpu.max": "max 100000\n",
        "cg/kubepods/pod1/cpu.max": "250000 100000\n",  # 2.5 CPUs for the pod: 2 threads
        "cg/kubepods/cpu.max": "800000 100000\n",
        "cg/kubepods/pod1/ctr/memory.max": "1073741824\n",
        "cg/kubepods/pod1/ctr/memory.current": "536870912\n",
        "cg/kubepods/pod1/ctr/memory.stat": "anon 1000\nfile 2000\nactive_file 5\ninactive_file 104857600\n",
        "cg/kubepods/pod1/memory.max": "max\n",
        "cg/kubepods/pod1/memory.current": "999999999999\n",
    })
    assert cgroups.cpu_quota_cores(proc) == 2
    assert cgroups.memory_headroom(proc) == (1 << 30) - (1 << 29) + 104857600


def test_v2_sub_core_quota_still_gives_one_thread_and_no_limit_gives_none(tmp_path):
    proc = _tree(tmp_path, [V2_MOUNT], "0::/a\n", {"cg/a/cpu.max": "20000 100000\n", "cg/a/memory.max": "max\n"})
    assert cgroups.cpu_quota_cores(proc) == 1
    assert cgroups.memory_headroom(proc) is None
    proc2 = _tree(tmp_path / "b", [V2_MOUNT], "0::/a\n", {"cg/a/cpu.max": "max 100000\n"})
    assert cgroups.cpu_quota_cores(proc2) is None


def test_v1_docker_without_a_cgroup_namespace_reads_the_mount_root(tmp_path):
    """Docker on cgroup v1: /proc/self/cgroup names /docker/ID, and the mount shows that group itself."""
    proc = _tree(tmp_path, [
        "40 31 0:34 /docker/abc {root}/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct",
        "41 31 0:35 /docker/abc {root}/memory ro,nosuid - cgroup cgroup rw,memory",
    ], "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "150000\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "memory/memory.limit_in_bytes": "2147483648\n",
        "memory/memory.usage_in_bytes": "1073741824\n",
        # v1 lists the group's own inactive_file before the hierarchical total: the total counts
        "memory/memory.stat": "cache 10\ninactive_file 1\ntotal_cache 10\ntotal_inactive_file 268435456\n",
    })
    assert cgroups.cpu_quota_cores(proc) == 1
    assert cgroups.memory_headroom(proc) == (1 << 30) + (1 << 28)


def test_v1_unlimited_values_and_hybrid_mounts_prefer_the_v1_controller(tmp_path):
    """systemd's hybrid layout mounts an empty v2 hierarchy beside the v1 controllers."""
    proc = _tree(tmp_path, [
        "35 31 0:32 / {root}/unified rw - cgroup2 cgroup2 rw",
        "36 31 0:33 / {root}/cpu rw - cgroup cgroup rw,cpu",
        "37 31 0:34 / {root}/memory rw - cgroup cgroup rw,memory",
    ], "0::/user.slice\n3:cpu:/user.slice\n4:memory:/user.slice\n", {
        "unified/user.slice/cgroup.procs": "",
        "cpu/user.slice/cpu.cfs_quota_us": "-1\n",
        "cpu/user.slice/cpu.cfs_period_us": "100000\n",
        "cpu/cpu.cfs_quota_us": "300000\n",
        "cpu/cpu.cfs_period_us": "100000\n",
        "memory/user.slice/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/user.slice/memory.usage_in_bytes": "5\n",
    })
    assert cgroups.cpu_quota_cores(proc) == 3  # the root's quota binds the child with none of its own
    assert cgroups.memory_headroom(proc) is None


def test_escaped_mount_points_and_unreadable_or_garbled_files(tmp_path):
    mount = "30 23 0:26 / {root}/with\\040space rw - cgroup2 cgroup2 rw"
    proc = _tree(tmp_path, [mount, "garbage line", "1 2 3"], "0::/g\nnot a cgroup line\n", {
        "with space/g/cpu.max": "100000 100000\n",
        "with space/g/memory.max": "not a number\n",
    })
    assert cgroups.cpu_quota_cores(proc) == 1
    assert cgroups.memory_headroom(proc) is None
    bad = _tree(tmp_path / "bad", [V2_MOUNT], "0::/g\n", {"cg/g/cpu.max": "fifty 100000\n", "cg/g/memory.max": "100\n"})
    assert cgroups.cpu_quota_cores(bad) is None
    assert cgroups.memory_headroom(bad) is None  # a limit without a readable usage is not guessed
    above = _tree(tmp_path / "above", [V2_MOUNT], "0::/../../other\n", {"cg/cpu.max": "200000 100000\n"})
    assert cgroups.cpu_quota_cores(above) == 2  # a group outside the namespace: its root is read, nothing above
    empty = tmp_path / "none"
    empty.mkdir()
    assert cgroups.cpu_quota_cores(empty) is None and cgroups.memory_headroom(empty) is None


# Real cgroups: the child process is moved into a new group (a quota / a memory limit) before it starts.

def _new_group(controller: str, settings: dict[str, str]) -> Path:
    dirs = cgroups._group_dirs(cgroups.PROC_SELF, controller)
    if not dirs:
        pytest.skip(f"no cgroup {controller} controller readable here")
    group = dirs[0] / f"srtool-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        for name, value in settings.items():
            if (group / name).exists():
                (group / name).write_text(value)
                break
        else:
            raise OSError(f"none of {list(settings)} in {group}")
    except OSError as exc:
        if group.exists():
            group.rmdir()
        pytest.skip(f"cannot make a cgroup here ({exc}): needs root and a writable cgroup file system")
    return group


def _run_in(group: Path, code: str, env: dict[str, str]) -> str:
    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, preexec_fn=enter, capture_output=True,
                              text=True, timeout=120)
    finally:
        group.rmdir()
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1].split()


FIT_AND_COUNT = """
import sys
from srtool.cli import main
try:
    main(["presets", "list", "-q"])  # the command line's start, before any torch import
except SystemExit:
    pass
from srtool.threads import usable_cores
import torch
print("THREADS", usable_cores(), torch.get_num_threads())
"""


@pytest.mark.skipif(visible_cores() < 2, reason="a one-core machine: a quota cannot be tighter than the cores")
def test_a_real_cpu_quota_sizes_srtool_and_torch_threads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    group = _new_group("cpu", {"cpu.max": "100000 100000", "cpu.cfs_quota_us": "100000"})
    assert _run_in(group, FIT_AND_COUNT, env) == ["THREADS", "1", "1"]
    group = _new_group("cpu", {"cpu.max": "100000 100000", "cpu.cfs_quota_us": "100000"})
    # the user's own thread count wins
    assert _run_in(group, FIT_AND_COUNT, {**env, "OMP_NUM_THREADS": "2"}) == ["THREADS", "1", "2"]


def test_a_real_memory_limit_bounds_free_memory():
    limit = 512 << 20
    group = _new_group("memory", {"memory.max": str(limit), "memory.limit_in_bytes": str(limit)})
    (free,) = _run_in(group, "from srtool.memory import free_memory; print(free_memory())", dict(os.environ))
    assert 0 < int(free) <= limit
