"""Benchmark evaluation: PSNR/SSIM of one or more models on test sets, the way papers compute them.

A dataset is a folder with ``HR/`` and optionally ``LR_bicubic/X{s}/`` (the layout ``srtool prepare``
writes), or a prepared name (Set5, Set14, B100, Urban100, DIV2K-valid) resolved by
:func:`srtool.prepare.resolve_dataset`. When the LR folder is absent, LR images are made on the fly
with the MATLAB recipe (:func:`srtool.resize.downscale`, after a top-left mod-crop of HR).

Images are streamed: each HR/LR pair is read once and every model runs on it before the next pair
is read, so memory is bounded by one image (models run through the tiled engine of
:mod:`srtool.engine`). Problems with the *data* (missing HR/, LR not exactly HR/scale, a model
whose scale differs from the dataset's, an unreadable image, an empty dataset) stop the run with a
:class:`~srtool.errors.UserError` naming the file. A *model* that fails on one image is recorded as
failed for that image (``ImageResult.error``) and the run continues: nothing is silently skipped, and
a dataset mean over fewer images than the dataset has is marked incomplete.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError
from .metrics import PROTOCOLS, compute_metrics

if TYPE_CHECKING:
    from .engine import SRModel

LR_FOLDER = "LR_bicubic"
_LR_SCALE_DIR = re.compile(r"^X(\d+)$")


# ----------------------------------------------------------------------------------------- results


@dataclass
class ImageResult:
    """Scores of one model on one image; ``error`` is set (and scores are None) when the model failed."""

    name: str
    psnr: float | None
    ssim: float | None
    seconds: float = 0.0
    error: str | None = None

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

    @property
    def psnr(self) -> float:
        ok = self.succeeded
        return float(np.mean([r.psnr for r in ok])) if ok else math.nan

    @property
    def ssim(self) -> float:
        ok = self.succeeded
        return float(np.mean([r.ssim for r in ok])) if ok else math.nan

    @property
    def seconds(self) -> float:
        return float(sum(r.seconds for r in self.images))


# ----------------------------------------------------------------------------------------- datasets


@dataclass
class ImagePair:
    name: str
    hr_path: Path
    lr_path: Path | None  # None: LR is generated from HR


@dataclass
class Dataset:
    """A resolved test set: its HR/LR file pairs at one scale."""

    name: str
    path: Path
    scale: int
    pairs: list[ImagePair]
    lr_source: str

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
        """(hr, lr) uint8 arrays, validated: LR is exactly HR / scale (a generated LR always is)."""
        from .imageio import read_dataset_image
        from .resize import downscale, modcrop

        hr = read_dataset_image(pair.hr_path)
        if pair.lr_path is None:
            hr = modcrop(hr, self.scale)
            if min(hr.shape[:2]) == 0:
                raise UserError(f"{pair.hr_path}: image is smaller than the scale factor x{self.scale}")
            return hr, downscale(hr, self.scale)
        lr = read_dataset_image(pair.lr_path)
        h, w = hr.shape[:2]
        if lr.shape[0] * self.scale != h or lr.shape[1] * self.scale != w:
            raise UserError(
                f"{pair.lr_path}: LR is {lr.shape[1]}x{lr.shape[0]} but HR {pair.hr_path.name} is {w}x{h}; "
                f"LR must be exactly HR/{self.scale} ({w / self.scale:g}x{h / self.scale:g})"
            )
        if hr.ndim != lr.ndim:
            kinds = {2: "grayscale", 3: "RGB"}
            raise UserError(
                f"{pair.lr_path}: LR is {kinds[lr.ndim]} but HR {pair.hr_path.name} is {kinds[hr.ndim]}"
            )
        return hr, lr


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) as viewers show it (EXIF orientation applied), from the header only."""
    from PIL import Image, UnidentifiedImageError

    from .imageio import ImageReadError

    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({exc})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_pairs(dataset: Dataset) -> None:
    """Fail fast, before any model runs: every header readable and every LR exactly HR / scale."""
    from .metrics import SSIM_WINDOW

    for pair in dataset.pairs:
        hr_w, hr_h = header_size(pair.hr_path)
        if min(hr_w, hr_h) - 2 * dataset.scale < SSIM_WINDOW:
            raise UserError(
                f"{pair.hr_path}: {hr_w}x{hr_h} is too small to score: after cropping {dataset.scale} px from every "
                f"border it must still hold the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window"
            )
        if pair.lr_path is None:
            if hr_w < dataset.scale or hr_h < dataset.scale:
                raise UserError(f"{pair.hr_path}: image {hr_w}x{hr_h} is smaller than the scale factor x{dataset.scale}")
            continue
        lr_w, lr_h = header_size(pair.lr_path)
        if lr_w * dataset.scale != hr_w or lr_h * dataset.scale != hr_h:
            raise UserError(
                f"{pair.lr_path}: LR is {lr_w}x{lr_h} but HR {pair.hr_path.name} is {hr_w}x{hr_h}; "
                f"LR must be exactly HR/{dataset.scale} ({hr_w / dataset.scale:g}x{hr_h / dataset.scale:g})"
            )


