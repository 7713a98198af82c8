"""Batch upscaling: the library behind ``srtool upscale``.

:func:`srtool.upscale_jobs.plan_jobs` decides, before any work, what each input becomes (its output
path) or why it is skipped or refused; :func:`run_batch` then runs the jobs. With a network on the CPU
and several images, each core takes its own image (an image lane: decode, network on its share of
torch's threads, encode) and a writer thread puts outputs on disk (:func:`image_lanes` says why); a
single image, or ``-j 1``, runs on all cores and is encoded right after its network call in parts
shared by the spare cores (:func:`io_between_images`); on a GPU (and for bicubic) worker threads decode
the next images and encode/write finished ones while the main thread runs the model. Each job carries
its own output path from start to finish, so outputs cannot be mixed up however the threads
interleave. A file that fails (corrupt, unsupported, over ``--max-pixels``) is reported and skipped;
the rest of the batch goes on. Every write is atomic (temp file + rename): an interrupted run (Ctrl-C)
leaves complete outputs or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .errors import UserError
from .imageio import (
    ANIMATION_FORMATS, DecodedImage, encode_frames, encode_image, format_for_suffix, image_size, read_image,
)
from .engine import LARGE_OUTPUT_BYTES, Cancelled, SRModel, upscale_array
from .memory import retain_freed_memory
from .resize import imresize
from .threads import (
    LaneCores, check_workers, lower_thread_priority, run_lanes, torch_threads, usable_cores,
)
from .upscale_jobs import SOFTWARE_MARKER, BatchResult, Job, UpscaleOptions, _output_format, read_stdin

WRITE_BUDGET = 1 << 30  # bytes of upscaled images waiting for their encoder threads


# ------------------------------------------------------------------------------------------- running


def upscale_pixels(model: SRModel, array: np.ndarray, outscale: float | None = None, alpha: str | None = None,
                   cancel: threading.Event | None = None, progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Model output, then MATLAB bicubic to ``outscale`` x the input size when it differs from the model's scale.

    ``cancel``: once set, the engine stops at its next tile (:class:`srtool.engine.Cancelled`);
    ``progress``: the engine's per-tile fraction done (:func:`srtool.engine.upscale_array`)."""
    sr = upscale_array(model, array, alpha=alpha, cancel=cancel, progress=progress)
    if outscale is not None and outscale != model.scale:
        h, w = array.shape[:2]
        sr = imresize(sr, output_shape=(max(1, round(h * outscale)), max(1, round(w * outscale))))
    return sr


def upscale_decoded(model: SRModel, decoded: DecodedImage, options: UpscaleOptions, fmt: str,
                    cancel: threading.Event | None = None,
                    progress: Callable[[float], None] | None = None) -> np.ndarray | list[np.ndarray]:
    """The upscaled image, or every upscaled frame of an animation / multi-page file (a list).

    Frames are never dropped: an output format that holds one image is refused before any work.
    ``progress``: the fraction of the whole file done (all frames), after every tile.
    """
    if not decoded.frames:
        return upscale_pixels(model, decoded.array, options.outscale, options.alpha, cancel, progress)
    if fmt not in ANIMATION_FORMATS:
        raise UserError(
            f"{len(decoded.frames)} frames, but {fmt} holds a single image: use --format "
            f"{', '.join(ANIMATION_FORMATS)} (or keep) to keep every frame"
        )
    count = len(decoded.frames)

    def frame_progress(index: int) -> Callable[[float], None] | None:
        return None if progress is None else (lambda fraction: progress((index + fraction) / count))

    return [upscale_pixels(model, frame, options.outscale, options.alpha, cancel, frame_progress(index))
            for index, frame in enumerate(decoded.frames)]


def _decode(job: Job, options: UpscaleOptions) -> DecodedImage:
    if job.source is not None:
        return read_image(job.source, options.max_pixels)
    data = job.data if job.data is not None else read_stdin(options.max_pixels)
    job.data = None
    return read_image(data, options.max_pixels)


