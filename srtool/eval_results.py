"""What an evaluation measured: per-image and per-dataset results and the whole report.

Plain data shared by the evaluator (:mod:`srtool.evaluate`), the writers (:mod:`srtool.report`), the
figures and sweep reports, kept apart so the writers need not import the evaluator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .scoring import DEFAULT_METRICS

AS_IS = "as-is"  # identity/LR source of images scored as they are (no model, no HR)


@dataclass
class ImageResult:
    """Scores of one model on one image; ``error`` is set (and scores are None) when the model failed.

    A metric that was not asked for (``--metric``) is None too.
    """

    name: str
    psnr: float | None
    ssim: float | None
    seconds: float = 0.0
    error: str | None = None
    lpips: float | None = None
    niqe: float | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class DatasetResult:
    """One model on one dataset: per-image results and their means (over the images that succeeded)."""

    name: str
    path: str
    scale: int
    protocol: str
    model: str
    model_identity: str
    lr_source: str  # "LR_bicubic/X4" or "generated" (MATLAB bicubic on the fly)
    images: list[ImageResult] = field(default_factory=list)

    @property
    def succeeded(self) -> list[ImageResult]:
        return [r for r in self.images if not r.failed]

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.failed]

    @property
    def complete(self) -> bool:
        """True when every image was scored (only then is the mean comparable with published tables)."""
        return bool(self.images) and not self.failed

    def mean(self, metric: str) -> float:
        """Mean of ``metric`` over the images that succeeded (NaN when none did or it was not computed)."""
        values = [getattr(r, metric) for r in self.succeeded]
        return float(np.mean(values)) if values and None not in values else math.nan

    @property
    def psnr(self) -> float:
        return self.mean("psnr")

    @property
    def ssim(self) -> float:
        return self.mean("ssim")

    @property
    def seconds(self) -> float:
        return float(sum(r.seconds for r in self.images))


@dataclass
class ModelEntry:
    """A model as reports name it: unique label, identity (weights sha256 or "bicubic"), source."""

    label: str
    name: str
    identity: str
    source: str
    scale: int


@dataclass
class EvalReport:
    """Everything one ``srtool eval`` run measured: what the JSON/CSV/Markdown writers serialise."""

    protocol: str
    scale: int
    models: list[ModelEntry]
    results: list[DatasetResult]
    srtool_version: str
    created: str
    figure: tuple[str, str, tuple[int, int, int, int]] | None = None  # (dataset, image, region) drawn
    metrics: tuple[str, ...] = DEFAULT_METRICS  # the columns, in the order asked
    metric_sources: dict[str, str] = field(default_factory=dict)  # e.g. LPIPS net and backbone weights
    # output files (``--json PATH``...) that appeared while the run worked and were kept, not replaced
    kept: list[str] = field(default_factory=list)
    # output files that could not be written (``--json /full/disk/r.json: cannot write (No space left...)``)
    unwritten: list[str] = field(default_factory=list)

    @property
    def dataset_names(self) -> list[str]:
        names: list[str] = []
        for r in self.results:
            if r.name not in names:
                names.append(r.name)
        return names

    def cell(self, model_label: str, dataset: str) -> DatasetResult | None:
        for r in self.results:
            if r.model == model_label and r.name == dataset:
                return r
        return None
