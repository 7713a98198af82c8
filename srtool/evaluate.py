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

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError
from .imageio import DEFAULT_MAX_PIXELS
from .eval_results import AS_IS, DatasetResult, EvalReport, ImageResult, ModelEntry
from .metrics import PROTOCOLS
from .scoring import DEFAULT_METRICS, Scorer

if TYPE_CHECKING:
    from .engine import SRModel

LR_FOLDER = "LR_bicubic"
_LR_SCALE_DIR = re.compile(r"^X(\d+)$", re.IGNORECASE)  # X4, or x4 as some releases spell it


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the decompression-bomb guard (``--max-pixels``)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
        """(hr, lr) uint8 arrays, validated: LR is exactly HR / scale (a generated LR always is)."""
        from .imageio import read_dataset_image
        from .resize import downscale, modcrop

        hr = read_dataset_image(pair.hr_path, self.max_pixels)
        if pair.lr_path is None:
            hr = modcrop(hr, self.scale)
            if min(hr.shape[:2]) == 0:
                raise UserError(f"{pair.hr_path}: image is smaller than the scale factor x{self.scale}")
            return hr, downscale(hr, self.scale)
        lr = read_dataset_image(pair.lr_path, self.max_pixels)
        h, w = hr.shape[:2]
        if lr.shape[0] * self.scale != h or lr.shape[1] * self.scale != w:
            raise UserError(
                f"{pair.lr_path}: LR is {lr.shape[1]}x{lr.shape[0]} but HR {pair.hr_path.name} is {w}x{h}; "
                f"LR must be exactly HR/{self.scale} ({w / self.scale:g}x{h / self.scale:g})"
            )
        if hr.ndim != lr.ndim:  # (found up front from the headers, but for palette images)
            kinds = {2: "grayscale", 3: "RGB"}
            raise _kind_mismatch(pair, kinds[lr.ndim], kinds[hr.ndim])
        return hr, lr


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) as viewers show it (EXIF orientation applied), from the header only."""
    from .imageio import image_size

    return image_size(path)


def _kind_mismatch(pair: ImagePair, lr_kind: str, hr_kind: str) -> UserError:
    return UserError(f"{pair.lr_path}: LR is {lr_kind} but HR {pair.hr_path.name} is {hr_kind}")


def check_pairs(dataset: Dataset) -> None:
    """Fail fast, before any model runs: every image complete (not truncated, see
    :func:`srtool.imageio.check_complete`) and every LR exactly HR / scale."""
    from .imageio import check_complete, check_pixels, dataset_kind, image_header
    from .metrics import SSIM_WINDOW

    for pair in dataset.pairs:
        hr_w, hr_h, hr_mode = image_header(pair.hr_path)
        check_pixels(hr_w, hr_h, str(pair.hr_path), dataset.max_pixels)  # here, not when the image is reached
        check_complete(pair.hr_path, dataset.max_pixels)  # (decodes all but PNG/JPEG: under the dataset's limit)
        if pair.lr_path is not None:
            check_complete(pair.lr_path, dataset.max_pixels)
        if pair.lr_path is None and (hr_w < dataset.scale or hr_h < dataset.scale):
            raise UserError(f"{pair.hr_path}: image {hr_w}x{hr_h} is smaller than the scale factor x{dataset.scale}")
        # a generated LR comes from the mod-cropped HR: that is the size scored (19x19 at x4 -> 16x16)
        scored = min(hr_w, hr_h) - (min(hr_w, hr_h) % dataset.scale if pair.lr_path is None else 0)
        if scored - 2 * dataset.scale < SSIM_WINDOW:
            cropped = "" if scored == min(hr_w, hr_h) else f"mod-cropping to a multiple of {dataset.scale} and "
            raise UserError(
                f"{pair.hr_path}: {hr_w}x{hr_h} is too small to score: after {cropped}cropping {dataset.scale} px "
                f"from every border it must still hold the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window"
            )
        if pair.lr_path is None:
            continue
        lr_w, lr_h, lr_mode = image_header(pair.lr_path)
        if lr_w * dataset.scale != hr_w or lr_h * dataset.scale != hr_h:
            raise UserError(
                f"{pair.lr_path}: LR is {lr_w}x{lr_h} but HR {pair.hr_path.name} is {hr_w}x{hr_h}; "
                f"LR must be exactly HR/{dataset.scale} ({hr_w / dataset.scale:g}x{hr_h / dataset.scale:g})"
            )
        # grayscale LR for an RGB HR (or the reverse): here, not when the pair is reached (after other
        # images were scored and saved); a palette image's kind is known only once decoded (Dataset.load)
        hr_kind, lr_kind = dataset_kind(hr_mode), dataset_kind(lr_mode)
        if hr_kind and lr_kind and hr_kind != lr_kind:
            raise _kind_mismatch(pair, lr_kind, hr_kind)


def _lr_dirs(folder: Path) -> dict[int, Path]:
    """``LR_bicubic/X{s}`` folders by scale (``x4`` counts too: it used to be ignored, and LR generated)."""
    lr_root = folder / LR_FOLDER
    if not lr_root.is_dir():
        return {}
    found = {int(m.group(1)): p for p in sorted(lr_root.iterdir()) if p.is_dir() and (m := _LR_SCALE_DIR.match(p.name))}
    return dict(sorted(found.items()))


def _dataset_images(folder: Path) -> list[Path]:
    """The images of a dataset folder; an entry named as an image that cannot be read as a file (a broken
    link, a FIFO) is refused rather than left out: the means would be over fewer images than the set has."""
    from .imageio import IMAGE_SUFFIXES, list_images

    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_file() and not p.is_dir():
            what = "a broken link" if p.is_symlink() and not p.exists() else "not a regular file"
            raise UserError(f"{p}: {what}; a dataset image must be a file (remove or fix it)")
    return list_images(folder)


def open_dataset(dataset: str | Path, scale: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Dataset:
    """Resolve a dataset folder or name and pair its HR images with LR images at ``scale``.

    Raises :class:`UserError` for a missing HR/, an empty HR/, LR folders only for other scales
    (the model's scale differs from the dataset's) or an HR image without its LR counterpart.
    """
    from .prepare import resolve_dataset
    from .prepare.paths import is_flat_hr_folder

    folder = Path(resolve_dataset(dataset, scale))
    hr_dir = folder / "HR"
    if is_flat_hr_folder(folder):  # a plain folder of HR images: LR made on the fly, like an HR/ without LR/
        hr_dir = folder
    elif not hr_dir.is_dir():
        raise UserError(f"dataset {dataset}: {folder} has no HR/ folder (expected HR/ and optionally {LR_FOLDER}/X{scale}/)")
    hr_images = _dataset_images(hr_dir)
    if not hr_images:
        raise UserError(f"dataset {dataset}: no images in {hr_dir}")
    lr_dirs = _lr_dirs(folder)
    scales = list(lr_dirs)
    lr_dir = lr_dirs.get(scale, folder / LR_FOLDER / f"X{scale}")
    flat = hr_dir == folder
    if flat:
        scales = []
    if scales and scale not in scales:
        have = ", ".join(f"x{s}" for s in scales)
        raise UserError(
            f"dataset {dataset}: the model is x{scale} but {folder / LR_FOLDER} has LR images for {have} only "
            f"(model scale and dataset scale must match)"
        )
    name = _dataset_label(dataset, folder)
    hr_by_stem = _by_stem(hr_images, "HR", hr_dir, lambda stem: stem)
    if flat or not lr_dir.is_dir():
        pairs = [ImagePair(stem, p, None) for stem, p in hr_by_stem.items()]
        dataset = Dataset(name, folder, scale, pairs, "generated", max_pixels)
        check_pairs(dataset)
        return dataset
    lr_by_stem = _by_stem(_dataset_images(lr_dir), "LR", lr_dir, lambda stem: _strip_scale_suffix(stem, scale))
    pairs = []
    for hr_path in hr_images:
        lr_path = lr_by_stem.pop(hr_path.stem, None)
        if lr_path is None:
            raise UserError(f"{hr_path}: no LR image for it in {lr_dir}")
        pairs.append(ImagePair(hr_path.stem, hr_path, lr_path))
    if lr_by_stem:
        extra = sorted(lr_by_stem)[0]
        raise UserError(f"{lr_by_stem[extra]}: LR image without an HR image {extra}.* in {hr_dir}")
    dataset = Dataset(name, folder, scale, pairs, f"{LR_FOLDER}/{lr_dir.name}", max_pixels)
    check_pairs(dataset)
    return dataset


def _by_stem(images: list[Path], kind: str, folder: Path, key: Callable[[str], str]) -> dict[str, Path]:
    """Images by the name results give them (their stem): two files of one name (``a.png``, ``a.jpg``)
    would be two rows named ``a``, or an HR paired with the other's LR, so they are refused."""
    found: dict[str, Path] = {}
    for p in images:
        stem = key(p.stem)
        if stem in found:
            raise UserError(f"{folder}: two {kind} images named {stem!r}: {found[stem].name} and {p.name}; results "
                            "(and --save-images files) are named by stem, so rename or move one")
        found[stem] = p
    return found


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
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )
    progress.start()
    task = progress.add_task(escape(description), total=total)  # a folder "x[/]y" is a name, not markup

    class _Handle(ProgressHandle):
        def advance(self) -> None:
            progress.advance(task)

        def close(self, completed: bool = True) -> None:
            if not completed:
                progress.live.transient = True
            progress.stop()

    return _Handle()