def _job_format(job: Job, options: UpscaleOptions, decoded_format: str | None) -> str:
    """The format a job's output is written in: an explicit output file's extension (``-o big.jpg``),
    else ``--format`` (``keep``: the input's)."""
    fmt = format_for_suffix(job.output.suffix) if job.output is not None else None
    return fmt or _output_format(options, job.source, decoded_format)


def _encode(job: Job, sr: np.ndarray | list[np.ndarray], decoded: DecodedImage, options: UpscaleOptions,
            helpers: ThreadPoolExecutor | None = None, helper_count: int = 0) -> bytes:
    fmt = _job_format(job, options, decoded.format)
    lossless = webp_lossless(options, decoded)
    if isinstance(sr, list):
        return encode_frames(sr, fmt, options.quality, decoded.durations, decoded.loop, decoded.icc_profile,
                             decoded.exif, software=SOFTWARE_MARKER, lossless=lossless)
    return encode_image(sr, fmt, options.quality, decoded.icc_profile, decoded.exif, software=SOFTWARE_MARKER,
                        helpers=helpers, helper_count=helper_count, lossless=lossless)


def webp_lossless(options: UpscaleOptions, decoded: DecodedImage) -> bool:
    """Whether a WebP output is lossless: ``--quality 100``, or ``--format keep`` of a lossless WebP
    (keeping the format keeps its kind of compression; a lossy q95 copy would lose what it kept)."""
    return options.quality == 100 or (options.format == "keep" and decoded.lossless)


def _write(job: Job, data: bytes, overwrite: bool) -> None:
    """The encoded image to its output (atomically: temp file, fsync, rename), or to stdout.

    Without ``overwrite``, a file that appeared under the output's name after planning (a second run
    into the same folder) is kept, and this image fails."""
    from .atomic import OutputExists, write_bytes_atomic

    if job.output is None:
        _write_stdout(data)
        return
    try:
        write_bytes_atomic(job.output, data, replace=overwrite)
    except OutputExists:
        raise UserError(f"{job.output} appeared after the batch started (another run?); kept as it is "
                        "(use --overwrite to replace it)") from None


def _write_stdout(data: bytes) -> None:
    """All of ``data`` to standard output, or a :class:`UserError` saying how much the reader took.

    A pipe whose reader exits mid-image accepts part of a write and then refuses the rest; Python's
    buffered ``write`` can return that short count without an error, so the image used to be
    reported written (exit 0) after, say, 64 KiB of 2.8 MB reached the reader."""
    out, sent = sys.stdout.buffer, 0
    try:
        while sent < len(data):
            count = out.write(memoryview(data)[sent:])
            if not count:
                break
            sent += count
        out.flush()
    except BrokenPipeError:
        pass
    if sent < len(data):
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # no second complaint when Python flushes at exit
        raise UserError(f"-o -: standard output was closed after {sent:,} of {len(data):,} bytes "
                        "(the program reading it stopped); the image is incomplete there")


def _encode_and_write(job: Job, sr: np.ndarray | list[np.ndarray], decoded: DecodedImage, options: UpscaleOptions) -> None:
    _write(job, _encode(job, sr, decoded, options), options.overwrite)


def io_between_images(model: SRModel) -> bool:
    """Whether image I/O runs between the network's calls (a network on the CPU) or beside them.

    A network on the CPU keeps every core busy with torch's OpenMP threads, which wait for each other
    at the end of every layer: an encode thread that takes a core for a moment stalls the layer on all
    of them, so overlapping cost the network about twice the encode's CPU time (measured: 7-10 % of a
    batch for 3.4 % of CPU, benchmarks/README.md). Encoding in parts on every core between two network
    calls costs only its own time. On a GPU the CPU is free while the device computes, and the bicubic
    baseline is I/O-bound itself: there decoding and encoding overlap the upscaling.
    """
    return model.device.type == "cpu" and not model.is_bicubic


