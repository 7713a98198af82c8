"""Batch upscaling's jobs: the inputs found, where each output goes, and what is decided before any work.

:func:`check_request` checks options and inputs; :func:`plan_jobs` turns inputs (files, folders, globs,
``-`` for stdin) into jobs with their output paths, deciding up front what is skipped (output exists, no
``--overwrite``; srtool's own earlier outputs found among the inputs) or refused (an output that would
overwrite an input, two inputs mapping to the same output, an output path outside ``-o`` or its input's
folder). Planning needs only the model's scale, never torch: so a re-run that finds every output in
place (:func:`plan_without_model`, :func:`nothing_to_do`) answers before torch is imported or the model
loaded.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import name_too_long
from .errors import UserError
from .filekinds import special_file_kind
from .ranks import launch
from .threads import check_workers, default_workers
from .imageio import (
    DEFAULT_MAX_PIXELS, OUTPUT_FORMATS, format_for_pil, format_for_suffix, is_image_file, read_software,
)

STDIO = "-"
FORMAT_CHOICES = (*OUTPUT_FORMATS, "keep")
SOFTWARE_MARKER = "srtool upscale"  # in PNG/TIFF/JPEG/GIF/WebP metadata (not BMP); how a re-run knows its own outputs


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
    workers: int = field(default_factory=default_workers)  # -j: images at once (default as on the command line)
    alpha: str | None = None


@dataclass
class Job:
    """One input image and where its output goes (``None`` source = stdin, ``None`` output = stdout)."""

    label: str
    source: Path | None
    output: Path | None
    relative: Path = Path()
    data: bytes | None = None  # stdin's bytes when planning had to read them (--format keep)
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


def default_suffix(scale: int, outscale: float | None) -> str:
    """``_x4``: the output name's suffix for a model of ``scale`` (or ``--outscale``)."""
    return f"_x{_scale_label(outscale or scale)}"


def _not_an_input(item: str, path: Path) -> str:
    """Why ``item`` (neither a folder, a file nor a pattern) is no input: missing, or a pipe (bash's
    ``<(curl ...)``), socket or device, which has no name for an output and is read through ``-``."""
    try:
        kind = special_file_kind(path.stat().st_mode)
    except OSError:
        return f"{item}: no such file or folder"
    if kind is None:  # pragma: no cover - a file or folder that appeared meanwhile
        return f"{item}: not a file or folder"
    return (f"{item}: is {kind}, not an image file; to upscale what a pipe gives, pipe it into `-`: "
            "`... | srtool upscale - -o OUT.png`")


def collect_inputs(inputs: list[str], recursive: bool) -> list[tuple[Path | None, Path]]:
    """(source, path relative to its input root) for every image; ``-`` gives (None, 'stdin').

    Each real file is listed once, however many names reach it (a folder symlinked into itself, a
    file given twice): the first and shortest path wins.
    """
    found: list[tuple[Path | None, Path]] = []
    for item in inputs:
        if item == STDIO:
            found.append((None, Path("stdin")))
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = _shortest_first(p for p in path.glob(pattern) if is_image_file(p))
            if not files:
                hint = "" if recursive else " (add --recursive for subfolders)"
                raise UserError(f"{item}: folder has no images{hint}")
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            files = _shortest_first(m for m in map(Path, glob.iglob(item, recursive=True)) if is_image_file(m))
            if not files:
                raise UserError(f"{item}: the pattern matches no images")
            base = Path(_glob_base(item))
            found += [(m, m.relative_to(base) if m.is_relative_to(base) else Path(m.name)) for m in files]
        else:
            raise UserError(_not_an_input(item, path))
    seen: set[Path] = set()
    unique = []
    for source, relative in found:
        key = source.resolve() if source is not None else None
        if key is None or key not in seen:
            unique.append((source, relative))
            if key is not None:
                seen.add(key)
    return unique


def _shortest_first(paths) -> list[Path]:
    """Sorted by depth, then name, so the plain path of a file comes before its symlink-loop aliases."""
    return sorted(paths, key=lambda p: (len(p.parts), str(p)))


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


