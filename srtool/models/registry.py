"""The explicit architecture registry: name -> (config class, network class).

No import-time scanning: adding an architecture means one module, its config in :mod:`.configs` and one
line in each table. Configs are pydantic models whose ``arch`` field is the registry key, so a preset
section or an export's metadata picks its architecture by name and validates every hyperparameter.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from torch import nn

from ..errors import UserError
from .configs import AnyDiscriminatorConfig, GeneratorConfig, describe_problem
from .discriminator import DiscriminatorConfig, VGGDiscriminator
from .edsr import EDSR, EDSRConfig
from .msrresnet import MSRResNet, MSRResNetConfig
from .rrdbnet import RRDBNet, RRDBNetConfig
from .srresnet import SRResNet, SRResNetConfig
from .vgg_style import VGGStyle128Config, VGGStyleDiscriminator128

__all__ = ["DISCRIMINATORS", "GENERATORS", "AnyDiscriminatorConfig", "GeneratorConfig", "build_network",
           "describe_problem", "generator_config_from_dict"]

GENERATORS: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    "srresnet": (SRResNetConfig, SRResNet),
    "rrdbnet": (RRDBNetConfig, RRDBNet),
    "msrresnet": (MSRResNetConfig, MSRResNet),
    "edsr": (EDSRConfig, EDSR),
}
DISCRIMINATORS: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    "vgg_discriminator": (DiscriminatorConfig, VGGDiscriminator),
    "vgg_style_128": (VGGStyle128Config, VGGStyleDiscriminator128),
}


def build_network(config: BaseModel) -> nn.Module:
    """Instantiate the network a config describes."""
    arch = getattr(config, "arch", None)
    for table in (GENERATORS, DISCRIMINATORS):
        if arch in table:
            return table[arch][1](config)
    raise UserError(f"unknown architecture {arch!r}; known: {', '.join([*GENERATORS, *DISCRIMINATORS])}")


def generator_config_from_dict(data: dict[str, Any], source: str = "config") -> BaseModel:
    """Validate a generator config dict (from a preset, an export or a detector)."""
    try:
        return TypeAdapter(GeneratorConfig).validate_python(data)
    except ValidationError as exc:
        raise UserError(_format_config_error(exc, source)) from None


def _format_config_error(exc: ValidationError, source: str) -> str:
    """One line per problem, ``source: field: message (got value)``, for a bare generator config (presets
    get :func:`srtool.config.format_validation_error`, which knows the whole preset's schema)."""
    return "\n".join(
        f"{source}: {'.'.join(str(p) for p in err['loc'] if p not in GENERATORS) or '(top level)'}: {describe_problem(err)}"
        for err in exc.errors()
    )