@contextlib.contextmanager
def _progress_bar(progress: bool | ProgressFactory, description: str, total: int):
    """Yields ``advance()``; the bar (if any) is closed as completed only when the block finished."""
    factory = _rich_progress if progress is True else (progress if callable(progress) else None)
    bar = factory(description, total) if factory else None
    completed = False
    try:
        yield bar.advance if bar else (lambda: None)
        completed = True
    finally:
        if bar:
            bar.close(completed)


def _scored(name: str, started: float, scores: dict[str, float]) -> ImageResult:
    """The image's result; metrics that were not chosen stay None."""
    return ImageResult(name, seconds=time.perf_counter() - started, **{"psnr": None, "ssim": None, **scores})


def _run_model(model: SRModel, lr: np.ndarray, hr_shape: tuple[int, ...], cancel: threading.Event | None) -> np.ndarray:
    from .engine import SRModel, upscale_array

    # the engine stops at its next tile once ``cancel`` is set (Ctrl-C with image lanes); a model that
    # overrides __call__ (a user's wrapper, a test's fault injection) is called as it is
    sr = upscale_array(model, lr, cancel=cancel) if type(model).__call__ is SRModel.__call__ else model(lr)
    if not isinstance(sr, np.ndarray):
        raise TypeError(f"model returned {type(sr).__name__}, not an array")
    if sr.shape != hr_shape:
        raise ValueError(f"model output {sr.shape} does not match HR {hr_shape}")
    if sr.dtype != lr.dtype:
        raise ValueError(f"model output is {sr.dtype}, not {lr.dtype} like its input")
    return sr


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


ImageCallback = Callable[[str, "np.ndarray", "np.ndarray", "dict[int, np.ndarray]"], None]


