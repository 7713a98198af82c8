"""RRDBNet, the generator of ESRGAN (Wang et al., ECCV Workshops 2018).

Layout: 3x3 head conv; B Residual-in-Residual Dense Blocks, each three *distinct* dense blocks
(five 3x3 convs with dense connections, growth ``g``, LeakyReLU 0.2, no BatchNorm) whose output is
scaled by beta = 0.2 and added to its input, and the RRDB itself scaled by beta and added; a 3x3 conv
closing the trunk, *added* to the head (global skip); nearest-neighbour x2 + conv + LeakyReLU,
``log2(scale)`` times (one x3 stage for scale 3); 3x3 conv + LeakyReLU; 3x3 conv out.

Three bugs of the study's snippet are absent by construction: the trunk is added to the head, not
multiplied (``x * x1``); each RRDB owns three separate dense blocks (the snippet called one block three
times, sharing weights); the number of upsampling stages comes from :func:`upsampling_factors`.

Inputs and outputs are RGB in [0, 1], linear output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import RRDBNetConfig
from .srresnet import upsampling_factors


DENSE_INIT_SCALE = 0.1
"""ESRGAN initialises the dense blocks' convs with Kaiming-normal (fan-in, gain sqrt(2)) scaled by 0.1 and zero
biases; the other convs keep PyTorch's default, as in the official code."""


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output = input + res_scale * conv5(...)."""

    def __init__(self, n_feats: int, growth: int, res_scale: float):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(n_feats, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(n_feats + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(n_feats + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(n_feats + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(n_feats + 4 * growth, n_feats, 3, padding=1)
        if self.conv1.weight.is_meta:  # a shapes-only build (srtool's checks of a file before loading it):
            return  # nothing to initialise, and torch's init of meta tensors imports its compiler (~1 s)
        with torch.no_grad():  # ESRGAN's "smaller initialization" (BasicSR default_init_weights(..., 0.1))
            for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
                nn.init.kaiming_normal_(conv.weight)
                conv.weight.mul_(DENSE_INIT_SCALE)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + self.res_scale * x5


class RRDB(nn.Module):
    """Residual-in-Residual Dense Block: three distinct dense blocks and an outer scaled residual."""

    def __init__(self, n_feats: int, growth: int, res_scale: float):
        super().__init__()
        self.res_scale = res_scale
        self.rdb1 = ResidualDenseBlock(n_feats, growth, res_scale)
        self.rdb2 = ResidualDenseBlock(n_feats, growth, res_scale)
        self.rdb3 = ResidualDenseBlock(n_feats, growth, res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """RRDBNet generator; parameter names follow BasicSR's new layout (``conv_first``, ``body.N.rdbK``)."""

    def __init__(self, config: RRDBNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.factors = upsampling_factors(c.scale)
        self.conv_first = nn.Conv2d(c.in_channels, c.n_feats, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(c.n_feats, c.growth, c.res_scale) for _ in range(c.n_blocks)])
        self.conv_body = nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1)
        for i, _ in enumerate(self.factors, start=1):  # conv_up1, conv_up2, ... as in BasicSR
            self.add_module(f"conv_up{i}", nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1))
        self.conv_hr = nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1)
        self.conv_last = nn.Conv2d(c.n_feats, c.out_channels, 3, padding=1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i, factor in enumerate(self.factors, start=1):
            conv = getattr(self, f"conv_up{i}")
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=factor, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