def image_lanes(model: SRModel, workers: int, pending: int) -> int:
    """How many images a network on the CPU works on at once: one per core torch uses, at most ``-j``.

    One image on every core makes the network's OpenMP threads wait for each other at the end of each
    layer, and leaves the cores to spin while its image is encoded. One image per core (a lane, with
    its own team of threads: one each when there are no more cores than lanes) needs no such wait, and a lane's decode and encode hold up only that
    lane: in one process on two cores, two lanes upscaled Set14 LR images (I/O included) at 1.08-1.40x
    the throughput of the bare two-thread loop, 512x512 inputs at 1.45x (benchmarks/README.md, round 5).
    On a GPU and for bicubic there is one lane (:func:`io_between_images`).
    """
    if not io_between_images(model):
        return 1
    return max(1, min(workers, torch_threads(), pending))


class _Tally:
    """The batch's clock, megapixels upscaled and the progress callbacks, shared by its threads."""

    def __init__(self, progress, image_progress=None) -> None:
        self.progress = progress
        self.image_progress = image_progress
        self.start = time.perf_counter()
        self.megapixels = 0.0
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def working(self, job: Job) -> Callable[[float], None] | None:
        """The engine's per-tile callback for ``job``: ``image_progress(job, fraction)``, if one was given."""
        if self.image_progress is None:
            return None
        return lambda fraction: self.image_progress(job, fraction)

    def upscaled(self, job: Job) -> None:
        with self._lock:
            self.megapixels += job.megapixels

    def finished(self, job: Job, error: Exception | None = None) -> None:
        """The job's outcome: written, or failed with ``error`` (one bad file never ends the batch)."""
        with self._lock:
            if error is None:
                job.status = "written"
            else:
                job.status, job.message = "failed", _describe(error)
            if self.progress:
                self.progress(job, self.megapixels, self.elapsed())

    def settle(self, job: Job, write: Future) -> None:
        try:
            write.result()
        except Exception as exc:  # noqa: BLE001 -- e.g. disk full: this file fails, the batch goes on
            self.finished(job, exc)
        else:
            self.finished(job)


def _decoded_megapixels(decoded: DecodedImage) -> float:
    return decoded.array.shape[0] * decoded.array.shape[1] * len(decoded.frames or [0]) / 1e6


def _least_output_bytes(job: Job, scale: float) -> int:
    """A lower bound of the job's output bytes from its file's header (one 8-bit channel, one frame);
    0 when there is no file or its header cannot be read (decoding then reports the problem)."""
    if job.source is None:
        return 0
    try:
        width, height = image_size(job.source)
    except Exception:  # noqa: BLE001 -- _decode names the file and the problem
        return 0
    return int(width * height * scale**2)


def _output_bytes(decoded: DecodedImage, scale: float) -> int:
    """Bytes of this image's output at ``scale`` (every frame of an animation)."""
    return int(decoded.array.size * decoded.array.itemsize * scale**2 * len(decoded.frames or [0]))


def run_batch(
    model: SRModel, jobs: list[Job], options: UpscaleOptions, progress=None, image_progress=None,
) -> BatchResult:
    """Run ``jobs`` (see the module docstring). ``progress(job, megapixels_done, seconds)`` is called per
    image (written or failed); ``image_progress(job, fraction)`` while an image is upscaled, after every
    tile, from the thread that runs it (a large image takes minutes on a CPU: this moves the bar and its ETA).
    The fraction may restart from 0 once (an out-of-memory retry with smaller tiles)."""
    workers = check_workers(options.workers)
    todo = [job for job in jobs if job.status == "pending"]
    tally = _Tally(progress, image_progress)
    lanes = image_lanes(model, workers, len(todo))
    if lanes > 1:
        _run_in_lanes(model, todo, options, lanes, tally)
    else:
        _run_in_order(model, todo, options, tally)
    return BatchResult(jobs=jobs, seconds=tally.elapsed())