def _model_list(models: SRModel | Sequence[SRModel]) -> list[SRModel]:
    """``models`` as a list (one model is a list of one); anything that is not an srtool model is named."""
    from .engine import SRModel, check_model

    single = isinstance(models, (SRModel, str, Path)) or not hasattr(models, "__iter__")
    items = [models] if single else list(models)
    for model in items:
        check_model(model)
    return items


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
    scorer: Scorer | None = None,
    workers: int | None = None,
) -> list[DatasetResult]:
    """Evaluate several models on one dataset, reading each image once; one result per model.

    ``on_image(name, hr, lr, outputs)`` is called after each image with the SR output of every model
    that succeeded on it (keyed by model index), e.g. to save the images; with image lanes it is called
    from the lanes, one call at a time, in the order images finish (so is ``progress``'s advance).
    ``labels`` name the models in the results (default: :func:`model_labels`). A model failing on an
    image is recorded in that image's result; with ``strict`` the exception propagates instead (e.g.
    for training validation, where a partial mean would be misleading). ``scorer`` chooses the metrics
    (default: PSNR and SSIM).

    ``workers``: images evaluated at once when every model runs on the CPU (:func:`eval_lanes`;
    default up to 4, one per core). Results are the same as one image at a time and keep the
    dataset's order; an image's ``seconds`` is then its time in its lane, on its share of the cores.
    """
    from .threads import workers_or_default

    models = _model_list(models)
    scale = _common_scale(models, protocol)
    workers = workers_or_default(workers)
    scorer = scorer or Scorer(DEFAULT_METRICS, scale, protocol)
    data = dataset if isinstance(dataset, Dataset) else open_dataset(dataset, scale)
    if data.scale != scale:
        raise UserError(f"dataset {data.name} is x{data.scale} but the model is x{scale}")
    names = list(labels) if labels is not None else model_labels(models)
    results = [
        DatasetResult(data.name, str(data.path), scale, protocol, label, m.identity, data.lr_source)
        for m, label in zip(models, names)
    ]
    rows: list[list[ImageResult] | None] = [None] * len(data.pairs)  # per pair, one result per model
    lanes = eval_lanes(models, workers, len(data.pairs))
    stop = threading.Event()
    one_at_a_time = threading.Lock()  # on_image and the progress bar, called from the lanes

    with _progress_bar(progress, f"{data.name} x{scale}", len(data)) as advance:

        def evaluate_pair(index: int) -> None:
            """Pair ``index`` read, every model run on it and scored; its results into ``rows``."""
            from .engine import Cancelled

            name = data.pairs[index].name
            hr, lr = data.load(data.pairs[index])
            outputs: dict[int, np.ndarray] = {}
            row: list[ImageResult] = []
            for model_index, model in enumerate(models):
                if stop.is_set():  # Ctrl-C or another lane's error: neither scored nor passed to on_image
                    raise Cancelled("cancelled")
                started = time.perf_counter()
                try:
                    sr = _run_model(model, lr, hr.shape, stop)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # the model failed on this image: record it, go on
                    if strict or (isinstance(exc, Cancelled) and stop.is_set()):  # stopping: Ctrl-C, a lane's error
                        raise
                    row.append(ImageResult(name, None, None, time.perf_counter() - started, _describe_failure(exc)))
                    continue
                row.append(_scored(name, started, scorer.score(sr, hr)))
                if on_image is not None:  # every model's output is held for it, else one at a time
                    outputs[model_index] = sr
            if stop.is_set():
                raise Cancelled("cancelled")
            rows[index] = row
            with one_at_a_time:
                if on_image is not None:
                    on_image(name, hr, lr, outputs)
                advance()

        try:
            _evaluate_pairs(data, evaluate_pair, lanes, stop, held_outputs=len(models) if on_image else 1,
                               scoring_bytes_per_pixel=scorer.working_bytes_per_pixel())
        finally:
            if scorer.lpips is not None:  # the last HR features are not held after the run (GPU memory in training)
                scorer.lpips.forget()
    if None in rows:  # every image has its row, or an exception was raised above
        raise RuntimeError(f"{data.name}: {rows.count(None)} image(s) were not evaluated")
    for row in rows:
        for result, image in zip(results, row):
            result.images.append(image)
    return results


def _evaluate_pairs(data: Dataset, evaluate_pair: Callable[[int], None], lanes: int,
                       stop: threading.Event, held_outputs: int = 1, scoring_bytes_per_pixel: int = 0) -> None:
    """Every pair read and evaluated (``evaluate_pair(index)``): in the dataset's order with one lane;
    with several, largest first (results keep the dataset's order), each by the next free lane (:func:`srtool.threads.run_lanes`): one image per
    core, so the network's threads never wait for each other at the end of a layer, and one image's
    reading and scoring overlap another's network.

    A pair is read and evaluated alone, on all cores, when its images held at once (``held_outputs``,
    each the size of its HR as 8-bit RGB) reach :data:`srtool.engine.LARGE_OUTPUT_BYTES`, or when
    ``lanes`` pairs of its size, each with its scoring's working memory (``scoring_bytes_per_pixel``,
    :meth:`Scorer.working_bytes_per_pixel`), would not fit in half of the free memory (LPIPS-vgg on 2K
    images: ~4 GB each). Ctrl-C or a lane's error stops the others at their next tile (or next image,
    for work that has no tiles)."""
    if lanes == 1:
        for index in range(len(data.pairs)):
            evaluate_pair(index)
        return
    from .engine import LARGE_OUTPUT_BYTES, Cancelled
    from .memory import free_memory
    from .threads import LaneCores, run_lanes

    budget = free_memory() // 2  # for every lane's pair at once

    def alone(pixels: int) -> bool:
        held = pixels * 3 * held_outputs
        return held >= LARGE_OUTPUT_BYTES or (held + pixels * scoring_bytes_per_pixel) * lanes > budget

    pending = iter(_largest_first(data))
    lock = threading.Lock()

    def next_pair() -> tuple[int, int] | None:
        with lock:
            return None if stop.is_set() else next(pending, None)

    def lane(team: int, cores: LaneCores) -> None:
        while (taken := next_pair()) is not None:
            index, pixels = taken
            # decided from the header and taken before the image is read: a large pair's memory never
            # adds to another's (3 bytes a pixel: dataset images are read as 8-bit RGB or gray)
            with cores.image(alone(pixels), team):
                if stop.is_set():
                    return
                try:
                    evaluate_pair(index)
                except Cancelled:
                    if stop.is_set():
                        return
                    raise

    run_lanes(lane, lanes, "srtool-eval", stop)


