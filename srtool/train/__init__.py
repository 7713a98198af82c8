"""``srtool train``: preset-driven PSNR and GAN training that resumes exactly and scales out with torchrun.

Modules: :mod:`.data` (keyed random crops from training stores), :mod:`.losses`, :mod:`.checkpoint`,
:mod:`.monitor` (display, JSONL, TensorBoard, curves.png), :mod:`.distributed` (DDP from torchrun's
environment) and :mod:`.engine` (the :class:`Trainer`).
"""

from .engine import NonFiniteLossError, Trainer, TrainOptions, TrainResult, train

__all__ = ["NonFiniteLossError", "TrainOptions", "TrainResult", "Trainer", "train"]
