"""srtool: 4x single-image super-resolution you can trust.

Python API (the CLI is a thin layer over these):

* :func:`load_model` / :func:`upscale_image` -- upscale PIL images or arrays;
* :func:`srtool.resize.imresize` -- MATLAB-exact bicubic resize;
* :mod:`srtool.metrics` -- PSNR/SSIM exactly as published tables compute them;
* :func:`srtool.config.load_preset` -- validated training presets.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any


def load_model(*args: Any, **kwargs: Any):
    """Load a model by name ("default", "bicubic"), export file, run directory or checkpoint."""
    from .loading import load_model as _load

    return _load(*args, **kwargs)


def upscale_image(*args: Any, **kwargs: Any):
    """Upscale a PIL image or numpy array; returns the same type."""
    from .engine import upscale_image as _up

    return _up(*args, **kwargs)


__all__ = ["__version__", "load_model", "upscale_image"]
