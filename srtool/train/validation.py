"""What training validation measures and which metric picks ``best``, decided once at start-up.

A GAN run that keeps its highest-PSNR checkpoint keeps its blurriest one, so ``validation.select =
"auto"`` picks LPIPS for GAN presets (PSNR for PSNR-stage presets). LPIPS needs real backbone weights
(:func:`srtool.perceptual.load_lpips`); where they are not available, LPIPS is dropped from the
validated metrics, the run says at start-up which metric picks ``best`` instead, and the decision is
recorded in ``validation.json`` in the run directory. Asking for ``select = "lpips"`` explicitly
without the weights is an error before training starts: that run would otherwise keep a different
checkpoint than the one asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..config import Preset
from ..errors import UserError
from ..scoring import METRICS, Scorer

VALIDATION_FILE = "validation.json"


@dataclass
class ValidationPlan:
    metrics: tuple[str, ...]
    select: str
    higher_is_better: bool
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # LPIPS net and backbone weights file

    def record(self) -> dict:
        return asdict(self)


def plan_validation(preset: Preset, warn: Callable[[str], None], device: str = "cpu") -> tuple[ValidationPlan, Scorer]:
    """The plan and a loaded :class:`Scorer` (LPIPS weights read here, before any training step)."""
    v = preset.validation
    metrics = list(v.metrics)
    notes: list[str] = []
    wanted = v.select if v.select != "auto" else ("lpips" if preset.stage == "gan" else "psnr")
    if v.select == "auto" and wanted != "lpips" and wanted not in metrics:  # e.g. metrics = ["ssim"]
        wanted = metrics[0]
    if wanted == "lpips" and "lpips" not in metrics:
        metrics.append("lpips")
    scorer = None
    if "lpips" in metrics:
        try:
            scorer = Scorer(metrics, preset.scale, v.protocol, v.lpips_net, v.lpips_weights, device)
        except UserError as exc:
            if v.select == "lpips":
                raise UserError(f"validation.select = 'lpips': {exc}") from None
            metrics.remove("lpips")
            metrics = metrics or ["psnr", "ssim"]
            if wanted == "lpips":
                wanted = "psnr" if "psnr" in metrics else metrics[0]
            notes.append(f"LPIPS not validated (its weights are not available); best checkpoint picked by "
                         f"{METRICS[wanted].label} instead. {exc}")
    if scorer is None:
        scorer = Scorer(metrics, preset.scale, v.protocol, device=device)
    for note in notes:
        warn(note)
    plan = ValidationPlan(tuple(metrics), wanted, METRICS[wanted].higher_is_better, notes, scorer.describe())
    return plan, scorer


def check_validation_data(folders: list, plan: ValidationPlan, scale: int) -> None:
    """Every validation image readable and large enough for the validated metrics, checked at start-up as
    ``srtool eval`` checks them: found only at the first validation (``validation.every`` iterations in,
    before that iteration's checkpoint), an image too small for SSIM or NIQE stopped the run there and
    lost those iterations (NIQE's as an internal error)."""
    from ..evaluate import check_niqe_sizes, open_dataset

    opened = [open_dataset(folder, scale) for folder in folders]
    if "niqe" in plan.metrics:
        check_niqe_sizes(opened)