def _run_in_lanes(model: SRModel, todo: list[Job], options: UpscaleOptions, lanes: int, tally: _Tally) -> None:
    """``lanes`` threads (:func:`srtool.threads.run_lanes`) each take the next image and decode, upscale
    (on their share of torch's threads) and encode it; one niced thread writes the files.

    An image whose output reaches :data:`LARGE_OUTPUT_BYTES` runs alone, on all of torch's threads, and
    is encoded in PNG parts shared with ``lanes - 1`` helper threads: peak memory stays that of one
    large image. Ctrl-C (or a lane's unexpected error) stops every lane before its next tile (the
    engine's ``cancel`` event); no new file is started, the ones being written finish atomically.
    """
    retain_freed_memory()  # one malloc arena for the lanes too (a no-op after load_model on the CPU)
    queue = deque(todo)
    queue_lock = threading.Lock()
    stop = threading.Event()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="srtool-write", initializer=lower_thread_priority)
    helpers = ThreadPoolExecutor(max_workers=lanes - 1, thread_name_prefix="srtool-io")

    def next_job() -> Job | None:
        with queue_lock:
            return queue.popleft() if queue and not stop.is_set() else None

    factor = max(model.scale, options.outscale or 0)

    def lane(team: int, cores: LaneCores) -> None:
        previous: tuple[Job, Future] | None = None
        try:
            while (job := next_job()) is not None:
                try:
                    with contextlib.ExitStack() as held:
                        # surely large from its header: the cores (and memory) are taken before it is decoded,
                        # so the other lanes do not each hold a decoded input while it waits for them
                        alone = _least_output_bytes(job, factor) >= LARGE_OUTPUT_BYTES
                        if alone:
                            held.enter_context(cores.image(True, team))
                        decoded = _decode(job, options)
                        job.megapixels = _decoded_megapixels(decoded)
                        fmt = _job_format(job, options, decoded.format)
                        if not alone:
                            alone = _output_bytes(decoded, factor) >= LARGE_OUTPUT_BYTES
                            held.enter_context(cores.image(alone, team))
                        if stop.is_set():
                            return
                        sr = upscale_decoded(model, decoded, options, fmt, cancel=stop, progress=tally.working(job))
                        tally.upscaled(job)
                        data = _encode(job, sr, decoded, options, helpers if alone else None, lanes - 1 if alone else 0)
                    del sr, decoded
                except Cancelled:
                    return
                except Exception as exc:  # noqa: BLE001 -- reported per file, the batch goes on
                    sr = decoded = None  # noqa: F841 -- its memory is not held while the next image decodes
                    tally.finished(job, exc)
                    continue
                if previous is not None:
                    tally.settle(*previous)  # at most one file per lane waits for the writer
                previous = (job, writer.submit(_write, job, data, options.overwrite))
        except BaseException:
            stop.set()  # the other lanes stop now, not after this lane's last write has settled
            raise
        finally:
            if previous is not None:
                tally.settle(*previous)

    try:
        run_lanes(lane, lanes, "srtool-lane", stop)
    finally:
        writer.shutdown(wait=True, cancel_futures=True)
        helpers.shutdown(wait=True, cancel_futures=True)


