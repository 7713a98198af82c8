"""Batch upscaling: the library behind ``srtool upscale``.

:func:`plan_jobs` turns inputs (files, folders, globs, ``-`` for stdin) into jobs with their output
paths, deciding up front what is skipped (output exists, no ``--overwrite``) or refused (an output
that would overwrite an input, two inputs mapping to the same output). :func:`run_batch` then runs
them: worker threads decode the next images and encode/write finished ones while the main thread
runs the model, one image at a time. Each job carries its own output path from start to finish, so
outputs cannot be mixed up however the threads interleave. A file that fails (corrupt, unsupported,
over ``--max-pixels``) is reported and skipped; the rest of the batch goes on. Every write is atomic
(temp file + rename): an interrupted run (Ctrl-C) leaves complete outputs or none, never a partial one.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .imageio import (
    DEFAULT_MAX_PIXELS, OUTPUT_FORMATS, DecodedImage, encode_image, format_for_suffix, is_image_file, read_image,
)
from .engine import SRModel, upscale_array
from .resize import imresize
from .threads import lower_thread_priority

STDIO = "-"
FORMAT_CHOICES = (*OUTPUT_FORMATS, "keep")
WRITE_BUDGET = 1 << 30  # bytes of upscaled images waiting for their encoder threads


@dataclass
class UpscaleOptions:
    output: str | None = None  # folder, "-" for stdout, None = beside each input
    suffix: str | None = None  # None = "_x{scale}"
    format: str = "png"
    quality: int = 95
    recursive: bool = False
    overwrite: bool = False
    outscale: float | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int = 2
    alpha: str | None = None


@dataclass
class Job:
    """One input image and where its output goes (``None`` source = stdin, ``None`` output = stdout)."""

    label: str
    source: Path | None
    output: Path | None
    relative: Path = Path()
    status: str = "pending"  # pending, written, skipped, failed
    message: str = ""
    megapixels: float = 0.0


@dataclass
class BatchResult:
    jobs: list[Job] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(job.status == status for job in self.jobs)

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if job.status == "failed"]


# ------------------------------------------------------------------------------------------ planning


def _scale_label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def default_suffix(model: SRModel, outscale: float | None) -> str:
    return f"_x{_scale_label(outscale or model.scale)}"


def collect_inputs(inputs: list[str], recursive: bool) -> list[tuple[Path | None, Path]]:
    """(source, path relative to its input root) for every image; ``-`` gives (None, 'stdin')."""
    found: list[tuple[Path | None, Path]] = []
    for item in inputs:
        if item == STDIO:
            found.append((None, Path("stdin")))
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if is_image_file(p))
            if not files:
                hint = "" if recursive else " (add --recursive for subfolders)"
                raise UserError(f"{item}: folder has no images{hint}")
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if is_image_file(m)]
            if not files:
                raise UserError(f"{item}: the pattern matches no images")
            base = Path(_glob_base(item))
            found += [(m, m.relative_to(base) if m.is_relative_to(base) else Path(m.name)) for m in files]
        else:
            raise UserError(f"{item}: no such file or folder")
    return found


def _glob_base(pattern: str) -> str:
    """The longest leading directory of a glob pattern without wildcards."""
    parts = Path(pattern).parts
    base = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        base.append(part)
    return str(Path(*base)) if base else "."


def _output_format(options: UpscaleOptions, source: Path | None, decoded_format: str | None = None) -> str:
    if options.format != "keep":
        return options.format
    guess = format_for_suffix(source.suffix) if source is not None else decoded_format
    return guess or "png"


def _output_name(relative: Path, source: Path | None, suffix: str, fmt: str) -> str:
    ext = OUTPUT_FORMATS[fmt]
    if source is not None and format_for_suffix(source.suffix) == fmt:
        ext = source.suffix  # keep .jpeg / .TIF spellings when the format does not change
    return f"{relative.stem}{suffix}{ext}"


def plan_jobs(inputs: list[str], options: UpscaleOptions, model: SRModel) -> list[Job]:
    """Jobs with output paths; skips and refusals are decided here, before any work."""
    if options.format not in FORMAT_CHOICES:
        raise UserError(f"--format: unknown value {options.format!r}; use one of {', '.join(FORMAT_CHOICES)}")
    if not 1 <= options.quality <= 100:
        raise UserError(f"--quality: must be between 1 and 100 (got {options.quality})")
    if options.outscale is not None and not 0 < options.outscale <= 32:
        raise UserError(f"--outscale: must be in (0, 32] (got {options.outscale})")
    if not inputs:
        raise UserError("no inputs given")
    if inputs.count(STDIO) > 1:
        raise UserError("'-' (stdin) can be given only once")
    sources = collect_inputs(inputs, options.recursive)
    to_stdout = options.output == STDIO or (options.output is None and sources == [(None, Path("stdin"))])
    if to_stdout and len(sources) != 1:
        raise UserError(f"-o -: stdout takes exactly one image, but the inputs name {len(sources)}")
    out_dir = None if options.output in (None, STDIO) else Path(options.output).expanduser()
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"-o {options.output}: exists and is not a folder")
    suffix = options.suffix if options.suffix is not None else default_suffix(model, options.outscale)
    input_files = {src.resolve() for src, _ in sources if src is not None}
    jobs: list[Job] = []
    claimed: dict[Path, str] = {}
    for source, relative in sources:
        label = str(source) if source is not None else "<stdin>"
        if to_stdout:
            jobs.append(Job(label, source, None, relative))
            continue
        fmt = _output_format(options, source)
        name = _output_name(relative, source, suffix, fmt)
        if out_dir is not None:
            output = out_dir / relative.parent / name
        elif source is not None:
            output = source.parent / name
        else:
            output = Path(name)
        job = Job(label, source, output, relative)
        key = output.resolve()
        if key in input_files:
            job.status, job.message = "failed", f"output {output} would overwrite an input; use -o or --suffix"
        elif key in claimed:
            job.status, job.message = "failed", f"output {output} is also the output of {claimed[key]}"
        elif output.exists() and not options.overwrite:
            job.status, job.message = "skipped", f"{output} exists (use --overwrite)"
        claimed.setdefault(key, label)
        jobs.append(job)
    return jobs


# ------------------------------------------------------------------------------------------- running


def upscale_pixels(model: SRModel, array: np.ndarray, outscale: float | None = None, alpha: str | None = None) -> np.ndarray:
    """Model output, then MATLAB bicubic to ``outscale`` x the input size when it differs from the model's scale."""
    sr = upscale_array(model, array, alpha=alpha)
    if outscale is not None and outscale != model.scale:
        h, w = array.shape[:2]
        sr = imresize(sr, output_shape=(max(1, round(h * outscale)), max(1, round(w * outscale))))
    return sr


