"""SRResNet, the generator of SRGAN (Ledig et al., CVPR 2017).

Layout (paper, figure 4): a 9x9 head conv + PReLU; B residual blocks (conv-BN-PReLU-conv-BN + skip);
a 3x3 conv + BN closing the trunk, added to the head's output (the global skip); sub-pixel upsampling
(conv to 4x channels, PixelShuffle x2, PReLU), repeated ``log2(scale)`` times (a single x3 stage for
scale 3); a 9x9 tail conv.

Inputs and outputs are RGB in [0, 1]. The paper ends in tanh on a [-1, 1] range; srtool has no tanh
(the output is linear and clamped only at inference), so a model's numbers never depend on a hidden
range conversion.

The study's snippet built ``int(math.log(scale))`` upsampling stages (natural log: one stage for x4)
and used ``int(scale ** 0.5)`` as the per-stage factor (wrong for x3 and x8); :func:`upsampling_factors`
is the single place that decides the stages.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import Scale, SRResNetConfig

def upsampling_factors(scale: int) -> list[int]:
    """Per-stage factors whose product is ``scale``: x2 stages for powers of two, one x3 stage for 3."""
    if scale == 3:
        return [3]
    if scale in (2, 4, 8):
        return [2] * (scale.bit_length() - 1)
    raise ValueError(f"unsupported scale {scale}; supported: 2, 3, 4, 8")


class _ResidualBlock(nn.Module):
    def __init__(self, n_feats: int, batch_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(n_feats) if batch_norm else nn.Identity()
        self.act = nn.PReLU()
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(n_feats) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class _SubPixelUpsample(nn.Module):
    def __init__(self, n_feats: int, factor: int):
        super().__init__()
        self.conv = nn.Conv2d(n_feats, n_feats * factor * factor, 3, padding=1)
        self.shuffle = nn.PixelShuffle(factor)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class SRResNet(nn.Module):
    """SRResNet generator; see the module docstring for the layout."""

    def __init__(self, config: SRResNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.head = nn.Conv2d(c.in_channels, c.n_feats, c.head_kernel, padding=c.head_kernel // 2)
        self.head_act = nn.PReLU()
        self.body = nn.Sequential(*[_ResidualBlock(c.n_feats, c.batch_norm) for _ in range(c.n_blocks)])
        self.body_conv = nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1)
        self.body_bn = nn.BatchNorm2d(c.n_feats) if c.trunk_batch_norm else nn.Identity()
        self.upsample = nn.Sequential(*[_SubPixelUpsample(c.n_feats, f) for f in upsampling_factors(c.scale)])
        self.tail = nn.Conv2d(c.n_feats, c.out_channels, c.tail_kernel, padding=c.tail_kernel // 2)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head_act(self.head(x))
        trunk = self.body_bn(self.body_conv(self.body(head)))
        return self.tail(self.upsample(head + trunk))
