"""Truncated VGG19 feature extractor for perceptual losses (SRGAN's phi_5,4; ESRGAN's conv5_4).

SRGAN's content loss uses the feature map *after* the ReLU of conv5_4 (phi_5,4), ESRGAN's uses the
map *before* the activation (the paper shows post-activation features are sparse and weaken the
loss), so the layer and the activation side are both selectable. Inputs are RGB in [0, 1]; the
ImageNet mean/std normalisation is applied inside.

Weights come from torchvision's ImageNet checkpoint (its torch-hub cache, downloaded when online) or
from a local file (``--vgg-weights``). When neither is available the error says so before any
training starts. ``weights="random"`` builds the true architecture with random weights, for tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

# torchvision's VGG19 "E" configuration: convs per block.
VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG19_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision VGG19_Weights.IMAGENET1K_V1
TORCHVISION_VGG19_URL = "https://download.pytorch.org/models/" + TORCHVISION_VGG19_FILE
LAYER_PATTERN = re.compile(r"^conv([1-5])_([1-4])$")


def vgg19_layer_index(layer: str, before_activation: bool) -> int:
    """Index in torchvision's ``vgg19().features`` of the conv (or its ReLU) named ``convB_I``."""
    match = LAYER_PATTERN.match(layer)
    if not match or int(match.group(2)) > VGG19_BLOCKS[int(match.group(1)) - 1]:
        valid = ", ".join(f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG19_BLOCKS) for i in range(n))
        raise UserError(f"unknown VGG19 layer {layer!r}; valid layers: {valid}")
    block, conv = int(match.group(1)) - 1, int(match.group(2)) - 1
    index = sum(2 * n + 1 for n in VGG19_BLOCKS[:block]) + 2 * conv  # each conv+ReLU, plus a pool per block
    return index if before_activation else index + 1


def vgg19_features() -> nn.Sequential:
    """``torchvision.models.vgg19().features`` built locally (same indices, same parameter names)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for n_convs, ch in zip(VGG19_BLOCKS, VGG19_CHANNELS):
        for _ in range(n_convs):
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = ch
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def load_vgg19_state(weights: str | Path) -> dict[str, torch.Tensor]:
    """Return a ``features``-level state dict (keys ``N.weight``) from the named source."""
    if str(weights) == "imagenet":
        cache = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG19_FILE
        try:
            state = torch.hub.load_state_dict_from_url(
                TORCHVISION_VGG19_URL, progress=True, map_location="cpu", weights_only=True
            )
        except Exception as exc:  # offline, proxy, truncated download...
            raise UserError(
                "VGG19 ImageNet weights are needed for the perceptual loss but are not available: "
                f"no cached copy at {cache} and the download failed ({type(exc).__name__}: {exc}). "
                "Either connect once so torchvision can cache them, or pass --vgg-weights FILE "
                f"(torchvision's {TORCHVISION_VGG19_FILE} or any VGG19 state dict, .pth or .safetensors)."
            ) from None
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--vgg-weights: file not found: {path}")
        from .export import read_state_dict

        state = read_state_dict(path)
    features = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    expected = vgg19_features().state_dict()
    missing = sorted(set(expected) - set(features))
    bad = [k for k in expected if k in features and tuple(features[k].shape) != tuple(expected[k].shape)]
    if missing or bad:
        raise UserError(
            f"{weights}: not a VGG19 state dict (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"wrong shapes {bad[:3]})"
        )
    return {k: features[k] for k in expected}


class VGGFeatureExtractor(nn.Module):
    """Frozen VGG19 truncated at ``layer`` (e.g. ``conv5_4``), before or after its ReLU."""

    def __init__(self, layer: str = "conv5_4", before_activation: bool = True, weights: str | Path = "imagenet"):
        super().__init__()
        last = vgg19_layer_index(layer, before_activation)
        features = vgg19_features()
        if str(weights) != "random":
            features.load_state_dict(load_vgg19_state(weights))
        self.features = nn.Sequential(*list(features.children())[: last + 1])
        for module in self.features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # the truncation point's input must survive for before-activation use
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatureExtractor":
        return super().train(False)  # always frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)
