"""srtool: 4x single-image super-resolution you can trust.

Python API (the CLI is a thin layer over these):

* :func:`load_model` / :func:`upscale_image` -- upscale PIL images or arrays;
* :func:`srtool.resize.imresize` -- MATLAB-exact bicubic resize;
* :mod:`srtool.metrics` -- PSNR/SSIM exactly as published tables compute them;
* :func:`srtool.config.load_preset` -- validated training presets.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pathlib import Path

    from .engine import SRModel

# The two entry points import torch only when called (``import srtool`` stays fast); their parameters are
# spelled out so that help(), IDEs and a mistyped keyword see the real ones (a test keeps them equal).


def load_model(spec: str | Path = "default", device: Any = "auto", precision: str = "auto", tile: int | None = None,
               tile_pad: int | None = None, scale: int | None = None, alpha: str = "model",
               notice: Callable[[str], None] | None = None) -> SRModel:
    """Load a model by name ("default", "bicubic", a named official model), export file, run directory or
    checkpoint; see :func:`srtool.loading.load_model`. ``tile=0``: no tiling."""
    from .loading import load_model as _load

    return _load(spec, device=device, precision=precision, tile=tile, tile_pad=tile_pad, scale=scale, alpha=alpha,
                 notice=notice)


def upscale_image(model: SRModel, image: Any, alpha: str | None = None,
                  progress: Callable[[float], None] | None = None) -> Any:
    """Upscale a PIL image or an (H, W[, C]) numpy array (or torch tensor) with ``model``: PIL in, PIL out;
    arrays keep their dtype and channel count; ``progress(fraction)`` after every tile; see
    :func:`srtool.engine.upscale_image`."""
    from .engine import upscale_image as _up

    return _up(model, image, alpha=alpha, progress=progress)


__all__ = ["__version__", "load_model", "upscale_image"]
