"""srtool's model core: one module per architecture, one explicit registry."""

from .discriminator import DiscriminatorConfig, VGGDiscriminator
from .registry import DISCRIMINATORS, GENERATORS, GeneratorConfig, build_network, generator_config_from_dict
from .rrdbnet import RRDBNet, RRDBNetConfig
from .srresnet import SRResNet, SRResNetConfig, upsampling_factors
from .vgg import VGGFeatureExtractor

__all__ = [
    "DISCRIMINATORS", "GENERATORS", "DiscriminatorConfig", "GeneratorConfig", "RRDBNet", "RRDBNetConfig",
    "SRResNet", "SRResNetConfig", "VGGDiscriminator", "VGGFeatureExtractor", "build_network",
    "generator_config_from_dict", "upsampling_factors",
]
