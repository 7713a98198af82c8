"""MSRResNet, BasicSR's "modified SRResNet" (Wang et al., the ESRGAN paper's PSNR baseline).

Layout: 3x3 head conv + LeakyReLU 0.1; B residual blocks without BatchNorm (conv-ReLU-conv + skip,
no global skip over the trunk); sub-pixel upsampling (conv to f^2 x channels, PixelShuffle, LeakyReLU
0.1), two x2 stages for x4 or one stage for x2/x3; 3x3 conv + LeakyReLU 0.1; 3x3 conv out; plus the
input upsampled bilinearly (``align_corners=False``) added to the output, so the network learns a
residual over bilinear.

Parameter names follow BasicSR (``conv_first``, ``body.N.conv1``, ``upconv1``, ``upconv2``,
``conv_hr``, ``conv_last``) so its checkpoints load without renaming. RGB in [0, 1], linear output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import MSRResNetConfig


class _ResidualBlockNoBN(nn.Module):
    def __init__(self, n_feats: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    """BasicSR MSRResNet; see the module docstring."""

    def __init__(self, config: MSRResNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.conv_first = nn.Conv2d(c.in_channels, c.n_feats, 3, padding=1)
        self.body = nn.Sequential(*[_ResidualBlockNoBN(c.n_feats) for _ in range(c.n_blocks)])
        self.factors = [2, 2] if c.scale == 4 else [c.scale]
        for i, f in enumerate(self.factors, start=1):
            self.add_module(f"upconv{i}", nn.Conv2d(c.n_feats, c.n_feats * f * f, 3, padding=1))
        self.conv_hr = nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1)
        self.conv_last = nn.Conv2d(c.n_feats, c.out_channels, 3, padding=1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        for i, f in enumerate(self.factors, start=1):
            out = F.leaky_relu(F.pixel_shuffle(getattr(self, f"upconv{i}")(out), f), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        base = F.interpolate(x, scale_factor=self.config.scale, mode="bilinear", align_corners=False)
        if self.config.in_channels != self.config.out_channels:  # e.g. RGB in, gray out: add the mean
            base = base.mean(dim=1, keepdim=True).expand_as(out)
        return out + base