def check_suffix(suffix: str, beside_inputs: bool) -> None:
    """A suffix is part of a file name: no path separators, and never empty when writing beside the inputs."""
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if any(sep in suffix for sep in separators) or "\0" in suffix:
        raise UserError(f"--suffix {suffix!r}: must not contain a path separator (it is part of the output file name)")
    if beside_inputs and not suffix:
        raise UserError("--suffix '': with outputs beside the inputs an empty suffix would target each input's own "
                        "name; give a suffix or an output folder with -o")


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` stays inside ``folder`` once '..' and symlinks are resolved."""
    return path.resolve().is_relative_to(folder.resolve())


def is_marked(path: Path) -> bool:
    """Whether the file carries srtool's marker (:data:`SOFTWARE_MARKER`, see :func:`read_software`)."""
    return (read_software(path) or "").startswith(SOFTWARE_MARKER)


def marks_outputs(path: Path) -> bool:
    """Whether srtool's outputs in this file's format carry the marker (all but BMP, which holds no metadata)."""
    return format_for_suffix(path.suffix) != "bmp"


def is_own_output(path: Path, suffix: str) -> bool:
    """An image ``srtool upscale`` wrote: the output suffix on its name and srtool's marker inside."""
    return bool(suffix) and path.stem.endswith(suffix) and is_marked(path)


def _stdin_limit(max_pixels: int | None) -> int | None:
    """Most bytes an image within ``max_pixels`` can take (16-bit RGBA, uncompressed) plus headers."""
    return None if not max_pixels else max_pixels * 8 + (1 << 20)


def read_stdin(max_pixels: int | None, stream=None) -> bytes:
    """Standard input, refused once it exceeds what ``max_pixels`` worth of image can take."""
    stream = stream if stream is not None else sys.stdin.buffer
    limit = _stdin_limit(max_pixels)
    chunks, total = [], 0
    while chunk := stream.read(1 << 20 if limit is None else min(1 << 20, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total > limit:
            raise UserError(
                f"<stdin>: more than {limit:,} bytes, more than an image of --max-pixels {max_pixels:,} can take; "
                "raise --max-pixels for larger images"
            )
    if not total:
        raise UserError("<stdin>: no data on standard input")
    return b"".join(chunks)


def _sniff_format(data: bytes) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return format_for_pil(img.format)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _output_file(options: UpscaleOptions) -> Path | None:
    """``-o`` naming an image file (an image extension, not an existing folder), else None."""
    if options.output in (None, STDIO):
        return None
    path = Path(options.output).expanduser()
    if path.is_dir() or format_for_suffix(path.suffix) is None:
        return None
    return path


def check_request(inputs: list[str], options: UpscaleOptions) -> list[tuple[Path | None, Path]]:
    """The checks that need no model (options, inputs that exist, output shape): run before the model
    loads, so a mistyped path costs no model load. Returns the input images found."""
    if options.format not in FORMAT_CHOICES:
        raise UserError(f"--format: unknown value {options.format!r}; use one of {', '.join(FORMAT_CHOICES)}")
    if not 1 <= options.quality <= 100:
        raise UserError(f"--quality: must be between 1 and 100 (got {options.quality})")
    if options.outscale is not None and not 0 < options.outscale <= 32:
        raise UserError(f"--outscale: must be in (0, 32] (got {options.outscale})")
    check_workers(options.workers)
    if not inputs:
        raise UserError("no inputs given")
    if inputs.count(STDIO) > 1:
        raise UserError("'-' (stdin) can be given only once")
    if launch().world_size > 1 and (STDIO in inputs or options.output == STDIO):
        raise UserError(f"{'-o -' if options.output == STDIO else '-'}: standard input and output cannot be "
                        "split over torchrun ranks; run it in one process (without torchrun)")
    if STDIO in inputs and sys.stdin is not None and sys.stdin.isatty():
        # read by a decode thread (an image lane), where Ctrl-C cannot end the wait for the terminal
        raise UserError("-: standard input is a terminal; redirect an image into it (< photo.png) or pipe one")
    out_file = _output_file(options)
    if out_file is not None and options.format not in ("png", "keep", format_for_suffix(out_file.suffix)):
        raise UserError(f"-o {options.output}: the extension does not match --format {options.format}")
    sources = collect_inputs(inputs, options.recursive)
    if out_file is not None and len(sources) != 1:
        raise UserError(
            f"-o {options.output}: names one output file, but the inputs name {len(sources)} images; "
            "give an output folder (without an image extension)"
        )
    if _writes_stdout(options, sources):
        if len(sources) != 1:
            raise UserError(f"-o -: stdout takes exactly one image, but the inputs name {len(sources)}")
        if sys.stdout is not None and sys.stdout.isatty():
            raise UserError("-o -: standard output is a terminal; redirect it (> out.png) or pipe it to a program")
    return sources


def _writes_stdout(options: UpscaleOptions, sources: list[tuple[Path | None, Path]]) -> bool:
    return options.output == STDIO or (options.output is None and sources == [(None, Path("stdin"))])


def plan_jobs(inputs: list[str], options: UpscaleOptions, scale: int,
              sources: list[tuple[Path | None, Path]] | None = None) -> list[Job]:
    """Jobs with output paths; skips and refusals are decided here, before any work.

    srtool's own outputs found among the inputs (an earlier run's ``photo_x4.png`` beside
    ``photo.png``) are skipped, never upscaled again: those that are the planned output of another
    input, and those carrying srtool's marker under the output suffix. So running the same command
    twice does nothing the second time. ``sources``: what :func:`check_request` already returned for
    these inputs (the folders are not walked twice).
    """
    if sources is None:
        sources = check_request(inputs, options)
    suffix = options.suffix if options.suffix is not None else default_suffix(scale, options.outscale)
    check_suffix(suffix, beside_inputs=options.output is None and inputs != [STDIO])
    out_file = _output_file(options)
    to_stdout = _writes_stdout(options, sources)
    out_dir = None if options.output in (None, STDIO) or out_file is not None else Path(options.output).expanduser()
    if out_dir is not None:
        _check_output_folder(out_dir, options.output)
    jobs: list[Job] = []
    for source, relative in sources:
        label = str(source) if source is not None else "<stdin>"
        job = Job(label, source, None, relative)
        if source is None and not to_stdout and options.format == "keep" and out_file is None:
            job.data = read_stdin(options.max_pixels)  # the name's extension follows the format found
        if not to_stdout:
            job.output = _plan_output(job, options, suffix, out_dir, out_file)
        jobs.append(job)
    planned = {job.output.resolve(): job.label for job in jobs if job.output is not None}
    kept: set[Path] = set()  # the user's own files at another input's output name: never replaced
    for job in jobs:
        origin = planned.get(job.source.resolve()) if job.source is not None else None
        if origin is not None and origin != job.label:
            job.status = "skipped"
            if marks_outputs(job.source) and not is_marked(job.source):
                kept.add(job.source.resolve())
                job.message = (f"{job.source} has the name of {origin}'s output but no srtool marker: taken to be "
                               "your file, not upscaled (rename it to upscale it)")
            else:
                job.message = f"{job.source} is srtool's output for {origin}, not an input"
        elif job.source is not None and is_own_output(job.source, suffix):
            job.status = "skipped"
            job.message = (f"{job.source} is an earlier srtool output (name and marker), not an input; "
                           "to upscale it again, give another --suffix")
    _refuse_shared_outputs([job for job in jobs if job.output is not None and job.status == "pending"], options, suffix)
    input_files = {job.source.resolve() for job in jobs if job.source is not None and job.status == "pending"}
    for job in jobs:
        if job.output is None or job.status != "pending":
            continue
        key = job.output.resolve()
        if key in input_files:
            job.status, job.message = "failed", f"output {job.output} would overwrite an input; use -o or --suffix"
        elif (too_long := name_too_long(job.output)) is not None:
            job.status, job.message = "failed", f"output {job.output}: {too_long}; use a shorter --suffix or -o FILE"
        elif key in kept:
            job.status = "failed" if options.overwrite else "skipped"
            job.message = (f"{job.label}: its output name {job.output} is taken by your file (an input without "
                           "srtool's marker), which is never replaced, even with --overwrite; rename it, or write "
                           "elsewhere with -o or --suffix")
        elif os.path.lexists(job.output) and not options.overwrite:  # a dangling link is the user's too
            job.status, job.message = "skipped", f"{job.output} exists (use --overwrite)"
    return jobs


def _refuse_shared_outputs(jobs: list[Job], options: UpscaleOptions, suffix: str) -> None:
    """Several inputs mapping to one output (``a.png`` and ``a.jpg`` -> ``a_x4.png``) are refused
    together, before any work: writing one of them would make the output's origin depend on the
    order of the inputs, and the others would fail on every run."""
    by_output: dict[Path, list[Job]] = {}
    for job in jobs:
        by_output.setdefault(job.output.resolve(), []).append(job)
    shared = [group for group in by_output.values() if len(group) > 1]
    if not shared:
        return
    listed = "; ".join(f"{group[0].output} from {', '.join(job.label for job in group)}" for group in shared[:3])
    more = f" (and {len(shared) - 3} more)" if len(shared) > 3 else ""
    keep = dataclasses.replace(options, format="keep")
    separable = options.format != "keep" and all(
        len({_output_name(job.relative, job.source, suffix, _output_format(keep, job.source))
             for job in group}) == len(group) for group in shared)
    hint = "use --format keep (each keeps its own extension) or rename them" if separable else \
        "rename them, or upscale them in separate runs (another -o or --suffix)"
    raise UserError(f"several inputs would write the same output: {listed}{more}; {hint}")


def _check_output_folder(out_dir: Path, option: str) -> None:
    """``-o`` must be a folder or a path that can become one: not a file, nor below one (which every
    image would otherwise fail on, one by one, with "Not a directory")."""
    for folder in (out_dir, *out_dir.parents):
        if folder.is_dir():
            return
        if os.path.lexists(folder):
            what = "exists and is not a folder" if folder == out_dir else f"{folder} is a file, not a folder"
            raise UserError(f"-o {option}: {what}")


def _plan_output(job: Job, options: UpscaleOptions, suffix: str, out_dir: Path | None, out_file: Path | None) -> Path:
    """Where ``job`` writes; refused (before any work) unless it stays in -o or beside its input."""
    if out_file is not None:
        return out_file
    decoded = _sniff_format(job.data) if job.data is not None else None
    fmt = _output_format(options, job.source, decoded)
    name = _output_name(job.relative, job.source, suffix, fmt)
    if out_dir is not None:
        output = out_dir / job.relative.parent / name
        if ".." in job.relative.parts or not _inside(output, out_dir):
            raise UserError(f"{job.label}: its output {output} would be outside -o {out_dir}; "
                            "use a pattern without '..' after its first wildcard")
    elif job.source is not None:
        output = job.source.parent / name
    else:
        output = Path(name)
    return output


def plan_without_model(inputs: list[str], options: UpscaleOptions, sources: list[tuple[Path | None, Path]], model: str,
                       *, scale: int | None = None, device: str = "auto", precision: str = "auto",
                       tile: int | None = None, tile_pad: int | None = None,
                       alpha: str = "model") -> tuple[int, list[Job]] | None:
    """(the model's scale, the jobs) planned before torch is imported or the model loaded, where that
    is possible: :func:`plan_jobs` needs only the scale, which ``default``, ``bicubic``, srtool exports
    and named models give without loading (:func:`srtool.model_files.scale_without_loading`).

    So running the same command twice costs the second time a fraction of a second (every job
    skipped: :func:`nothing_to_do`) rather than the seconds that importing torch and loading the model
    take. None when only loading can answer (a third-party checkpoint's scale, a device or precision
    torch must check, torchrun, stdin or stdout, ``--overwrite``): the caller then loads the model and
    plans as usual. The model file itself is not validated here (only its header's scale is read): a
    damaged export is reported by the first run that has work for it."""
    from .model_files import check_model_options, scale_without_loading

    if options.overwrite or STDIO in inputs or options.output == STDIO:
        return None
    if launch().world_size > 1:  # under torchrun every rank joins the group
        return None
    if str(device) not in ("auto", "cpu") or precision not in ("auto", "fp32"):
        return None
    check_model_options(tile, tile_pad, alpha, scale)  # the refusals loading would give, in the same words
    model_scale = scale_without_loading(model, scale)
    if model_scale is None:
        return None
    return model_scale, plan_jobs(inputs, options, model_scale, sources)


def nothing_to_do(jobs: list[Job]) -> bool:
    """Every job skipped: outputs in place (no ``--overwrite``) or earlier srtool outputs among the inputs."""
    return bool(jobs) and all(job.status == "skipped" for job in jobs)
