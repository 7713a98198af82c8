"""Loss terms of the two stages, configured by the preset's ``[loss]`` section.

* pixel: L1 or MSE between SR and HR, times its weight;
* perceptual: distance between frozen VGG19 feature maps of SR and HR, each map multiplied by
  ``feature_scale`` first (SRGAN: phi_5,4 after the ReLU, MSE, 1/12.75; ESRGAN: conv5_4 before the
  ReLU, L1, 1.0);
* adversarial, on raw discriminator logits (the sigmoid lives in the BCE-with-logits):
  - ``vanilla`` (SRGAN): G minimises BCE(D(SR), 1); D minimises BCE(D(HR), 1) + BCE(D(SR), 0);
  - ``ragan`` (ESRGAN, relativistic average GAN), with C = logits, E = batch mean, both terms for both
    players as in the paper and its official code (BasicSR):
    G: [BCE(C(HR) - E C(SR), 0) + BCE(C(SR) - E C(HR), 1)] / 2, with C(HR) treated as a constant;
    D: [BCE(C(HR) - E C(SR), 1) + BCE(C(SR) - E C(HR), 0)] / 2, the mean of the other side detached.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossSection

_CRITERIA = {"l1": F.l1_loss, "mse": F.mse_loss}


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), target))


class GeneratorLoss(nn.Module):
    """Pixel + perceptual + adversarial terms of the generator; returns the named, weighted terms."""

    def __init__(self, config: LossSection, vgg_weights: str | Path = "imagenet"):
        super().__init__()
        self.config = config
        self.vgg = None
        if config.perceptual is not None:
            from ..models.vgg import VGGFeatureExtractor

            p = config.perceptual
            self.vgg = VGGFeatureExtractor(p.layer, before_activation=p.before_activation, weights=vgg_weights)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, fake_logits: torch.Tensor | None = None,
                real_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        c = self.config
        if c.pixel is not None and c.pixel.weight > 0:
            terms["pixel"] = c.pixel.weight * _CRITERIA[c.pixel.criterion](sr.float(), hr.float())
        if self.vgg is not None and c.perceptual.weight > 0:
            p = c.perceptual
            with torch.no_grad():
                target = self.vgg(hr) * p.feature_scale
            terms["perceptual"] = p.weight * _CRITERIA[p.criterion]((self.vgg(sr) * p.feature_scale).float(), target.float())
        if c.adversarial is not None and fake_logits is not None:
            terms["adversarial"] = c.adversarial.weight * generator_adversarial(c.adversarial.kind, fake_logits, real_logits)
        return terms


def generator_adversarial(kind: str, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
    if kind == "vanilla":
        return _bce(fake_logits, 1.0)
    real = real_logits.detach()
    return (_bce(real - fake_logits.mean(), 0.0) + _bce(fake_logits - real.mean(), 1.0)) / 2


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named terms of the discriminator loss (``fake_logits`` must come from a detached SR)."""
    if kind == "vanilla":
        return {"d_real": _bce(real_logits, 1.0), "d_fake": _bce(fake_logits, 0.0)}
    return {
        "d_real": _bce(real_logits - fake_logits.detach().mean(), 1.0) / 2,
        "d_fake": _bce(fake_logits - real_logits.detach().mean(), 0.0) / 2,
    }