def _largest_first(data: Dataset) -> list[tuple[int, int]]:
    """(pair index, HR pixels), largest first (from the headers), so that no lane is left with a large
    image while the others have finished; a header that cannot be read counts 0 (its load reports it)."""

    def pixels(index: int) -> int:
        try:
            width, height = header_size(data.pairs[index].hr_path)
        except Exception:  # noqa: BLE001 -- data.load names the file and the problem
            return 0
        return width * height

    return sorted(((index, pixels(index)) for index in range(len(data.pairs))), key=lambda item: -item[1])


def eval_lanes(models: Sequence[SRModel], workers: int, pending: int) -> int:
    """How many images :func:`evaluate_models` works on at once: one per core torch uses, at most
    ``workers``, when every model runs on the CPU (a GPU model: one image at a time; no model, for
    images scored as they are: one per core as well).

    On two cores, two lanes evaluated Set14 with the bundled model 1.15-1.20x as fast as one image on
    both cores, with the same values (benchmarks/README.md, "srtool eval in image lanes").
    """
    from .threads import torch_threads, usable_cores

    if any(getattr(m, "device", None) is None or m.device.type != "cpu" for m in models):
        return 1
    cores = torch_threads() if models else usable_cores()  # no model, no torch: NumPy scoring on the cores
    return max(1, min(workers, cores, pending))


def evaluate_dataset(
    model: SRModel, dataset: str | Path, protocol: str = "y", progress: bool = True, strict: bool = False,
    scorer: Scorer | None = None, workers: int | None = None,
) -> DatasetResult:
    """PSNR/SSIM (or ``scorer``'s metrics) of ``model`` on ``dataset`` (folder with HR/ or a prepared name).

    Check ``result.complete``: a model that failed on some images is recorded, not raised, unless
    ``strict`` is set.
    """
    return evaluate_models([model], dataset, protocol=protocol, progress=progress, strict=strict, scorer=scorer,
                           workers=workers)[0]


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with ``#2``, ``#3`` appended to repeats, never onto a name given as it is (``x``, ``x``,
    ``x#2`` -> ``x``, ``x#3``, ``x#2``: two ``x#2`` would share one table row or column)."""
    taken = set(names)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        candidate, n = name, seen[name]
        while n > 1 and (candidate := f"{name}#{n}") in taken:
            n += 1
        seen[name] = n
        taken.add(candidate)
        unique.append(candidate)
    return unique


def model_labels(models: Sequence[SRModel]) -> list[str]:
    """Unique row labels: the model names, with ``#2``, ``#3`` appended to repeats."""
    return unique_names([m.name for m in models])


# ------------------------------------------------------------------------------------- whole runs


def _unique_dataset_names(data: Sequence[Dataset]) -> None:
    """Two folders with the same name still get separate table columns (``name#2``)."""
    for dataset, name in zip(data, unique_names([d.name for d in data])):
        dataset.name = name


def evaluate(
    models: Sequence[SRModel],
    datasets: Sequence[str | Path],
    protocol: str = "y",
    progress: bool | ProgressFactory = True,
    on_image: Callable[[Dataset, str, np.ndarray, np.ndarray, dict[int, np.ndarray]], None] | None = None,
    opened: Sequence[Dataset] | None = None,
    scorer: Scorer | None = None,
    workers: int | None = None,
) -> EvalReport:
    """Evaluate every model on every dataset (datasets are all opened and checked before any work);
    ``workers``: images at once on the CPU (see :func:`evaluate_models`)."""
    from . import __version__

    models = _model_list(models)
    if isinstance(datasets, (str, Path)):  # one dataset, not its name's letters
        datasets = [datasets]
    datasets = list(datasets)
    if opened is None and not datasets:  # an empty report would read as "evaluated, nothing to say"
        raise UserError("no dataset given")
    scale = _common_scale(models, protocol)
    scorer = scorer or Scorer(DEFAULT_METRICS, scale, protocol)
    data = list(opened) if opened is not None else [open_dataset(d, scale) for d in datasets]
    _unique_dataset_names(data)
    labels = model_labels(models)
    results: list[DatasetResult] = []
    for dataset in data:
        callback = None
        if on_image is not None:
            callback = lambda name, hr, lr, outs, _d=dataset: on_image(_d, name, hr, lr, outs)  # noqa: E731
        results.extend(evaluate_models(models, dataset, protocol, progress, callback, labels, scorer=scorer,
                                       workers=workers))
    entries = [ModelEntry(label, m.name, m.identity, m.source, m.scale) for label, m in zip(labels, models)]
    return EvalReport(protocol, scale, entries, results, __version__, _now(), metrics=scorer.metrics,
                      metric_sources=scorer.describe())


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


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
    from .devices import resolve_device
    from .loading import bicubic_model, load_model
    from .model_files import check_model_options

    resolve_device(device)  # an unusable --device is refused even when only bicubic (no network) is evaluated
    check_model_options(tile, None, "model", None)  # and a bad --tile (bicubic alone used to take any)
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
    """One folder name: ``/`` and the like become ``_``; ``.``/``..`` too (``--label ..`` wrote one level up)."""
    safe = re.sub(r"[^A-Za-z0-9._#+-]", "_", text)
    return "_" * max(1, len(safe)) if safe in ("", ".", "..") else safe


