"""Training checkpoints: everything needed to continue a run bit for bit, in a file that is safe to load.

A checkpoint is a dict of tensors and plain containers written with ``torch.save`` and read back only
through :func:`srtool.models.export.read_state_dict` (``torch.load(weights_only=True)``), so opening a
checkpoint can never execute code. Objects that ``weights_only`` refuses are converted first: the
NumPy RNG state's array becomes a tensor, Python's RNG state a list, numpy scalars Python numbers.

Files: ``RUN_DIR/checkpoints/iter_XXXXXXXX.pt`` (the last ``keep_last`` are kept) and
``RUN_DIR/checkpoints/best.pt`` (the state at the best validation). Each is written atomically.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import UserError

CHECKPOINT_FORMAT = "srtool-train-checkpoint/1"
_NAME = re.compile(r"^iter_(\d{8,})\.pt$")


def capture_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), list(internal), gauss],
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_plain(obj: Any) -> Any:
    """Recursively turn what ``weights_only`` refuses into tensors and plain containers."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu") if obj.device.type != "cpu" else obj.detach()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


class _Writer:
    """The file ``torch.save`` writes through. torch turns an error raised by ``write`` into a generic
    RuntimeError; the writer keeps the OSError (ENOSPC, EDQUOT, EIO) so the caller sees the real cause."""

    def __init__(self, fh):
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _write(obj: Any, tmp: Path) -> None:
    """The one place checkpoint bytes reach the disk; a failed write raises its OSError."""
    with open(tmp, "wb") as fh:
        writer = _Writer(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        _write(to_plain({"format": CHECKPOINT_FORMAT, **state}), tmp)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    from ..models.export import read_state_dict

    state = read_state_dict(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an srtool training checkpoint (format {state.get('format')!r})")
    return state


class CheckpointDir:
    """The ``checkpoints/`` folder of a run: numbered checkpoints (last K kept) and ``best.pt``."""

    def __init__(self, run_dir: Path, keep_last: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def path_for(self, iteration: int) -> Path:
        return self.dir / f"iter_{iteration:08d}.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def numbered(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        items = self.numbered()
        return items[-1][1] if items else None

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        path = save_checkpoint(self.path_for(iteration), state)
        for _, old in self.numbered()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path