def _run_in_order(model: SRModel, todo: list[Job], options: UpscaleOptions, tally: _Tally) -> None:
    """One image at a time on all of torch's threads: a single image on the CPU (its I/O between the
    network's calls, encoded in parts by every core), or a GPU / bicubic batch (I/O beside the calls)."""
    workers = max(1, options.workers)
    between = io_between_images(model)
    # encode helpers besides the main thread when I/O runs between network calls: one per spare core
    helper_count = max(0, min(workers, usable_cores()) - 1) if between else 0
    # Threads that run beside the network yield the cores to its threads (srtool/threads.py). Between
    # network calls the decode/encode helpers never overlap the network (the next decode is waited for
    # before it starts, encode parts before the encode returns), so they keep normal priority there: a
    # niced helper would lose its core to the network's idle OpenMP thread, which spins ~10 ms after
    # every call. Files are then written (fsync, rename) by a niced thread of their own, which waits on
    # the disk, not on a core, and holds up no encode.
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srtool-io",
                              initializer=None if between else lower_thread_priority)
    writer = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="srtool-write", initializer=lower_thread_priority)
              if between else pool)
    decodes: deque[tuple[Job, Future]] = deque()
    writes: deque[tuple[Job, Future, int]] = deque()
    pending = deque(todo)
    ahead = 1 if between else workers + 1  # decodes in flight

    def prefetch() -> None:
        while pending and len(decodes) < ahead:
            job = pending.popleft()
            decodes.append((job, pool.submit(_decode, job, options)))

    def settle(limit: int) -> None:
        """Wait for finished writes: at most ``limit`` in flight, and their bytes within WRITE_BUDGET."""
        while len(writes) > limit or (len(writes) > 1 and sum(b for _, _, b in writes) > WRITE_BUDGET):
            job, fut, _ = writes.popleft()
            tally.settle(job, fut)

    try:
        prefetch()
        while decodes:
            job, fut = decodes.popleft()
            if not between:
                prefetch()
            try:
                decoded = fut.result()
                job.megapixels = _decoded_megapixels(decoded)
                sr = upscale_decoded(model, decoded, options, _job_format(job, options, decoded.format),
                                     progress=tally.working(job))
            except Exception as exc:  # noqa: BLE001 -- reported per file, the batch goes on
                prefetch()
                tally.finished(job, exc)
                continue
            tally.upscaled(job)
            if between:
                prefetch()  # the next image decodes beside this one's encoding
                try:
                    data = _encode(job, sr, decoded, options, pool, helper_count)
                except Exception as exc:  # noqa: BLE001
                    tally.finished(job, exc)
                    continue
                finally:
                    del sr, decoded
                writes.append((job, writer.submit(_write, job, data, options.overwrite), len(data)))
                settle(4)  # files waiting for the writer: compressed bytes, a few at most
            else:
                nbytes = sum(f.nbytes for f in sr) if isinstance(sr, list) else sr.nbytes
                writes.append((job, pool.submit(_encode_and_write, job, sr, decoded, options), nbytes))
                del sr, decoded
                settle(max(2, workers))  # never wait on the previous encode right after the network
        settle(0)
    finally:
        # On Ctrl-C: drop queued work; writes already running finish (atomically) before we return.
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}"


def run_batch_sharded(model: SRModel, jobs: list[Job], options: UpscaleOptions, shard, progress=None,
                      image_progress=None) -> BatchResult | None:
    """:func:`run_batch` over this torchrun rank's slice of the pending jobs (see :mod:`srtool.sharding`).

    Every rank must have planned the same jobs (checked: a rank that saw other files stops every rank);
    the check is also the barrier that keeps any rank from writing an output before all have planned
    (else a fast rank's output would turn into a "skipped" on a slow one). Rank 0 gets the whole batch
    back with every job's outcome; the other ranks get None.
    """
    if not shard.enabled:
        return run_batch(model, jobs, options, progress, image_progress)
    if any(job.source is None or job.output is None for job in jobs):
        raise UserError("'-' (stdin/stdout) cannot be split over torchrun ranks; run it in one process")
    shard.agree([(job.label, str(job.output), job.status) for job in jobs], "planned the batch (inputs, outputs, skips)")
    pending = [job for job in jobs if job.status == "pending"]
    mine = shard.take(pending)
    result = shard.run_everywhere(lambda: run_batch(model, mine, options, progress if shard.is_main else None,
                                                    image_progress if shard.is_main else None))
    parts = shard.gather(([(job.status, job.message, job.megapixels) for job in mine], result.seconds))
    if parts is None:
        return None
    outcomes = shard.interleave([outcome for outcome, _ in parts])
    for job, (status, message, megapixels) in zip(pending, outcomes, strict=True):
        job.status, job.message, job.megapixels = status, message, megapixels
    return BatchResult(jobs=jobs, seconds=max(seconds for _, seconds in parts))
