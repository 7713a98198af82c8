"""ESRGAN's official discriminator: BasicSR's ``VGGStyleDiscriminator`` for 128x128 inputs.

Ten convolutions in five stages; each stage is a 3x3 stride-1 conv and a 4x4 stride-2 conv (so 128 -> 4
after five stages); channels ``c, c, 2c, 2c, 4c, 4c, 8c, 8c, 8c, 8c`` with ``c = base_channels`` (64);
BatchNorm after every conv but the first (which alone has a bias); LeakyReLU 0.2; then dense
``8c*4*4 = 8192 -> 100``, LeakyReLU 0.2, dense ``100 -> 1`` (raw logits). Parameter names follow BasicSR
(``conv0_0``, ``bn0_1``, ..., ``linear1``), so its ``net_d`` state dicts load as they are.

The fixed dense layer takes exactly 128x128 inputs (``train.hr_crop = 128``). srtool's ESRGAN preset keeps
the study's 8-block :mod:`.discriminator`; pick this one with ``--set model.discriminator.arch=vgg_style_128``.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import INPUT_SIZE, VGGStyle128Config


class VGGStyleDiscriminator128(nn.Module):
    def __init__(self, config: VGGStyle128Config):
        super().__init__()
        self.config = config
        in_ch = config.in_channels
        for i, out_ch in enumerate(config.channels()):
            stage, second = divmod(i, 2)
            kernel, stride = (4, 2) if second else (3, 1)
            self.add_module(f"conv{stage}_{second}", nn.Conv2d(in_ch, out_ch, kernel, stride, 1, bias=(i == 0)))
            if i > 0:
                self.add_module(f"bn{stage}_{second}", nn.BatchNorm2d(out_ch, affine=True))
            in_ch = out_ch
        self.linear1 = nn.Linear(in_ch * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"vgg_style_128 takes {INPUT_SIZE}x{INPUT_SIZE} inputs, got {tuple(x.shape[-2:])}")
        feat = x
        for i in range(len(self.config.channels())):
            stage, second = divmod(i, 2)
            feat = getattr(self, f"conv{stage}_{second}")(feat)
            if i > 0:
                feat = getattr(self, f"bn{stage}_{second}")(feat)
            feat = self.lrelu(feat)
        return self.linear2(self.lrelu(self.linear1(feat.flatten(1))))