def saved_image_path(root: Path, dataset: str, model_label: str, image: str) -> Path:
    """``--save-images`` layout: ``ROOT/<dataset>/<model>/<image>.png``."""
    return root / _safe_component(dataset) / _safe_component(model_label) / f"{image}.png"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _check_writable_file(option: str, path: Path) -> None:
    """An output file name must not be a folder, nor lie below an existing file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}: {parent} is a file, not a folder")
            break


def _input_files(datasets: Sequence[Dataset], models: Sequence[SRModel]) -> dict[Path, str]:
    """Every file the run reads (HR, LR, model weights), resolved, with how to name it."""
    inputs: dict[Path, str] = {}
    for d in datasets:
        for pair in d.pairs:
            for source in (pair.hr_path, pair.lr_path):
                if source is not None:
                    inputs[_resolved(source)] = f"the input image {source}"
    for m in models:
        if not m.is_bicubic and m.source and Path(m.source).is_file():
            inputs[_resolved(Path(m.source))] = f"the model file {m.source}"
    return inputs


def _check_outputs(
    outputs: EvalOutputs, datasets: Sequence[Dataset], labels: Sequence[str], models: Sequence[SRModel] = (),
) -> None:
    """Refuse, before any work, every output that cannot be written safely.

    Never (whatever ``--overwrite`` says): an output that is one of the run's inputs (an HR/LR image
    or a model file), two outputs on one file, a file name that is a folder or lies below a file,
    two ``--save-images`` outputs on one name (``a.png`` and ``a.jpg`` in one HR folder). Without
    ``overwrite``: an output that exists.
    """
    inputs = _input_files(datasets, models)
    claimed: dict[Path, str] = {}

    def claim(option: str, path: Path) -> None:
        key = _resolved(path)
        if key in inputs:
            raise UserError(f"{option} {path}: is {inputs[key]}; inputs are never overwritten, choose another name")
        if key in claimed:
            raise UserError(f"{option} {path}: the same file as {claimed[key]}; give each output its own file")
        claimed[key] = f"{option} {path}"
        if not outputs.overwrite and key.exists():
            raise UserError(f"{option} {path}: file exists (use --overwrite to replace it)")

    for option, path in (("--json", outputs.json), ("--csv", outputs.csv), ("--markdown", outputs.markdown),
                         ("--figure", outputs.figure)):
        if path is None:  # (the CLI writes `--json -` to standard output itself: "-" never gets here)
            continue
        _check_writable_file(option, Path(path))
        claim(option, Path(path))
    if outputs.save_images is None:
        return
    root = Path(outputs.save_images).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--save-images {root}: exists and is not a folder")
    _check_writable_file("--save-images", root / "x")
    folders = {_resolved(root): str(root)}  # the folders the images go into: no file output may be one of them
    for d in datasets:  # (one image per name: open_dataset refuses a.png beside a.jpg)
        for label in labels:
            folders.update({_resolved(f): str(f) for f in (root / _safe_component(d.name),
                                                         saved_image_path(root, d.name, label, "x").parent)})
            for pair in d.pairs:
                path = saved_image_path(root, d.name, label, pair.name)
                _check_writable_file("--save-images", path)  # ROOT/Set5 a file, baby.png a folder
                claim("--save-images", path)
    for key, option in claimed.items():
        if key in folders:
            raise UserError(f"{option}: --save-images makes {folders[key]} a folder of SR images; "
                            "give this output another name")


def find_image(datasets: Sequence[Dataset], wanted: str) -> tuple[Dataset, ImagePair]:
    """The image ``NAME`` (first dataset holding it) or ``DATASET/NAME``; a file name (``baby.png``) names its image."""
    key = _image_key(wanted)
    for dataset in datasets:
        for pair in dataset.pairs:
            if key in (pair.name, f"{dataset.name}/{pair.name}"):
                return dataset, pair
    names = [pair.name for d in datasets for pair in d.pairs]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} images)" if len(names) > 8 else "")
    raise UserError(f"--figure-image {wanted}: no such image in {', '.join(d.name for d in datasets)} (images: {shown})")


def _image_key(wanted: str) -> str:
    """``--figure-image`` as results name images: ``baby.png`` (the file) is ``baby``."""
    from .imageio import IMAGE_SUFFIXES

    return wanted[: -len(Path(wanted).suffix)] if Path(wanted).suffix.lower() in IMAGE_SUFFIXES else wanted


def _check_region(region: tuple[int, int, int, int], dataset: Dataset, pair: ImagePair, chosen: bool = True) -> None:
    x, y, w, h = region
    width, height = header_size(pair.hr_path)
    if pair.lr_path is None:  # generated LR: HR is mod-cropped first
        width, height = width - width % dataset.scale, height - height % dataset.scale
    if x + w > width or y + h > height:
        hint = "" if chosen else "; the figure's image is chosen after scoring, so name one with --figure-image"
        raise UserError(f"--figure-region {x},{y},{w},{h} is outside {dataset.name}/{pair.name} ({width}x{height}){hint}")


def _check_figure_options(outputs: EvalOutputs, datasets: Sequence[Dataset]) -> None:
    """Fail before the work, not after it: the figure's image exists and its region fits.

    Without ``--figure-image`` the image is chosen after scoring, so the region must fit every
    image the choice could fall on.
    """
    if outputs.figure is None:
        for option, value in (("--figure-image", outputs.figure_image), ("--figure-region", outputs.figure_region)):
            if value is not None:
                raise UserError(f"{option}: only used with --figure FILE.png (no figure was asked for)")
        return
    if outputs.figure_image:
        candidates = [find_image(datasets, outputs.figure_image)]
    else:
        candidates = [(d, pair) for d in datasets for pair in d.pairs]
    if outputs.figure_region is not None:
        for dataset, pair in candidates:
            _check_region(outputs.figure_region, dataset, pair, chosen=bool(outputs.figure_image))


def choose_figure_image(report: EvalReport, wanted: str | None) -> tuple[str, str]:
    """(dataset, image) for ``--figure``.

    Given ``NAME`` or ``DATASET/NAME``: that image (first dataset holding it). Otherwise, among
    images every model scored: with two or more models, the one with the largest spread of the first
    chosen metric (max - min over the models; PSNR by default); with one model, the one it scores
    worst. Ties: first in order.
    """
    from .scoring import METRICS

    metric = METRICS[next((m for m in report.metrics if m in METRICS), "psnr")]
    sign = 1.0 if metric.higher_is_better else -1.0  # so that "lowest" always means "worst"
    by_image: dict[tuple[str, str], list[float | None]] = {}
    for r in report.results:
        for image in r.images:
            value = getattr(image, metric.name, None)
            by_image.setdefault((r.name, image.name), []).append(None if value is None else sign * value)
    if wanted:
        key = _image_key(wanted)
        for dataset, image in by_image:
            if key in (image, f"{dataset}/{image}"):
                return dataset, image
        raise UserError(f"--figure-image {wanted}: no such image in {', '.join(report.dataset_names)}")
    scored = {key: values for key, values in by_image.items() if all(v is not None for v in values)}
    if not scored:
        raise UserError("--figure: no image was scored by every model")
    if len(report.models) > 1:
        return max(scored, key=lambda key: max(scored[key]) - min(scored[key]))
    return min(scored, key=lambda key: scored[key][0])


MIN_REGION = 8  # HR pixels: 2 LR pixels at x4, the least a crop comparison can show


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``x,y,w,h`` (HR pixels) from the command line."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--figure-region {text!r}: expected four integers x,y,w,h") from None
    if x < 0 or y < 0:
        raise UserError(f"--figure-region {text!r}: x, y must be >= 0")
    if w < MIN_REGION or h < MIN_REGION:
        raise UserError(
            f"--figure-region {text!r}: w and h must be at least {MIN_REGION} HR pixels (a smaller crop shows nothing to compare)"
        )
    return x, y, w, h


def _write_figure(report: EvalReport, models: Sequence[SRModel], datasets: Sequence[Dataset], outputs: EvalOutputs,
                  scorer: Scorer | None = None) -> tuple[str, str, tuple[int, int, int, int]] | None:
    from .atomic import OutputExists
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
    if report.metrics != DEFAULT_METRICS:
        from .scoring import direction_note

        title += f"; {direction_note(report.metrics)}"
    try:
        chosen = scorer if scorer is not None and scorer.metrics != DEFAULT_METRICS else None
        figure, layout = comparison_figure(hr, lr, list(models), labels, report.scale, report.protocol, region, title,
                                           scorer=chosen)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--figure: a model failed on {dataset_name}/{image_name} ({_describe_failure(exc)}); "
                        "choose another --figure-image") from None
    try:
        save_figure(figure, outputs.figure, replace=outputs.overwrite)
    except OutputExists:
        report.kept.append(f"--figure {outputs.figure}")
        return None
    except OSError as exc:
        report.unwritten.append(_cannot_write("--figure", outputs.figure, exc))
        return None
    return dataset_name, image_name, layout.region




def is_plain_image_folder(dataset: str | Path) -> bool:
    """An existing folder without HR/: a set of images (e.g. ``srtool upscale`` outputs) to score as they are."""
    path = Path(str(dataset)).expanduser()
    return path.is_dir() and not (path / "HR").is_dir()


def open_image_folder(folder: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Dataset:
    """The images of ``folder`` as a dataset scored as they are (no-reference metrics only)."""
    from .imageio import check_pixels, image_size

    path = Path(str(folder)).expanduser()
    images = _dataset_images(path)
    if not images:
        raise UserError(f"--data {folder}: no images in {path}")
    for image in images:  # the decompression-bomb guard before any work, not when the image is reached
        check_pixels(*image_size(image), str(image), max_pixels)
    label = _dataset_label(folder, path)
    if label == "HR" and path.resolve().parent.name:  # a benchmark's HR/ folder: say whose
        label = f"{path.resolve().parent.name}/HR"
    return Dataset(label, path, 1, [ImagePair(p.name, p, None) for p in images], AS_IS, max_pixels)


def check_niqe_sizes(datasets: Sequence[Dataset]) -> None:
    """Fail before any work when an image is too small for NIQE (two whole 96x96 blocks)."""
    from .perceptual import NIQE_BLOCK, niqe_min_size

    for dataset in datasets:
        for pair in dataset.pairs:
            width, height = header_size(pair.hr_path)
            if dataset.lr_source != AS_IS and pair.lr_path is None:
                width, height = width - width % dataset.scale, height - height % dataset.scale
            if (width // NIQE_BLOCK) * (height // NIQE_BLOCK) < 2:
                raise UserError(f"{pair.hr_path}: {width}x{height} is too small for NIQE (needs at least {niqe_min_size()})")


def score_images(datasets: Sequence[Dataset], scorer: Scorer, protocol: str = "y",
                 progress: bool | ProgressFactory = True, workers: int | None = None) -> EvalReport:
    """No-reference scores of every image of plain folders, as they are: one row, ``images``.

    ``workers``: images read and scored at once, in lanes as :func:`evaluate_models` runs them
    (default up to 4, one per core); the scores do not depend on it and keep the folder's order."""
    from . import __version__
    from .imageio import read_dataset_image
    from .threads import workers_or_default

    if scorer.needs_reference:
        raise UserError("images without HR can only be scored with no-reference metrics (--metric niqe)")
    entry = ModelEntry("images", "images", AS_IS, "the images as they are (no model)", 1)
    results = []
    for data in datasets:
        result = DatasetResult(data.name, str(data.path), 1, protocol, entry.label, AS_IS, AS_IS)
        scored: list[ImageResult | None] = [None] * len(data.pairs)
        lanes = eval_lanes([], workers_or_default(workers), len(data.pairs))
        one_at_a_time = threading.Lock()
        with _progress_bar(progress, data.name, len(data)) as advance:

            def score_one(index: int) -> None:
                pair = data.pairs[index]
                started = time.perf_counter()
                scored[index] = _scored(pair.name, started, scorer.score(read_dataset_image(pair.hr_path, data.max_pixels), None))
                with one_at_a_time:
                    advance()

            _evaluate_pairs(data, score_one, lanes, threading.Event(),
                               scoring_bytes_per_pixel=scorer.working_bytes_per_pixel())
        if None in scored:
            raise RuntimeError(f"{data.name}: {scored.count(None)} image(s) were not scored")
        result.images.extend(scored)
        results.append(result)
    return EvalReport(protocol, 1, [entry], results, __version__, _now(), metrics=scorer.metrics,
                      metric_sources=scorer.describe())