def _decode(job: Job, options: UpscaleOptions) -> DecodedImage:
    data = sys.stdin.buffer.read() if job.source is None else job.source
    if isinstance(data, bytes) and not data:
        raise UserError("<stdin>: no data on standard input")
    return read_image(data, options.max_pixels)


def _encode_and_write(job: Job, sr: np.ndarray, decoded: DecodedImage, options: UpscaleOptions) -> None:
    from .atomic import atomic_path

    fmt = _output_format(options, job.source, decoded.format)
    data = encode_image(sr, fmt, options.quality, decoded.icc_profile, decoded.exif)
    if job.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_path(job.output) as tmp:
        tmp.write_bytes(data)


def run_batch(
    model: SRModel, jobs: list[Job], options: UpscaleOptions, progress=None,
) -> BatchResult:
    """Run ``jobs`` (see the module docstring). ``progress(job, megapixels_done, seconds)`` is called per image."""
    result = BatchResult(jobs=jobs)
    todo = [job for job in jobs if job.status == "pending"]
    start = time.perf_counter()
    workers = max(1, options.workers)
    done_mp = 0.0
    # decode/encode threads yield the cores to the network's threads (srtool/threads.py)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srtool-io", initializer=lower_thread_priority)
    decodes: deque[tuple[Job, Future]] = deque()
    writes: deque[tuple[Job, Future, int]] = deque()
    pending = deque(todo)

    def prefetch() -> None:
        while pending and len(decodes) < workers + 1:
            job = pending.popleft()
            decodes.append((job, pool.submit(_decode, job, options)))

    def settle(limit: int) -> None:
        """Wait for finished writes: at most ``limit`` in flight, and their pixels within WRITE_BUDGET."""
        nonlocal done_mp
        while len(writes) > limit or (len(writes) > 1 and sum(b for _, _, b in writes) > WRITE_BUDGET):
            job, fut, _ = writes.popleft()
            try:
                fut.result()
                job.status = "written"
            except Exception as exc:  # noqa: BLE001 -- one bad file must not end the batch
                job.status, job.message = "failed", _describe(exc)
            if progress:
                progress(job, done_mp, time.perf_counter() - start)

    try:
        prefetch()
        while decodes:
            job, fut = decodes.popleft()
            prefetch()
            try:
                decoded = fut.result()
                job.megapixels = decoded.array.shape[0] * decoded.array.shape[1] / 1e6
                sr = upscale_pixels(model, decoded.array, options.outscale, options.alpha)
            except Exception as exc:  # noqa: BLE001 -- reported per file, the batch goes on
                job.status, job.message = "failed", _describe(exc)
                if progress:
                    progress(job, done_mp, time.perf_counter() - start)
                continue
            done_mp += job.megapixels
            writes.append((job, pool.submit(_encode_and_write, job, sr, decoded, options), sr.nbytes))
            del sr, decoded
            settle(workers)
        settle(0)
    finally:
        # On Ctrl-C: drop queued work; writes already running finish (atomically) before we return.
        pool.shutdown(wait=True, cancel_futures=True)
    result.seconds = time.perf_counter() - start
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}"


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def run_batch_sharded(model: SRModel, jobs: list[Job], options: UpscaleOptions, shard, progress=None) -> BatchResult | None:
    """:func:`run_batch` over this torchrun rank's slice of the pending jobs (see :mod:`srtool.sharding`).

    Every rank has planned the same jobs; the barrier keeps any rank from writing an output before all
    have planned (else a fast rank's output would turn into a "skipped" on a slow one). Rank 0 gets
    the whole batch back with every job's outcome; the other ranks get None.
    """
    if not shard.enabled:
        return run_batch(model, jobs, options, progress)
    if any(job.source is None or job.output is None for job in jobs):
        raise UserError("'-' (stdin/stdout) cannot be split over torchrun ranks; run it in one process")
    shard.barrier()
    pending = [job for job in jobs if job.status == "pending"]
    mine = shard.take(pending)
    result = run_batch(model, mine, options, progress if shard.is_main else None)
    parts = shard.gather(([(job.status, job.message, job.megapixels) for job in mine], result.seconds))
    if parts is None:
        return None
    outcomes = shard.interleave([outcome for outcome, _ in parts])
    for job, (status, message, megapixels) in zip(pending, outcomes, strict=True):
        job.status, job.message, job.megapixels = status, message, megapixels
    return BatchResult(jobs=jobs, seconds=max(seconds for _, seconds in parts))
