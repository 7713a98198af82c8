"""EDSR, Enhanced Deep Residual Networks (Lim et al., CVPR Workshops 2017).

Layout: mean shift (subtract the DIV2K RGB mean on the 0-255 range); 3x3 head conv; B residual
blocks without BatchNorm (conv-ReLU-conv, output scaled by ``res_scale`` and added); a 3x3 conv
closing the trunk, added to the head's output; sub-pixel upsampling (conv to 4x channels +
PixelShuffle x2, ``log2(scale)`` times, or one conv to 9x + PixelShuffle x3); a 3x3 conv out; the mean
added back. The paper's baseline is 16 blocks x 64 features with ``res_scale`` 1, EDSR proper 32 x 256
with ``res_scale`` 0.1.

Parameter names follow BasicSR's EDSR (``conv_first``, ``body.N.conv1``/``conv2``, ``conv_after_body``,
``upsample.K``, ``conv_last``); EDSR-PyTorch's names are mapped onto them by the checkpoint detector.
Inputs and outputs are RGB in [0, 1]; the 0-255 range and the mean shift are explicit (buffer ``mean``).
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import EDSRConfig
from .srresnet import upsampling_factors

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class _ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class EDSR(nn.Module):
    """EDSR; takes and returns [0, 1], internally ``(x - mean) * pixel_range`` as the original."""

    def __init__(self, config: EDSRConfig):
        super().__init__()
        self.config = c = config
        self.register_buffer("mean", torch.tensor(DIV2K_RGB_MEAN[: c.in_channels]).view(1, -1, 1, 1))
        self.conv_first = nn.Conv2d(c.in_channels, c.n_feats, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(c.n_feats, c.res_scale) for _ in range(c.n_blocks)])
        self.conv_after_body = nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1)
        stages: list[nn.Module] = []
        for factor in upsampling_factors(c.scale):
            stages += [nn.Conv2d(c.n_feats, c.n_feats * factor * factor, 3, padding=1), nn.PixelShuffle(factor)]
        self.upsample = nn.Sequential(*stages)
        self.conv_last = nn.Conv2d(c.n_feats, c.out_channels, 3, padding=1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.config.pixel_range
        x = (x - self.mean) * r
        feat = self.conv_first(x)
        feat = feat + self.conv_after_body(self.body(feat))
        return self.conv_last(self.upsample(feat)) / r + self.mean