def _lr_scales(folder: Path) -> list[int]:
    lr_root = folder / LR_FOLDER
    if not lr_root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in lr_root.iterdir() if p.is_dir() and (m := _LR_SCALE_DIR.match(p.name)))


def open_dataset(dataset: str | Path, scale: int) -> Dataset:
    """Resolve a dataset folder or name and pair its HR images with LR images at ``scale``.

    Raises :class:`UserError` for a missing HR/, an empty HR/, LR folders only for other scales
    (the model's scale differs from the dataset's) or an HR image without its LR counterpart.
    """
    from .imageio import list_images
    from .prepare import resolve_dataset

    folder = Path(resolve_dataset(dataset, scale))
    hr_dir = folder / "HR"
    if not hr_dir.is_dir():
        raise UserError(f"dataset {dataset}: {folder} has no HR/ folder (expected HR/ and optionally {LR_FOLDER}/X{scale}/)")
    hr_images = list_images(hr_dir)
    if not hr_images:
        raise UserError(f"dataset {dataset}: no images in {hr_dir}")
    scales = _lr_scales(folder)
    lr_dir = folder / LR_FOLDER / f"X{scale}"
    if scales and scale not in scales:
        have = ", ".join(f"x{s}" for s in scales)
        raise UserError(
            f"dataset {dataset}: the model is x{scale} but {folder / LR_FOLDER} has LR images for {have} only "
            f"(model scale and dataset scale must match)"
        )
    name = _dataset_label(dataset, folder)
    if not lr_dir.is_dir():
        pairs = [ImagePair(p.stem, p, None) for p in hr_images]
        dataset = Dataset(name, folder, scale, pairs, "generated")
        check_pairs(dataset)
        return dataset
    lr_by_stem: dict[str, Path] = {}
    for p in list_images(lr_dir):
        stem = _strip_scale_suffix(p.stem, scale)
        if stem in lr_by_stem:
            raise UserError(f"{lr_dir}: two LR images for {stem!r}: {lr_by_stem[stem].name} and {p.name}")
        lr_by_stem[stem] = p
    pairs = []
    for hr_path in hr_images:
        lr_path = lr_by_stem.pop(hr_path.stem, None)
        if lr_path is None:
            raise UserError(f"{hr_path}: no LR image for it in {lr_dir}")
        pairs.append(ImagePair(hr_path.stem, hr_path, lr_path))
    if lr_by_stem:
        extra = sorted(lr_by_stem)[0]
        raise UserError(f"{lr_by_stem[extra]}: LR image without an HR image {extra}.* in {hr_dir}")
    dataset = Dataset(name, folder, scale, pairs, f"{LR_FOLDER}/X{scale}")
    check_pairs(dataset)
    return dataset


def _strip_scale_suffix(stem: str, scale: int) -> str:
    """DIV2K names LR files ``0801x4.png``; srtool's prepare writes ``0801.png``. Accept both."""
    suffix = f"x{scale}"
    return stem[: -len(suffix)] if stem.lower().endswith(suffix) and len(stem) > len(suffix) else stem


