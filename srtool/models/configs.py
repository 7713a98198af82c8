"""Every architecture's hyperparameters as pydantic models, apart from the networks (which need torch).

A preset, an export's metadata or a detector names its architecture in ``arch`` (the registry key) and
these models validate the rest. They live here, free of torch, so that reading and checking presets
(``srtool presets list/show``, ``--set`` errors, sweep plans) does not pay torch's import (2-3 s);
each architecture's module (:mod:`.srresnet`, :mod:`.rrdbnet`...) re-exports its config next to its
network, and :mod:`.registry` pairs the two.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Scale = Literal[2, 3, 4, 8]

INPUT_SIZE = 128
"""The only input side of :class:`VGGStyle128Config`'s network (its dense layer is fixed)."""


class GeneratorConfigBase(BaseModel):
    """What every generator's hyperparameters share (one place for their limits); each architecture names
    itself in ``arch`` and may narrow ``scale`` or redefine ``n_blocks`` (fields keep this order)."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(description="Architecture name.")
    scale: Scale = Field(4, description="Upscaling factor.")
    in_channels: int = Field(3, ge=1, le=4, description="Input image channels.")
    out_channels: int = Field(3, ge=1, le=4, description="Output image channels.")
    n_feats: int = Field(64, ge=8, le=512, description="Feature channels in the trunk.")
    n_blocks: int = Field(16, ge=1, le=128, description="Number of blocks.")


class SRResNetConfig(GeneratorConfigBase):
    """Hyperparameters of an SRResNet generator."""

    arch: Literal["srresnet"] = Field("srresnet", description="Architecture name (SRResNet, SRGAN's generator).")
    n_blocks: int = Field(16, ge=1, le=128, description="Number of residual blocks.")
    head_kernel: int = Field(9, ge=1, le=11, description="Kernel size of the first conv (paper: 9).")
    tail_kernel: int = Field(9, ge=1, le=11, description="Kernel size of the last conv (paper: 9).")
    batch_norm: bool = Field(True, description="BatchNorm inside the residual blocks (paper: yes).")
    trunk_batch_norm: bool = Field(
        True, description="BatchNorm after the conv that closes the trunk (paper figure 4: yes; some ports omit it)."
    )


class RRDBNetConfig(GeneratorConfigBase):
    """Hyperparameters of an RRDBNet generator."""

    arch: Literal["rrdbnet"] = Field("rrdbnet", description="Architecture name (RRDBNet, ESRGAN's generator).")
    n_blocks: int = Field(23, ge=1, le=128, description="Number of RRDB blocks.")
    growth: int = Field(32, ge=4, le=256, description="Growth channels of each dense block.")
    res_scale: float = Field(0.2, gt=0, le=1, description="Residual scaling beta of dense blocks and RRDBs.")


class MSRResNetConfig(GeneratorConfigBase):
    """Hyperparameters of a BasicSR MSRResNet generator."""

    arch: Literal["msrresnet"] = Field("msrresnet", description="Architecture name (BasicSR's modified SRResNet).")
    scale: Literal[2, 3, 4] = Field(4, description="Upscaling factor (BasicSR supports 2, 3 and 4).")
    n_blocks: int = Field(16, ge=1, le=128, description="Number of residual blocks (no BatchNorm).")


class EDSRConfig(GeneratorConfigBase):
    """Hyperparameters of an EDSR network."""

    arch: Literal["edsr"] = Field("edsr", description="Architecture name (EDSR).")
    n_blocks: int = Field(16, ge=1, le=128, description="Number of residual blocks.")
    res_scale: float = Field(1.0, gt=0, le=1, description="Residual scaling inside each block (EDSR proper: 0.1).")
    pixel_range: float = Field(255.0, gt=0, description="The value range the network was trained on (EDSR: 255).")


class DiscriminatorConfig(BaseModel):
    """Hyperparameters of the VGG-style discriminator."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["vgg_discriminator"] = Field("vgg_discriminator", description="Architecture name.")
    in_channels: int = Field(3, ge=1, le=4, description="Input image channels.")
    n_blocks: int = Field(8, ge=2, le=16, description="Number of conv blocks (paper: 8).")
    base_channels: int = Field(64, ge=8, le=512, description="Channels of the first two blocks.")
    max_channels: int = Field(512, ge=8, le=2048, description="Channel cap as channels double every 2 blocks.")
    pool_size: int = Field(6, ge=1, le=16, description="Adaptive average pool output side before the dense layers.")
    hidden: int = Field(1024, ge=8, le=8192, description="Width of the hidden dense layer (paper: 1024).")

    def channels(self) -> list[int]:
        return [min(self.base_channels * 2 ** (i // 2), self.max_channels) for i in range(self.n_blocks)]

    def min_input_size(self) -> int:
        """Smallest input side that still leaves ``pool_size`` pixels after the stride-2 blocks."""
        return self.pool_size * 2 ** (self.n_blocks // 2)

    def max_input_size(self) -> int | None:
        return None  # the adaptive pool takes any larger input


class VGGStyle128Config(BaseModel):
    """Hyperparameters of BasicSR's VGGStyleDiscriminator (input 128)."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["vgg_style_128"] = Field("vgg_style_128", description="Architecture name (ESRGAN's official discriminator).")
    in_channels: int = Field(3, ge=1, le=4, description="Input image channels.")
    base_channels: int = Field(64, ge=8, le=512, description="Channels of the first stage (BasicSR num_feat: 64).")

    def channels(self) -> list[int]:
        c = self.base_channels
        return [c, c, 2 * c, 2 * c, 4 * c, 4 * c, 8 * c, 8 * c, 8 * c, 8 * c]

    def min_input_size(self) -> int:
        return INPUT_SIZE

    def max_input_size(self) -> int:
        return INPUT_SIZE


GeneratorConfig = Annotated[Union[SRResNetConfig, RRDBNetConfig, MSRResNetConfig, EDSRConfig], Field(discriminator="arch")]
AnyDiscriminatorConfig = Annotated[Union[DiscriminatorConfig, VGGStyle128Config], Field(discriminator="arch")]

GENERATOR_CONFIGS: dict[str, type[BaseModel]] = {
    "srresnet": SRResNetConfig, "rrdbnet": RRDBNetConfig, "msrresnet": MSRResNetConfig, "edsr": EDSRConfig,
}
DISCRIMINATOR_CONFIGS: dict[str, type[BaseModel]] = {
    "vgg_discriminator": DiscriminatorConfig, "vgg_style_128": VGGStyle128Config,
}


def describe_problem(err: dict[str, Any]) -> str:
    """Pydantic's message for one config error, naming the allowed architectures for an unknown one and
    the value given otherwise (shared by preset and generator-config errors)."""
    if err["type"] == "union_tag_invalid":
        table = DISCRIMINATOR_CONFIGS if "discriminator" in err["loc"] else GENERATOR_CONFIGS
        return f"unknown architecture; allowed: {', '.join(table)}"
    if err["type"] == "union_tag_not_found":  # e.g. --set model.discriminator.n_blocks=2 on a psnr-stage preset
        table = DISCRIMINATOR_CONFIGS if "discriminator" in err["loc"] else GENERATOR_CONFIGS
        section = ".".join(str(p) for p in err["loc"])
        why = ("; a psnr-stage preset has no discriminator: these keys are for gan-stage presets (srgan, esrgan)"
               if table is DISCRIMINATOR_CONFIGS else "")
        return f"{section}.arch is missing (one of {', '.join(table)}){why}"
    if "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
        return f"{err['msg']} (got {err['input']!r})"
    return err["msg"]