def _write_reports(report: EvalReport, outputs: EvalOutputs) -> None:
    """The report files asked for. Without ``--overwrite`` a file that appeared since the up-front check
    (another run?) is kept as it is and listed in ``report.kept``: the caller still shows the results."""
    from .atomic import OutputExists
    from .report import write_csv, write_json, write_markdown

    for option, path, write in (("--json", outputs.json, write_json), ("--csv", outputs.csv, write_csv),
                                ("--markdown", outputs.markdown, write_markdown)):
        if path is not None:
            try:
                write(report, path, replace=outputs.overwrite)
            except OutputExists:
                report.kept.append(f"{option} {path}")
            except OSError as exc:  # after the work: the results are still shown, this file named
                report.unwritten.append(_cannot_write(option, path, exc))


def _cannot_write(option: str, path: Path, exc: OSError) -> str:
    return f"{option} {path}: cannot write ({exc.strerror or exc})"


def _gathered(shard, report: EvalReport) -> EvalReport | None:
    """This rank's report with every rank's per-image results in input order (rank 0); None elsewhere."""
    parts = shard.gather([r.images for r in report.results])
    if parts is None:
        return None
    for k, result in enumerate(report.results):
        result.images = shard.interleave([part[k] for part in parts])
    return report


def _agree_on_images(shard, opened: list[Dataset]) -> None:
    """Every rank found the same images in the same order (the slices and the gathered table rely on it)."""
    shard.agree([(d.name, [pair.name for pair in d.pairs]) for d in opened], "found the datasets' images")