def _dataset_label(dataset: str | Path, folder: Path) -> str:
    text = str(dataset)
    if not Path(text).expanduser().exists():
        return text  # a name such as "Set5"
    given = Path(os.path.normpath(os.path.abspath(Path(text).expanduser())))  # the user's name, links not followed
    if given.name.lower() == "valid" and given.parent.name.lower() == "div2k":
        return "DIV2K-valid"
    return given.name or str(given)


# ------------------------------------------------------------------------------------------ running


ProgressFactory = Callable[[str, int], "ProgressHandle"]


class ProgressHandle:
    """Minimal progress interface (a rich bar in the CLI, nothing in library calls)."""

    def advance(self) -> None: ...

    def close(self, completed: bool = True) -> None:
        """``completed=False``: the run stopped on an error; the bar is erased so the error stands alone."""


def _rich_progress(description: str, total: int) -> ProgressHandle:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )
    progress.start()
    task = progress.add_task(description, total=total)

    class _Handle(ProgressHandle):
        def advance(self) -> None:
            progress.advance(task)

        def close(self, completed: bool = True) -> None:
            if not completed:
                progress.live.transient = True
            progress.stop()

    return _Handle()


def _run_model(model: SRModel, lr: np.ndarray, hr_shape: tuple[int, ...]) -> np.ndarray:
    sr = model(lr)
    if not isinstance(sr, np.ndarray):
        raise TypeError(f"model returned {type(sr).__name__}, not an array")
    if sr.shape != hr_shape:
        raise ValueError(f"model output {sr.shape} does not match HR {hr_shape}")
    return sr


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


ImageCallback = Callable[[str, "np.ndarray", "np.ndarray", "dict[int, np.ndarray]"], None]


def _common_scale(models: Sequence[SRModel], protocol: str) -> int:
    """Check the protocol and that all models share one scale (they are compared on the same images)."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if not models:
        raise UserError("no model to evaluate")
    scales = {m.scale for m in models}
    if len(scales) > 1:
        raise UserError(
            f"models of different scales cannot be compared on one dataset: {', '.join(f'{m.name} x{m.scale}' for m in models)}"
        )
    return next(iter(scales))


def evaluate_models(
    models: Sequence[SRModel],
    dataset: str | Path | Dataset,
    protocol: str = "y",
    progress: bool | ProgressFactory = True,
    on_image: ImageCallback | None = None,
    labels: Sequence[str] | None = None,
    strict: bool = False,
) -> list[DatasetResult]:
    """Evaluate several models on one dataset, reading each image once; one result per model.

    ``on_image(name, hr, lr, outputs)`` is called after each image with the SR output of every model
    that succeeded on it (keyed by model index), e.g. to save the images. ``labels`` name the models in
    the results (default: :func:`model_labels`). A model failing on an image is recorded in that
    image's result; with ``strict`` the exception propagates instead (e.g. for training validation,
    where a partial mean would be misleading).
    """
    scale = _common_scale(models, protocol)
    data = dataset if isinstance(dataset, Dataset) else open_dataset(dataset, scale)
    if data.scale != scale:
        raise UserError(f"dataset {data.name} is x{data.scale} but the model is x{scale}")
    names = list(labels) if labels is not None else model_labels(models)
    results = [
        DatasetResult(data.name, str(data.path), scale, protocol, label, m.identity, data.lr_source)
        for m, label in zip(models, names)
    ]
    factory: ProgressFactory | None
    if progress is True:
        factory = _rich_progress
    elif callable(progress):
        factory = progress
    else:
        factory = None
    bar = factory(f"{data.name} x{scale}", len(data)) if factory else None
    completed = False
    try:
        for pair in data.pairs:
            hr, lr = data.load(pair)
            outputs: dict[int, np.ndarray] = {}
            for index, (model, result) in enumerate(zip(models, results)):
                started = time.perf_counter()
                try:
                    sr = _run_model(model, lr, hr.shape)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # the model failed on this image: record it, go on
                    if strict:
                        raise
                    result.images.append(
                        ImageResult(pair.name, None, None, time.perf_counter() - started, _describe_failure(exc))
                    )
                    continue
                psnr_value, ssim_value = compute_metrics(sr, hr, scale, protocol)
                result.images.append(ImageResult(pair.name, psnr_value, ssim_value, time.perf_counter() - started))
                outputs[index] = sr
            if on_image is not None:
                on_image(pair.name, hr, lr, outputs)
            if bar:
                bar.advance()
        completed = True
    finally:
        if bar:
            bar.close(completed)
    return results


def evaluate_dataset(
    model: SRModel, dataset: str | Path, protocol: str = "y", progress: bool = True, strict: bool = False
) -> DatasetResult:
    """PSNR/SSIM of ``model`` on ``dataset`` (folder with HR/ or a prepared name) under ``protocol``.

    Check ``result.complete``: a model that failed on some images is recorded, not raised, unless
    ``strict`` is set.
    """
    return evaluate_models([model], dataset, protocol=protocol, progress=progress, strict=strict)[0]


def model_labels(models: Sequence[SRModel]) -> list[str]:
    """Unique row labels: the model names, with ``#2``, ``#3`` appended to repeats."""
    seen: dict[str, int] = {}
    labels = []
    for m in models:
        seen[m.name] = seen.get(m.name, 0) + 1
        labels.append(m.name if seen[m.name] == 1 else f"{m.name}#{seen[m.name]}")
    return labels


