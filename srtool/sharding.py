"""Sharded batches: ``torchrun --nproc-per-node N -m srtool upscale|eval ...`` splits the inputs over ranks.

Every rank plans the whole batch the same way (the same sorted inputs, the same skip/refusal
decisions), then takes a deterministic slice of the work: items ``rank, rank + N, rank + 2N, ...``
(round-robin, so large and small images spread evenly). Each image is processed exactly as a single
process would process it (the engine's automatic tile depends only on the model and the device type,
never on free memory), so the outputs and per-image results are identical to a one-process run.
Results travel to rank 0 as Python objects over gloo (host-side; no GPU collective is needed), where
they are put back into input order: rank 0 prints the table and writes the report files.

Where there are GPUs, each rank uses ``cuda:LOCAL_RANK``. Several machines need nothing more than
torchrun's own options (``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``) and a filesystem every
node sees at the same paths. The process group comes from :mod:`srtool.train.distributed` (the one
place that reads torchrun's environment).
"""

from __future__ import annotations

import atexit
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .errors import UserError
from .ranks import is_secondary_on_node, is_secondary_rank

if TYPE_CHECKING:  # torch is imported when a process group is joined, not to print an error
    from .train.distributed import DistInfo

T = TypeVar("T")

# How long a rank other than 0 waits before it exits silently on an error found before the group was
# joined (a bad option or a missing input: every rank finds the same one): torchrun stops the other
# ranks as soon as one ends, so rank 0 must have printed the line first. A few torchrun monitor
# intervals (0.1 s) plus the skew between ranks doing the same checks.
SETTLE_SECONDS = 3.0


@dataclass
class Shard:
    """This process's place in a sharded run (a single process is rank 0 of 1)."""

    info: DistInfo

    @property
    def enabled(self) -> bool:
        return self.info.enabled

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def take(self, items: list[T]) -> list[T]:
        """This rank's slice: every world_size-th item starting at its rank."""
        return items[self.info.rank :: self.info.world_size] if self.enabled else list(items)

    def interleave(self, parts: list[list[T]]) -> list[T]:
        """Inverse of :meth:`take`: the per-rank slices (in rank order) back in input order."""
        merged: list[T] = []
        for i in range(max((len(p) for p in parts), default=0)):
            merged.extend(p[i] for p in parts if i < len(p))
        return merged

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (in rank order); None on the other ranks."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        parts: list[Any] | None = [None] * self.info.world_size if self.is_main else None
        dist.gather_object(value, parts, dst=0, group=self.info.cpu_group)
        return parts

    def run_everywhere(self, work: Callable[[], T]) -> T:
        """This rank's part of a sharded step; if any rank fails, every rank fails with the same message.

        Why: the step ends in a collective (gather), so a rank that stopped on a bad image would leave
        the others waiting for it until gloo's timeout (30 minutes). Each rank reports its outcome to all
        (one small all-gather); a user error anywhere becomes one line naming the rank, on every rank.
        A bug (not a :class:`UserError`) is re-raised with its traceback on the rank that hit it.
        """
        if not self.enabled:
            return work()
        import torch.distributed as dist

        failure: BaseException | None = None
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 -- reported to the other ranks, then re-raised
            failure = exc
        message = None if failure is None else str(failure) if isinstance(failure, UserError) \
            else f"{type(failure).__name__}: {failure}"
        messages: list[str | None] = [None] * self.info.world_size
        dist.all_gather_object(messages, message, group=self.info.cpu_group)
        if failure is not None and not isinstance(failure, UserError):
            raise failure
        failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
        if failed:
            if len(failed) == self.info.world_size and len({text for _, text in failed}) == 1:
                shared = UserError(failed[0][1])  # every rank found the same problem (a bad dataset image)
            else:
                shared = UserError("; ".join(f"rank {rank}: {text}" for rank, text in failed))
            shared.every_rank = True  # the same message on every rank: rank 0 prints it (report_once)
            raise shared
        return result

    def agree(self, value: Any, what: str) -> None:
        """Every rank must hold the same ``value`` (e.g. its plan of the batch): else a UserError on every rank.

        Why: the slices are taken from each rank's own plan. Where two ranks see the files differently (a
        filesystem that a node caches, another run writing into the same folder meanwhile), images would
        be done twice or not at all and the outcomes gathered into the wrong places. ``what`` says, for the
        message, what the ranks did."""
        if not self.enabled:
            return
        import torch.distributed as dist

        values: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(values, value, group=self.info.cpu_group)
        differing = [rank for rank, other in enumerate(values) if other != values[0]]
        if differing:
            error = UserError(f"rank{'s' if len(differing) > 1 else ''} {', '.join(map(str, differing))} {what} "
                              "differently from rank 0: every rank must see the same files at the same paths "
                              "(is another run writing into them?)")
            error.every_rank = True
            raise error

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def device(self, requested: str) -> str:
        """``auto``/``cuda`` -> this rank's own GPU (``cuda:LOCAL_RANK``) when sharded on a GPU machine."""
        import torch

        if self.enabled and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.info.local_rank % torch.cuda.device_count()}"
        return requested


_CURRENT: Shard | None = None


def current_shard() -> Shard:
    """Join torchrun's process group once per process (gloo); a plain run is a one-rank shard."""
    from .train.distributed import init_distributed

    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Shard(init_distributed("cpu"))  # a plain run: rank 0 of 1, no process group
        if _CURRENT.enabled:
            atexit.register(leave)
    return _CURRENT


def leave() -> None:
    """Tear the process group down (at the end of a sharded command)."""
    from .train.distributed import shutdown

    global _CURRENT
    if _CURRENT is not None:
        shutdown(_CURRENT.info)
    _CURRENT = None


def report_once(error: BaseException, report: Callable[[BaseException], None]) -> None:
    """``report(error)`` once where every rank stops on the same error: one line, not one per rank.

    Every rank has the same error when :meth:`Shard.run_everywhere` raised it: rank 0 prints it, the
    others wait at a barrier until it has (torchrun stops every rank once one exits). An error from
    before the process group was joined (options and inputs, checked alike by every rank of a machine)
    is printed by each machine's first rank (once on one machine; a node that sees other files still
    says so) while the others wait :data:`SETTLE_SECONDS`. Any other error is printed by the rank that
    hit it. A plain run just reports.
    """
    joined = _CURRENT is not None and _CURRENT.enabled
    shared = bool(getattr(error, "every_rank", False))
    if joined:
        speaks = not shared or not is_secondary_rank()
    elif _process_group_up():  # joined another way (srtool train's DDP): only the rank that hit it knows
        speaks = True
    else:
        speaks = not is_secondary_on_node()
    if speaks:
        report(error)
    try:  # torchrun stops the ranks still waiting here once one exits (SIGTERM): expected, not an error
        if joined and shared:
            import torch.distributed as dist

            try:  # bounded: a rank that hit a bug instead (its own traceback) never comes
                dist.monitored_barrier(timeout=timedelta(seconds=SETTLE_SECONDS * 10))
            except Exception:  # noqa: BLE001 -- only waiting here; the error is already decided
                pass
        elif not speaks:
            time.sleep(SETTLE_SECONDS)  # best effort: the first rank is expected to print within it
    except KeyboardInterrupt:
        pass


def _process_group_up() -> bool:
    """Whether torch.distributed has a process group (without importing torch when it is not loaded)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()