def _run_as_is(datasets, protocol, outputs, progress, scorer: Scorer, shard, workers: int | None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> EvalReport | None:
    """``srtool eval --metric niqe --data FOLDER`` (no --model) on folders without HR/: score the images themselves.

    Sharded like a model evaluation: each torchrun rank scores a slice, rank 0 gathers and writes."""
    if not all(is_plain_image_folder(d) for d in datasets):
        raise UserError("--data: give either benchmark datasets (with HR/) or plain folders of images, not both")
    for option, value in (("--figure", outputs.figure), ("--save-images", outputs.save_images)):
        if value is not None:
            raise UserError(f"{option}: not available when scoring images as they are (no model, no HR)")
    def prepare():
        opened = [open_image_folder(d, max_pixels) for d in datasets]
        _unique_dataset_names(opened)
        _check_outputs(outputs, [], [])
        check_niqe_sizes(opened)
        return opened

    opened = shard.run_everywhere(prepare)  # a refusal on any rank stops every rank, in one line
    if shard.enabled:
        _agree_on_images(shard, opened)
        mine = [replace(d, pairs=shard.take(d.pairs)) for d in opened]
        report = _gathered(shard, shard.run_everywhere(
            lambda: score_images(mine, scorer, protocol, progress if shard.is_main else False, workers)))
        if report is None:
            return None
    else:
        report = score_images(opened, scorer, protocol, progress, workers)
    _write_reports(report, outputs)
    return report


def _expand_home(outputs: EvalOutputs) -> EvalOutputs:
    """``~`` in every output path, once, so the files checked are the files written (bash leaves the ``~`` of
    ``--json=~/r.json`` alone)."""
    def expand(path: Path | None) -> Path | None:
        return None if path is None else Path(path).expanduser()

    return replace(outputs, json=expand(outputs.json), csv=expand(outputs.csv), markdown=expand(outputs.markdown),
                   save_images=expand(outputs.save_images), figure=expand(outputs.figure))


def refuse_empty(option: str, *values: object) -> None:
    """An empty value (an unset ``"$OUT"``) is refused: as a path it would be the working folder."""
    if any(value is not None and not str(value).strip() for value in values):
        raise UserError(f"{option}: empty value; give a name or leave the option out")


def run_eval(
    model_specs: Sequence[str | Path],
    datasets: Sequence[str | Path],
    protocol: str = "y",
    device: str = "auto",
    tile: int | None = None,
    scale: int | None = None,
    outputs: EvalOutputs | None = None,
    progress: bool | ProgressFactory = True,
    labels: Sequence[str] | None = None,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    lpips_net: str = "alex",
    lpips_weights: str | Path | None = None,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> EvalReport | None:
    """What ``srtool eval`` does: load models, check datasets and outputs, evaluate, write files.

    ``labels`` name the table rows, one per model spec in order (``--label``); default: the models' names.

    ``workers`` (``-j``): images evaluated at once when the models run on the CPU (default: up to 4,
    one per core; see :func:`evaluate_models`). ``max_pixels`` (``--max-pixels``): dataset images with more
    pixels are refused before any work (decompression-bomb guard; None: no limit).

    ``metrics``: names from :data:`srtool.scoring.METRICS` (``"psnr,ssim,lpips,niqe"``). LPIPS weights
    are loaded before anything else, so missing weights stop the run before any image is read. Folders
    without HR/ (with no-reference metrics only and no model) are scored as they are.

    Under torchrun each rank evaluates a slice of every dataset (:mod:`srtool.sharding`) and rank 0
    gathers the per-image results, writes the files and returns the full report; other ranks return None.
    """
    from .atomic import OutputExists
    from .imageio import write_png
    from .scoring import parse_metrics
    from .sharding import current_shard
    from .threads import workers_or_default

    shard = current_shard()

    outputs = _expand_home(outputs or EvalOutputs())
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if not datasets:
        raise UserError("no dataset given (use --data FOLDER_OR_NAME)")
    for option, values in (("--data", datasets), ("--model", model_specs), ("--label", labels or [])):
        refuse_empty(option, *values)
    workers_or_default(workers)  # checked before any model loads
    if outputs.figure is not None and Path(outputs.figure).suffix.lower() != ".png":
        raise UserError(f"--figure {outputs.figure}: the figure is a PNG; give a .png file name")
    if labels and len(labels) != len(model_specs or ["default"]):
        raise UserError(f"--label given {len(labels)} time(s) for {len(model_specs or ['default'])} model(s): "
                        "give one --label per --model, in the same order")
    if labels and len(set(labels)) != len(labels):
        raise UserError(f"--label: each row needs its own name (got {', '.join(labels)})")
    chosen = parse_metrics(metrics)
    lpips_device = "cuda" if str(device).startswith("cuda") else "cpu"
    scorer = Scorer(chosen, scale or 4, protocol, lpips_net, lpips_weights, lpips_device)
    if not scorer.needs_reference and not list(model_specs) and any(is_plain_image_folder(d) for d in datasets):
        if labels:
            raise UserError("--label names the rows of --model; images scored as they are (no --model) are one row")
        return _run_as_is(datasets, protocol, outputs, progress, scorer, shard, workers, max_pixels)
    def prepare():
        """Models loaded, datasets opened, outputs checked: under torchrun a refusal on any rank stops
        every rank, and rank 0 alone prints it (sharding.report_once)."""
        models = load_models(model_specs, shard.device(device), tile, scale)
        for model, label in zip(models, labels or []):
            model.name = label
        model_scale = models[0].scale
        scorer.scale = model_scale
        if scorer.lpips is not None and any(m.device.type == "cuda" for m in models):  # --device auto found a GPU
            scorer.lpips.to(next(m.device for m in models if m.device.type == "cuda"))
        opened = [open_dataset(d, model_scale, max_pixels) for d in datasets]
        _unique_dataset_names(opened)
        _check_outputs(outputs, opened, model_labels(models), models)
        if "niqe" in chosen:
            check_niqe_sizes(opened)
        _check_figure_options(outputs, opened)
        return models, opened

    models, opened = shard.run_everywhere(prepare)
    labels = model_labels(models)

    on_image = None
    if outputs.save_images is not None:
        root = Path(outputs.save_images)

        def on_image(dataset: Dataset, name: str, hr: np.ndarray, lr: np.ndarray, srs: dict[int, np.ndarray]) -> None:
            for index, sr in srs.items():
                path = saved_image_path(root, dataset.name, labels[index], name)
                try:
                    write_png(path, sr, replace=outputs.overwrite)
                except OutputExists:  # checked before any work: made since, by a second run into ROOT?
                    raise UserError(f"--save-images {path}: appeared after the run started (another run?); "
                                    "kept as it is (use --overwrite to replace it)") from None
                except OSError as exc:  # a full disk, a read-only folder: one line, not an internal error
                    raise UserError(_cannot_write("--save-images", path, exc)) from None

    if shard.enabled:  # the same images on every rank; also the barrier: every rank has checked the outputs
        _agree_on_images(shard, opened)
        mine = [replace(d, pairs=shard.take(d.pairs)) for d in opened]
        report = _gathered(shard, shard.run_everywhere(lambda: evaluate(
            models, datasets, protocol, progress if shard.is_main else False, on_image, opened=mine, scorer=scorer,
            workers=workers)))
        if report is None:
            return None
    else:
        report = evaluate(models, datasets, protocol, progress, on_image, opened=opened, scorer=scorer, workers=workers)
    _write_reports(report, outputs)
    if outputs.figure is not None:
        try:
            report.figure = _write_figure(report, models, opened, outputs, scorer)
        except UserError as exc:  # no image every model scored, a model failing on it: after the work, the
            report.unwritten.append(str(exc))  # table is still shown, with this line
    return report