# ------------------------------------------------------------------------------------- whole runs


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


def _unique_dataset_names(data: Sequence[Dataset]) -> None:
    """Two folders with the same name still get separate table columns (``name#2``)."""
    seen: dict[str, int] = {}
    for dataset in data:
        seen[dataset.name] = seen.get(dataset.name, 0) + 1
        if seen[dataset.name] > 1:
            dataset.name = f"{dataset.name}#{seen[dataset.name]}"


def evaluate(
    models: Sequence[SRModel],
    datasets: Sequence[str | Path],
    protocol: str = "y",
    progress: bool | ProgressFactory = True,
    on_image: Callable[[Dataset, str, np.ndarray, np.ndarray, dict[int, np.ndarray]], None] | None = None,
    opened: Sequence[Dataset] | None = None,
) -> EvalReport:
    """Evaluate every model on every dataset (datasets are all opened and checked before any work)."""
    import datetime

    from . import __version__

    scale = _common_scale(models, protocol)
    data = list(opened) if opened is not None else [open_dataset(d, scale) for d in datasets]
    _unique_dataset_names(data)
    labels = model_labels(models)
    results: list[DatasetResult] = []
    for dataset in data:
        callback = None
        if on_image is not None:
            callback = lambda name, hr, lr, outs, _d=dataset: on_image(_d, name, hr, lr, outs)  # noqa: E731
        results.extend(evaluate_models(models, dataset, protocol, progress, callback, labels))
    entries = [ModelEntry(label, m.name, m.identity, m.source, m.scale) for label, m in zip(labels, models)]
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return EvalReport(protocol, scale, entries, results, __version__, created)


# ---------------------------------------------------------------------------- the `srtool eval` run


@dataclass
class EvalOutputs:
    """Files an eval run writes besides the console table (None = not written)."""

    json: Path | None = None
    csv: Path | None = None
    markdown: Path | None = None
    save_images: Path | None = None
    figure: Path | None = None
    figure_image: str | None = None  # "NAME" or "DATASET/NAME"; default: see choose_figure_image
    figure_region: tuple[int, int, int, int] | None = None  # x, y, w, h in HR pixels
    overwrite: bool = False


