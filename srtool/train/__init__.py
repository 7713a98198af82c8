"""``srtool train``: preset-driven PSNR and GAN training that resumes exactly and scales out with torchrun.

Modules: :mod:`.data` (keyed random crops from training stores), :mod:`.losses`, :mod:`.checkpoint`,
:mod:`.monitor` (display, JSONL, TensorBoard, curves.png), :mod:`.distributed` (DDP from torchrun's
environment), :mod:`.finite` (NaN/inf detection without host syncs) and :mod:`.engine` (the :class:`Trainer`).

The engine is imported on first use, so ``srtool.train.distributed`` (shared with sharded upscale/eval)
does not pull in the networks and losses.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["NonFiniteLossError", "TrainOptions", "TrainResult", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.engine"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
