"""DistributedDataParallel set-up from torchrun's environment (no home-made process management).

``torchrun --nproc_per_node=N -m srtool train ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group
(NCCL on CUDA, gloo on the CPU). Without them (a plain ``srtool train``) it is a single process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    # a gloo group beside NCCL: host-side flags (signals, non-finite) are reduced without touching the
    # GPU stream, so agreeing on them never waits for the GPU to finish its queued work
    cpu_group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    from ..ranks import launch

    launched = launch()  # a WORLD_SIZE set by hand without the rest is one clear line, not a KeyError or a hang
    if launched.world_size <= 1:
        return DistInfo()
    info = DistInfo(launched.rank, launched.local_rank, launched.world_size)
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    if dist.get_backend() != "gloo":
        info.cpu_group = dist.new_group(backend="gloo")
    return info


def any_flag(flags: list[bool], info: DistInfo, device: torch.device | None = None) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks (one collective), so every rank takes the same branch.

    The flags are host values, so they travel through gloo on the CPU (the side group under NCCL)."""
    if not info.enabled:
        return flags
    t = torch.tensor([float(f) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.cpu_group)
    return [bool(v) for v in t.tolist()]


def global_min(value: int, info: DistInfo) -> int:
    """The smallest ``value`` over all ranks (host-side, through gloo)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=info.cpu_group)
    return int(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