def load_models(specs: Sequence[str | Path], device: str = "auto", tile: int | None = None, scale: int | None = None) -> list[SRModel]:
    """Load every model spec through :func:`srtool.loading.load_model`, in float32.

    Evaluation runs networks in fp32 whatever the device (fp16 would move scores by ~1e-3 dB and
    published numbers are fp32). ``bicubic`` takes the networks' scale (or ``scale``, else 4).
    """
    from .loading import bicubic_model, load_model

    specs = list(specs) or ["default"]
    loaded: dict[int, SRModel] = {}
    for i, spec in enumerate(specs):
        if str(spec) != "bicubic":
            loaded[i] = load_model(spec, device=device, precision="fp32", tile=tile, scale=scale)
    network_scales = {m.scale for m in loaded.values() if not m.is_bicubic}
    if scale is None and len(network_scales) > 1:
        listing = ", ".join(f"{m.name} x{m.scale}" for m in loaded.values() if not m.is_bicubic)
        raise UserError(f"models of different scales cannot be compared on one dataset: {listing}")
    bicubic_scale = scale or (next(iter(network_scales)) if network_scales else 4)
    for i, spec in enumerate(specs):
        if str(spec) == "bicubic":
            loaded[i] = bicubic_model(bicubic_scale)
    # "default" without a bundled model is bicubic at 4: keep every row at one scale.
    return [bicubic_model(bicubic_scale) if m.is_bicubic and m.scale != bicubic_scale else m
            for m in (loaded[i] for i in range(len(specs)))]


def _safe_component(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._#+-]", "_", text) or "_"


def saved_image_path(root: Path, dataset: str, model_label: str, image: str) -> Path:
    """``--save-images`` layout: ``ROOT/<dataset>/<model>/<image>.png``."""
    return root / _safe_component(dataset) / _safe_component(model_label) / f"{image}.png"


def _check_outputs(outputs: EvalOutputs, datasets: Sequence[Dataset], labels: Sequence[str]) -> None:
    """Refuse, before any work, to overwrite anything the user has unless ``overwrite`` is set."""
    if outputs.overwrite:
        return
    for option, path in (("--json", outputs.json), ("--csv", outputs.csv), ("--markdown", outputs.markdown),
                         ("--figure", outputs.figure)):
        if path is not None and Path(path).exists():
            raise UserError(f"{option} {path}: file exists (use --overwrite to replace it)")
    if outputs.save_images is not None:
        for d in datasets:
            for label in labels:
                for pair in d.pairs:
                    target = saved_image_path(Path(outputs.save_images), d.name, label, pair.name)
                    if target.exists():
                        raise UserError(f"--save-images: {target} exists (use --overwrite to replace it)")


def find_image(datasets: Sequence[Dataset], wanted: str) -> tuple[Dataset, ImagePair]:
    """The image ``NAME`` (first dataset holding it) or ``DATASET/NAME``."""
    for dataset in datasets:
        for pair in dataset.pairs:
            if wanted in (pair.name, f"{dataset.name}/{pair.name}"):
                return dataset, pair
    raise UserError(f"--figure-image {wanted}: no such image in {', '.join(d.name for d in datasets)}")


def _check_region(region: tuple[int, int, int, int], dataset: Dataset, pair: ImagePair) -> None:
    x, y, w, h = region
    width, height = header_size(pair.hr_path)
    if pair.lr_path is None:  # generated LR: HR is mod-cropped first
        width, height = width - width % dataset.scale, height - height % dataset.scale
    if x + w > width or y + h > height:
        raise UserError(f"--figure-region {x},{y},{w},{h} is outside {dataset.name}/{pair.name} ({width}x{height})")


def choose_figure_image(report: EvalReport, wanted: str | None) -> tuple[str, str]:
    """(dataset, image) for ``--figure``.

    Given ``NAME`` or ``DATASET/NAME``: that image (first dataset holding it). Otherwise, among
    images every model scored: with two or more models, the one with the largest PSNR spread
    (max - min over the models); with one model, the one it scores lowest. Ties: first in order.
    """
    by_image: dict[tuple[str, str], list[float | None]] = {}
    for r in report.results:
        for image in r.images:
            by_image.setdefault((r.name, image.name), []).append(image.psnr)
    if wanted:
        for dataset, image in by_image:
            if wanted in (image, f"{dataset}/{image}"):
                return dataset, image
        raise UserError(f"--figure-image {wanted}: no such image in {', '.join(report.dataset_names)}")
    scored = {key: values for key, values in by_image.items() if all(v is not None for v in values)}
    if not scored:
        raise UserError("--figure: no image was scored by every model")
    if len(report.models) > 1:
        return max(scored, key=lambda key: max(scored[key]) - min(scored[key]))
    return min(scored, key=lambda key: scored[key][0])


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``x,y,w,h`` (HR pixels) from the command line."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--figure-region {text!r}: expected four integers x,y,w,h") from None
    if w < 1 or h < 1 or x < 0 or y < 0:
        raise UserError(f"--figure-region {text!r}: x, y must be >= 0 and w, h >= 1")
    return x, y, w, h


