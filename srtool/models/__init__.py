"""srtool's model core: one module per architecture, one explicit registry.

The names below are imported on first use (PEP 562), so that ``srtool.models.configs`` (presets, torch-free)
does not import the networks and torch with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .discriminator import DiscriminatorConfig, VGGDiscriminator
    from .registry import DISCRIMINATORS, GENERATORS, GeneratorConfig, build_network, generator_config_from_dict
    from .rrdbnet import RRDBNet, RRDBNetConfig
    from .srresnet import SRResNet, SRResNetConfig, upsampling_factors
    from .vgg import VGGFeatureExtractor

_HOMES = {
    "DiscriminatorConfig": "discriminator", "VGGDiscriminator": "discriminator",
    "DISCRIMINATORS": "registry", "GENERATORS": "registry", "GeneratorConfig": "registry",
    "build_network": "registry", "generator_config_from_dict": "registry",
    "RRDBNet": "rrdbnet", "RRDBNetConfig": "rrdbnet",
    "SRResNet": "srresnet", "SRResNetConfig": "srresnet", "upsampling_factors": "srresnet",
    "VGGFeatureExtractor": "vgg",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
