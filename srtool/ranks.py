"""torchrun's environment, read without importing torch: which rank this process is, of how many.

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every
process it starts. A ``WORLD_SIZE`` left in the shell by hand (``export WORLD_SIZE=2``) without the others
is a common mistake: joining the process group would then fail deep inside torch, or wait for ranks
that never come. :func:`launch` names the problem in one line instead. Torch-free, so the CLI can ask
"am I a secondary rank?" (print a shared error once) without paying for the import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UserError

HOW = ("start several processes with `torchrun --nproc-per-node N -m srtool ...` (it sets them all), "
       "or unset WORLD_SIZE to run one process")


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1


def _integer(name: str, default: str | None = None) -> int | None:
    raw = os.environ.get(name, default)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} in the environment is not a whole number; {HOW}") from None


def launch() -> Launch:
    """This process's place in a torchrun launch (rank 0 of 1 without one); a half-set environment is a UserError."""
    world = _integer("WORLD_SIZE")
    if world is None or world == 1:
        return Launch()
    if world < 1:
        raise UserError(f"WORLD_SIZE={world} in the environment: must be 1 or more; {HOW}")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "").strip()]
    if missing:
        raise UserError(f"WORLD_SIZE={world} is set in the environment, but {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not: {HOW}")
    rank, local_rank = _integer("RANK"), _integer("LOCAL_RANK", "0") or 0
    _integer("MASTER_PORT")
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} in the environment is outside 0..{world - 1} (WORLD_SIZE={world}); {HOW}")
    return Launch(rank, local_rank, world)


def _launch_or_plain() -> Launch:
    try:
        return launch()
    except UserError:  # reported where the process group is joined; here: a plain run
        return Launch()


def is_secondary_rank() -> bool:
    """A torchrun rank other than 0 (False in a plain run, and where the environment is half set)."""
    return _launch_or_plain().rank != 0


def is_secondary_on_node() -> bool:
    """A rank other than its machine's first (``LOCAL_RANK`` 0): what every rank of one machine finds
    alike (its files, Ctrl-C) is said once per machine, so a node that sees other files still says so."""
    return _launch_or_plain().local_rank != 0