def _write_figure(report: EvalReport, models: Sequence[SRModel], datasets: Sequence[Dataset], outputs: EvalOutputs) -> tuple[str, str, tuple[int, int, int, int]]:
    from .figure import comparison_figure, save_figure

    dataset_name, image_name = choose_figure_image(report, outputs.figure_image)
    dataset = next(d for d in datasets if d.name == dataset_name)
    pair = next(p for p in dataset.pairs if p.name == image_name)
    region = outputs.figure_region
    if region is not None:
        _check_region(region, dataset, pair)
    hr, lr = dataset.load(pair)
    labels = [m.label for m in report.models]
    title = f"{dataset_name}/{image_name}, x{report.scale}, protocol {report.protocol}"
    try:
        figure, layout = comparison_figure(hr, lr, list(models), labels, report.scale, report.protocol, region, title)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--figure: a model failed on {dataset_name}/{image_name} ({_describe_failure(exc)}); "
                        "choose another --figure-image") from None
    save_figure(figure, outputs.figure)
    return dataset_name, image_name, layout.region


def run_eval(
    model_specs: Sequence[str | Path],
    datasets: Sequence[str | Path],
    protocol: str = "y",
    device: str = "auto",
    tile: int | None = None,
    scale: int | None = None,
    outputs: EvalOutputs | None = None,
    progress: bool | ProgressFactory = True,
) -> EvalReport | None:
    """What ``srtool eval`` does: load models, check datasets and outputs, evaluate, write files.

    Under torchrun each rank evaluates a slice of every dataset (:mod:`srtool.sharding`) and rank 0
    gathers the per-image results, writes the files and returns the full report; other ranks return None.
    """
    from .imageio import write_png
    from .report import write_csv, write_json, write_markdown
    from .sharding import current_shard

    shard = current_shard()

    outputs = outputs or EvalOutputs()
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if not datasets:
        raise UserError("no dataset given (use --data FOLDER_OR_NAME)")
    if outputs.figure is not None and Path(outputs.figure).suffix.lower() != ".png":
        raise UserError(f"--figure {outputs.figure}: the figure is a PNG; give a .png file name")
    models = load_models(model_specs, shard.device(device), tile, scale)
    model_scale = models[0].scale
    opened = [open_dataset(d, model_scale) for d in datasets]
    _unique_dataset_names(opened)
    labels = model_labels(models)
    _check_outputs(outputs, opened, labels)
    if outputs.figure is not None and outputs.figure_image:  # fail before the work, not after it
        figure_dataset, figure_pair = find_image(opened, outputs.figure_image)
        if outputs.figure_region is not None:
            _check_region(outputs.figure_region, figure_dataset, figure_pair)

    on_image = None
    if outputs.save_images is not None:
        root = Path(outputs.save_images)

        def on_image(dataset: Dataset, name: str, hr: np.ndarray, lr: np.ndarray, srs: dict[int, np.ndarray]) -> None:
            for index, sr in srs.items():
                write_png(saved_image_path(root, dataset.name, labels[index], name), sr)

    if shard.enabled:
        shard.barrier()  # every rank has checked the outputs before any rank writes one
        mine = [replace(d, pairs=shard.take(d.pairs)) for d in opened]
        report = evaluate(models, datasets, protocol, progress if shard.is_main else False, on_image, opened=mine)
        parts = shard.gather([r.images for r in report.results])
        if parts is None:
            return None
        for k, result in enumerate(report.results):
            result.images = shard.interleave([part[k] for part in parts])
    else:
        report = evaluate(models, datasets, protocol, progress, on_image, opened=opened)
    if outputs.json is not None:
        write_json(report, outputs.json)
    if outputs.csv is not None:
        write_csv(report, outputs.csv)
    if outputs.markdown is not None:
        write_markdown(report, outputs.markdown)
    if outputs.figure is not None:
        report.figure = _write_figure(report, models, opened, outputs)
    return report
