"""Models for inference: loading by name/path, and running them on images.

FOUNDATION SKELETON: the upscale issue replaces ``run_network`` with the tiled engine and extends
``load_model`` to run directories and third-party checkpoints; eval and upscale both go through here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .resize import imresize

BUNDLED_WEIGHTS_DIR = Path(__file__).parent / "weights"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class SRModel:
    """A ready-to-run upscaler: a network (or the MATLAB bicubic baseline) plus its identity."""

    name: str
    scale: int
    network: nn.Module | None = None
    identity: str = ""  # sha256 of the weights file, or "bicubic"
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_bicubic(self) -> bool:
        return self.network is None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Upscale an (H, W[, C]) uint8/uint16/float array; returns the same dtype."""
        if self.network is None:
            return imresize(image, float(self.scale))
        return run_network(self, image)


def run_network(model: SRModel, image: np.ndarray) -> np.ndarray:
    """Untiled forward (skeleton): float in [0, 1] through the network, clamped, cast back."""
    dtype = image.dtype
    peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(dtype, 1.0)
    arr = image.astype(np.float32) / peak
    gray = arr.ndim == 2
    if gray:
        arr = np.repeat(arr[..., None], 3, axis=2)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].to(model.device)
    with torch.inference_mode():
        y = model.network(x).clamp_(0, 1)[0].float().cpu().numpy().transpose(1, 2, 0)
    if gray:
        y = y.mean(axis=2)
    if peak == 1.0:
        return y.astype(dtype)
    return np.floor(y * peak + 0.5).astype(dtype)


def bicubic_model(scale: int = 4) -> SRModel:
    return SRModel(name="bicubic", scale=scale, identity="bicubic", source="MATLAB bicubic")


def bundled_model_path() -> Path | None:
    candidates = sorted(BUNDLED_WEIGHTS_DIR.glob("*.safetensors"))
    return candidates[0] if candidates else None


def load_model(spec: str | Path = "default", device: str = "cpu", scale: int = 4) -> SRModel:
    """``default`` (bundled model, bicubic until one ships), ``bicubic``, or an srtool export file."""
    from .models.export import load_export

    spec_str = str(spec)
    if spec_str == "bicubic":
        return bicubic_model(scale)
    if spec_str == "default":
        path = bundled_model_path()
        if path is None:
            return bicubic_model(scale)
        spec = path
    path = Path(spec)
    if not path.exists():
        raise UserError(f"model not found: {spec_str} (use 'default', 'bicubic' or a model file)")
    network, doc = load_export(path)
    return SRModel(
        name=path.stem, scale=network.scale, network=network.to(device), identity=sha256_file(path),
        source=str(path), info=doc, device=torch.device(device),
    )


def upscale_image(model: SRModel, image):
    """Upscale a PIL image or numpy array with ``model``; returns the same type."""
    from PIL import Image

    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
        return Image.fromarray(model(arr))
    return model(np.asarray(image))
