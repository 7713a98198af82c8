"""Which quality metrics a run computes, which way each is better, and one scorer that computes them.

``srtool eval --metric``, comparison figures and training validation all ask this module, so a
metric's name, label, direction and digits are defined once. PSNR/SSIM come from
:mod:`srtool.metrics` (under the chosen protocol), LPIPS/NIQE from :mod:`srtool.perceptual`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    needs_reference: bool  # full-reference (needs HR); NIQE scores an image alone
    digits: int  # decimals in tables

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def heading(self) -> str:
        """'PSNR (dB) ↑', 'LPIPS ↓'."""
        return f"{self.label}{f' ({self.unit})' if self.unit else ''} {self.arrow}"

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("psnr", "PSNR", "dB", True, True, 2),
    "ssim": MetricInfo("ssim", "SSIM", "", True, True, 4),
    "lpips": MetricInfo("lpips", "LPIPS", "", False, True, 4),
    "niqe": MetricInfo("niqe", "NIQE", "", False, False, 3),
}
DEFAULT_METRICS: tuple[str, ...] = ("psnr", "ssim")

# Peak memory of scoring one image, in bytes per HR pixel (Python-level peaks with tracemalloc, LPIPS's
# torch buffers from /proc VmHWM, on 2-3.8 MP images, 2026-11-30): srtool eval's image lanes keep apart the
# images whose scoring would not fit in memory side by side. PSNR+SSIM on the Y channel (protocols y,
# y-float) 17-27, on RGB 71-74; NIQE 54; LPIPS-alex 120-155, LPIPS-vgg ~1440.
_SCORING_BYTES_PER_PIXEL = {"fidelity-y": 32, "fidelity-rgb": 80, "niqe": 64, "lpips-alex": 160, "lpips-vgg": 1536}


def parse_metrics(value: str | Iterable[str], option: str = "--metric") -> tuple[str, ...]:
    """``"psnr,ssim,lpips"`` (or a list of such strings) -> ordered unique names; unknown names are a UserError."""
    parts = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for part in parts:
        for name in str(part).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in METRICS:
                raise UserError(f"{option} {name!r}: unknown metric; choose from {', '.join(METRICS)}")
            if name not in names:
                names.append(name)
    if not names:
        raise UserError(f"{option}: no metric given; choose from {', '.join(METRICS)}")
    return tuple(names)


def direction_note(metrics: Iterable[str]) -> str:
    """'higher is better: PSNR, SSIM; lower is better: LPIPS, NIQE'."""
    infos = [METRICS[m] for m in metrics]
    parts = []
    for side in ("higher", "lower"):
        labels = [i.label for i in infos if i.direction == side]
        if labels:
            parts.append(f"{side} is better: {', '.join(labels)}")
    return "; ".join(parts)


def score_lines(scores: dict[str, float], arrows: bool = True) -> list[str]:
    """Label lines for chosen metrics: '28.42 dB / 0.8101' (PSNR/SSIM as always), then 'LPIPS↓ 0.1234  NIQE↓ 5.123'.

    ``arrows=False`` for figures: their font has no arrow glyph (the title states the direction instead).
    """
    lines = []
    fidelity = [f"{scores['psnr']:.2f} dB" if "psnr" in scores else "", f"{scores['ssim']:.4f}" if "ssim" in scores else ""]
    if "psnr" in scores and "ssim" in scores:
        lines.append(" / ".join(fidelity))
    elif "psnr" in scores or "ssim" in scores:
        name = "psnr" if "psnr" in scores else "ssim"
        lines.append(f"{METRICS[name].label} {fidelity[0] or fidelity[1]}")
    perceptual = [f"{METRICS[m].label}{METRICS[m].arrow if arrows else ''} {v:.{METRICS[m].digits}f}" for m, v in scores.items()
                  if m not in ("psnr", "ssim")]
    if perceptual:
        lines.append("  ".join(perceptual))
    return lines


class Scorer:
    """Computes the chosen metrics of SR images; loads LPIPS (or fails with a UserError) at construction.

    Build it before any image is processed: missing LPIPS weights then stop the run up front.
    """

    def __init__(self, metrics: Iterable[str] = DEFAULT_METRICS, scale: int = 4, protocol: str = "y",
                 lpips_net: str = "alex", lpips_weights: str | Path | None = None, device: str = "cpu"):
        self.metrics = parse_metrics(list(metrics))
        self.scale = scale
        self.protocol = protocol
        self.lpips = None
        if "lpips" in self.metrics:
            from .perceptual import load_lpips

            self.lpips = load_lpips(lpips_net, lpips_weights, device=device)

    @property
    def needs_reference(self) -> bool:
        return any(METRICS[m].needs_reference for m in self.metrics)

    def describe(self) -> dict[str, str]:
        """Where non-obvious inputs came from (LPIPS network and backbone weights), for reports and run dirs."""
        if self.lpips is None:
            return {}
        return {"lpips_net": self.lpips.net, "lpips_backbone": self.lpips.backbone_source}

    def working_bytes_per_pixel(self) -> int:
        """Peak memory of :meth:`score` on one image, per HR pixel (the largest of the chosen metrics':
        they run one after the other). An estimate from measurements, for planning memory, not a bound."""
        needs = [0]
        if "psnr" in self.metrics or "ssim" in self.metrics:
            needs.append(_SCORING_BYTES_PER_PIXEL["fidelity-rgb" if self.protocol == "rgb" else "fidelity-y"])
        if self.lpips is not None:
            needs.append(_SCORING_BYTES_PER_PIXEL.get(f"lpips-{self.lpips.net}", _SCORING_BYTES_PER_PIXEL["lpips-vgg"]))
        if "niqe" in self.metrics:
            needs.append(_SCORING_BYTES_PER_PIXEL["niqe"])
        return max(needs)

    def score(self, sr: np.ndarray, hr: np.ndarray | None) -> dict[str, float]:
        """{metric: value} of ``sr`` (uint8 or [0, 1] float) against ``hr`` (None: no-reference metrics only)."""
        from .metrics import compute_metrics

        scores: dict[str, float] = {}
        if hr is None and self.needs_reference:
            raise ValueError("full-reference metrics need the HR image")
        if "psnr" in self.metrics or "ssim" in self.metrics:
            scores["psnr"], scores["ssim"] = compute_metrics(sr, hr, self.scale, self.protocol)
        if self.lpips is not None:
            scores["lpips"] = self.lpips.score(sr, hr)
        if "niqe" in self.metrics:
            from .perceptual import niqe

            scores["niqe"] = niqe(sr)
        return {m: scores[m] for m in self.metrics}
