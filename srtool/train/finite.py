"""Non-finite loss detection without a host synchronisation per step.

Reading a loss back to Python (``bool(torch.isfinite(loss))``, ``.item()``) makes the CPU wait for the
GPU at every step, which leaves a fast GPU idle between kernels. :class:`NonFiniteWatch` records, with
tensor ops only, the first iteration whose loss was NaN/inf and the loss terms of that iteration; the
trainer reads it back (one small copy) at the steps where it reads anything anyway: log, validation
and checkpoint steps. Nothing is ever saved from a poisoned state, because every save is such a step.
"""

from __future__ import annotations

import torch

from .distributed import DistInfo, global_min


class NonFiniteWatch:
    """First non-finite iteration (and its loss terms) since the run started, kept on the device."""

    def __init__(self) -> None:
        self.first: torch.Tensor | None = None  # int64 scalar: first bad iteration, -1 = none yet
        self.values: torch.Tensor | None = None  # loss terms of that iteration
        self.names: list[str] = []

    def record(self, iteration: int, terms: dict[str, torch.Tensor], totals: torch.Tensor) -> None:
        """Note ``iteration`` if any of ``totals`` is not finite (tensor ops only: no host sync)."""
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        if self.first is None or self.values is None or self.values.shape != values.shape:
            self.first = torch.full((), -1, dtype=torch.int64, device=values.device)
            self.values = torch.zeros_like(values)
            self.names = list(terms)
        bad = torch.logical_not(torch.isfinite(totals).all())
        fresh = torch.logical_and(bad, self.first < 0)
        self.first = torch.where(fresh, torch.full_like(self.first, iteration), self.first)
        self.values = torch.where(fresh, values, self.values)

    def check(self, info: DistInfo) -> tuple[int, str] | None:
        """(first bad iteration over all ranks, this rank's terms then) if any rank saw a non-finite
        loss, else None. One host read, and under DDP one collective, so every rank takes the same branch."""
        none = 1 << 62
        local = none if self.first is None else int(self.first.item())
        local = none if local < 0 else local
        first = global_min(local, info)
        if first == none:
            return None
        if local != first or self.values is None:
            return first, "on another rank"
        return first, ", ".join(f"{k}={v:.4g}" for k, v in zip(self.names, self.values.tolist()))
