"""VGG-style discriminator of SRGAN (Ledig et al., 2017), also used by srtool's ESRGAN preset (as in the study;
ESRGAN's official discriminator is :mod:`.vgg_style`).

``n_blocks`` 3x3 conv blocks, strides alternating 1, 2, 1, 2, ...; BatchNorm on every block but the
first; LeakyReLU 0.2; channels start at ``base_channels`` and double every second block up to
``max_channels`` (64, 64, 128, 128, 256, 256, 512, 512 for eight blocks). An adaptive average pool to
``pool_size`` x ``pool_size`` lets it take any input at least as large as the training crop (the paper's
fixed dense layer only takes 96x96). Then dense ``hidden``, LeakyReLU 0.2, dense 1. It returns raw
logits: the loss applies the sigmoid (BCE-with-logits, or the relativistic average form).
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import DiscriminatorConfig


class VGGDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = config.in_channels
        for i, out_ch in enumerate(config.channels()):
            stride = 1 if i % 2 == 0 else 2
            layers.append(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=(i == 0)))
            if i > 0:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.pool_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * config.pool_size**2, config.hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
