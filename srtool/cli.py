"""The ``srtool`` command: a thin Typer layer over the library.

Each subcommand parses options and calls library functions (which work from Python too). User
errors surface as :class:`~srtool.errors.UserError`: :func:`main` prints them as one red line per
problem and exits 2, never with a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import UserError

err_console = Console(stderr=True)
out_console = Console()

app = typer.Typer(
    name="srtool",
    help="4x single-image super-resolution: prepare data, train SRGAN/ESRGAN, evaluate, upscale.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
presets_app = typer.Typer(help="List and show the shipped training presets.", no_args_is_help=True)
prepare_app = typer.Typer(help="Build datasets: MATLAB-exact bicubic LR images and training stores.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")
app.add_typer(prepare_app, name="prepare")

_DEBUG = {"on": False}


def _version(value: bool) -> None:
    if value:
        out_console.print(f"srtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _DEBUG["on"] = debug


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a preset field, e.g. --set train.lr=2e-4 (repeatable).", metavar="KEY=VALUE"),
]


# ------------------------------------------------------------------------------------------ presets


@presets_app.command("list")
def presets_list() -> None:
    """List the shipped presets."""
    from .config import load_preset, preset_names

    table = Table(title="srtool presets")
    for col in ("name", "stage", "generator", "description"):
        table.add_column(col)
    for name in preset_names():
        p = load_preset(name)
        g = p.model.generator
        table.add_row(name, p.stage, f"{g.arch} x{g.scale}, {g.n_blocks} blocks", p.description)
    out_console.print(table)


@presets_app.command("show")
def presets_show(
    name: Annotated[str, typer.Argument(help="Shipped preset name or path to a .toml file.")],
    set_: SetOption = None,
) -> None:
    """Print the fully resolved preset (defaults filled in, overrides applied) as TOML."""
    from .config import dump_toml, load_preset

    preset = load_preset(name, set_ or [])
    sys.stdout.write(dump_toml(preset))


# ------------------------------------------------------------------------------------------ commands


_PrepScale = Annotated[int, typer.Option("--scale", help="Integer downscale factor (LR = HR / scale).")]
_PrepEdge = Annotated[str, typer.Option("--edge", help="Border handling: replicate (published benchmark LR) or mirror (newer MATLAB).")]
_PrepWorkers = Annotated[Optional[int], typer.Option("--workers", help="Worker processes (default: number of cores).")]
_PrepSkipBad = Annotated[bool, typer.Option("--skip-bad", help="Exit 0 even if some inputs were bad and skipped.")]
_PrepOverwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs not written by an identical earlier run.")]
_PrepLevel = Annotated[int, typer.Option("--png-compress-level", help="PNG zlib level 0-9 (1: 4x faster than 6, ~15% larger files).")]
_PrepTile = Annotated[int, typer.Option("--tile", help="Training-store sub-image size in HR pixels.")]
_PrepStep = Annotated[int, typer.Option("--step", help="Training-store sub-image step in HR pixels.")]
_PrepProgress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")]


def _prepare_finish(results: dict, skip_bad: bool) -> None:
    from .prepare.report import exit_code, summary_table

    out_console.print(summary_table(results))
    code = exit_code(results, skip_bad, err_console)
    if code:
        raise typer.Exit(code)


@prepare_app.command("benchmark")
def prepare_benchmark(
    hr_dir: Annotated[str, typer.Argument(help="Folder of HR test images (png/jpg/bmp/tif; gray or RGB).")],
    out: Annotated[str, typer.Option("--out", help="Output folder (gets HR/, LR_bicubic/X{s}/, manifest.json).")],
    scale: _PrepScale = 4, edge: _PrepEdge = "replicate", workers: _PrepWorkers = None, skip_bad: _PrepSkipBad = False,
    overwrite: _PrepOverwrite = False, png_compress_level: _PrepLevel = 1, progress: _PrepProgress = True,
) -> None:
    """Mod-crop HR images and write MATLAB-bicubic LR copies (HR/ and LR_bicubic/X{s}/)."""
    from pathlib import Path

    from .prepare import run_benchmark as run
    from .prepare.report import skip_printer

    result = run(Path(hr_dir), Path(out), scale, workers, edge=edge, compress_level=png_compress_level,
                 overwrite=overwrite, progress=progress, on_skip=skip_printer(err_console))
    label = Path(hr_dir).resolve()
    _prepare_finish({label.parent.name if label.name == "HR" else label.name: result}, skip_bad)


@prepare_app.command("div2k")
def prepare_div2k(
    source: Annotated[Optional[list[str]], typer.Option("--source", help="DIV2K_{train,valid}_HR.zip or a folder of the PNGs (repeatable); default: download.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Output root (gets DIV2K/train, DIV2K/valid, downloads/); default: the srtool data dir.")] = None,
    sha256: Annotated[Optional[list[str]], typer.Option("--sha256", help="Pin an archive's sha256: train=HEX or valid=HEX (repeatable).")] = None,
    mirror: Annotated[Optional[str], typer.Option("--mirror", help="Base URL to download the zips from instead of the official site.")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Only this split: train or valid (repeatable).")] = None,
    scale: _PrepScale = 4, edge: _PrepEdge = "replicate", workers: _PrepWorkers = None, skip_bad: _PrepSkipBad = False,
    overwrite: _PrepOverwrite = False, png_compress_level: _PrepLevel = 1, tile: _PrepTile = 480, step: _PrepStep = 240,
    progress: _PrepProgress = True,
) -> None:
    """Download (resumable, verified) or read DIV2K, then build its splits and training store."""
    from pathlib import Path

    from .prepare.div2k import DEFAULT_BASE_URL, parse_sha256_pins
    from .prepare.div2k import prepare_div2k as run
    from .prepare.report import download_progress, skip_printer

    with download_progress(err_console) as on_download:
        results = run(
            [Path(s) for s in source or []], Path(out) if out else None, scale, workers,
            sha256=parse_sha256_pins(sha256), base_url=mirror or DEFAULT_BASE_URL,
            splits=tuple(split or ("train", "valid")), edge=edge, tile=tile, step=step,
            compress_level=png_compress_level, overwrite=overwrite, progress=progress,
            on_skip=skip_printer(err_console), on_download=on_download if progress else None,
        )
    _prepare_finish({f"DIV2K {k}": v for k, v in results.items()}, skip_bad)


@prepare_app.command("folder")
def prepare_folder(
    sources: Annotated[list[str], typer.Argument(help="One or more folders of HR images, merged into one training set.")],
    out: Annotated[str, typer.Option("--out", help="Output folder (gets HR/, LR_bicubic/X{s}/, store/, manifest.json).")],
    scale: _PrepScale = 4, edge: _PrepEdge = "replicate", workers: _PrepWorkers = None, skip_bad: _PrepSkipBad = False,
    overwrite: _PrepOverwrite = False, png_compress_level: _PrepLevel = 1, tile: _PrepTile = 480, step: _PrepStep = 240,
    progress: _PrepProgress = True,
) -> None:
    """Build a training set (HR, LR and training store) from folders of HR images."""
    from pathlib import Path

    from .prepare import run_folder as run
    from .prepare.report import skip_printer

    result = run([Path(s) for s in sources], Path(out), scale, workers, edge=edge, tile=tile, step=step,
                 compress_level=png_compress_level, overwrite=overwrite, progress=progress,
                 on_skip=skip_printer(err_console))
    _prepare_finish({"+".join(Path(s).name for s in sources): result}, skip_bad)


@app.command("train")
def train(
    preset: Annotated[Optional[str], typer.Option("--preset", help="Shipped preset name or .toml file.")] = None,
    data: Annotated[
        Optional[list[str]],
        typer.Option("--data", help="Prepared training set (srtool prepare) or a folder of HR images (repeatable)."),
    ] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory (checkpoints, logs, exports).")] = None,
    set_: SetOption = None,
    init_from: Annotated[
        Optional[str], typer.Option("--init-from", help="Start the generator from a run directory, an srtool export or a third-party checkpoint.")
    ] = None,
    vgg_weights: Annotated[
        Optional[str], typer.Option("--vgg-weights", help="VGG19 state dict for the perceptual loss (default: torchvision ImageNet).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue the run in this directory exactly.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live display.")] = True,
) -> None:
    """Train a generator (PSNR stage) or a GAN from a preset; `torchrun -m srtool train ...` for DDP."""
    from pathlib import Path

    from .train import TrainOptions
    from .train import train as run_training

    result = run_training(TrainOptions(
        preset=preset, data=[Path(d) for d in data or []], out=Path(out) if out else None, overrides=list(set_ or []), init_from=init_from,
        vgg_weights=vgg_weights, device=device, resume=Path(resume) if resume else None, overwrite=overwrite, progress=progress,
    ))
    best = f"; best {result.best['metric']} {result.best['score']:.4f} at iteration {result.best['iteration']}" if result.best else ""
    if result.rank == 0:
        err_console.print(f"[green]{result.run_dir}[/green]: iteration {result.iteration}/{result.total}{best}", highlight=False)
    if result.interrupted:
        raise typer.Exit(130)


@app.command("eval")
def eval_(
    data: Annotated[list[str], typer.Option("--data", "-d", metavar="DIR|NAME", help="Dataset folder (HR/ [+ LR_bicubic/X{s}/]) or name: Set5, Set14, B100, Urban100, DIV2K-valid. Repeatable.")],
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", metavar="MODEL", help="'default', 'bicubic', an export .safetensors, a run directory or a checkpoint. Repeatable (default: the bundled default model).")] = None,
    protocol: Annotated[str, typer.Option("--protocol", metavar="y|rgb|y-float", help="y (published tables), rgb, or y-float (BasicSR).")] = "y",
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE", help="Write per-image results and means as JSON.")] = None,
    csv_out: Annotated[Optional[str], typer.Option("--csv", metavar="FILE", help="Write per-image results and means as CSV.")] = None,
    markdown_out: Annotated[Optional[str], typer.Option("--markdown", metavar="FILE", help="Write the table and per-image results as Markdown.")] = None,
    save_images: Annotated[Optional[str], typer.Option("--save-images", metavar="DIR", help="Write SR outputs as DIR/<dataset>/<model>/<image>.png.")] = None,
    figure: Annotated[Optional[str], typer.Option("--figure", metavar="FILE.png", help="Write a comparison figure (PNG): HR / bicubic / each model.")] = None,
    figure_image: Annotated[Optional[str], typer.Option("--figure-image", metavar="NAME", help="Image for --figure: NAME or DATASET/NAME (default: where the models' PSNRs differ most).")] = None,
    figure_region: Annotated[Optional[str], typer.Option("--figure-region", metavar="X,Y,W,H", help="Region for --figure in HR pixels (default: where the outputs differ most).")] = None,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where networks run (auto: CUDA when available).")] = "auto",
    tile: Annotated[Optional[int], typer.Option("--tile", metavar="N", help="Tile size (LR pixels) for bounded memory on large images.")] = None,
    scale: Annotated[Optional[int], typer.Option("--scale", min=2, metavar="S", help="Scale factor, checked against the models; sets bicubic's (default: the models' scale, 4 for bicubic alone).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
) -> None:
    """Print PSNR/SSIM benchmark tables computed the way the literature computes them."""
    from .evaluate import EvalOutputs, parse_region, run_eval
    from .report import print_report

    from pathlib import Path

    def as_path(value: Optional[str]) -> Optional[Path]:
        return Path(value) if value is not None else None

    outputs = EvalOutputs(
        json=as_path(json_out), csv=as_path(csv_out), markdown=as_path(markdown_out),
        save_images=as_path(save_images), figure=as_path(figure),
        figure_image=figure_image, figure_region=parse_region(figure_region) if figure_region else None,
        overwrite=overwrite,
    )
    report = run_eval(model or ["default"], data, protocol, device, tile, scale, outputs)
    if report is None:  # a torchrun rank other than 0: rank 0 prints the gathered table
        return
    print_report(report, out_console)
    for label, path in (("JSON", json_out), ("CSV", csv_out), ("Markdown", markdown_out)):
        if path is not None:
            err_console.print(f"{label}: {escape(str(path))}", highlight=False)
    if save_images is not None:
        err_console.print(f"SR images: {escape(str(save_images))}", highlight=False)
    if report.figure is not None:
        dataset, image, (x, y, w, h) = report.figure
        err_console.print(f"figure: {escape(str(figure))} ({dataset}/{image}, region {x},{y},{w},{h})", highlight=False)


@app.command("upscale")
def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, globs, or - for stdin.", metavar="INPUT...")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder (mirrors input folders), or - for stdout. Default: beside each input.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="default, bicubic, an srtool export, a run directory, or a third-party checkpoint.")] = "default",
    scale: Annotated[Optional[int], typer.Option(help="Expected model scale (an error if the model disagrees); the bicubic factor.")] = None,
    outscale: Annotated[Optional[float], typer.Option(help="Final scale, reached by MATLAB bicubic after the model.")] = None,
    tile: Annotated[Optional[int], typer.Option(help="Tile size in input pixels (default: sized by the network on the CPU, from free memory on GPUs).")] = None,
    tile_pad: Annotated[int, typer.Option(help="Context pixels around each tile; tiles cross-fade over this width.")] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")] = "auto",
    alpha: Annotated[str, typer.Option(help="Upscale alpha with the model or with MATLAB bicubic.")] = "model",
    suffix: Annotated[Optional[str], typer.Option(help="Appended to output names (default _x<scale>).")] = None,
    format_: Annotated[str, typer.Option("--format", help="png, jpg, webp, tiff, bmp, or keep (the input's format).")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality, 1-100.")] = 95,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders of folder inputs.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs (inputs are never replaced).")] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse inputs with more pixels (decompression-bomb guard).")] = 100_000_000,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", help="Threads that decode/encode images (default: up to 4).")] = None,
) -> None:
    """Batch-upscale images with a model (tiled; never runs out of memory; keeps depth, alpha, ICC, EXIF)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .loading import load_model
    from .sharding import current_shard
    from .upscale import UpscaleOptions, default_workers, plan_jobs, run_batch_sharded

    shard = current_shard()  # under torchrun: this rank's slice of the images, its own GPU
    sr_model = load_model(
        model, device=shard.device(device), precision=precision, tile=tile, tile_pad=tile_pad, scale=scale, alpha=alpha,
        notice=lambda msg: err_console.print(f"[yellow]notice:[/yellow] {escape(msg)}", highlight=False),
    )
    options = UpscaleOptions(
        output=output, suffix=suffix, format=format_, quality=quality, recursive=recursive, overwrite=overwrite,
        outscale=outscale, max_pixels=max_pixels, workers=workers or default_workers(), alpha=alpha,
    )
    jobs = plan_jobs(inputs, options, sr_model)
    todo = len(shard.take([job for job in jobs if job.status == "pending"]))
    columns = (
        TextColumn("[bold]upscale[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} MP/s"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False, disable=not shard.is_main) as bar:
        task = bar.add_task(f"{sr_model.name} x{sr_model.scale}", total=todo, rate="-")

        def on_image(job, megapixels, seconds):
            bar.update(task, advance=1, rate=f"{megapixels / seconds:.3f}" if seconds > 0 else "-")

        result = run_batch_sharded(sr_model, jobs, options, shard, progress=on_image)
    if result is None:  # a torchrun rank other than 0: rank 0 reports the whole batch
        return
    table = Table(title="srtool upscale", show_edge=False)
    for col in ("written", "skipped", "failed", "input MP", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.count("written")), str(result.count("skipped")), str(result.count("failed")),
        f"{sum(j.megapixels for j in jobs if j.status == 'written'):.2f}", f"{result.seconds:.1f}",
    )
    err_console.print(table)
    for job in jobs:
        if job.status == "skipped":
            err_console.print(f"[yellow]skipped:[/yellow] {escape(job.message)}", highlight=False)
    for job in result.failed:
        message = job.message if job.label in job.message else f"{job.label}: {job.message}"
        err_console.print(f"[red]failed:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- entry


def report_user_error(exc: UserError) -> None:
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err_console.print(f"[bold red]error:[/bold red] {escape(line)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning user errors into one red line and exit status 2."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, prog_name="srtool")
    except UserError as exc:
        if debug or _DEBUG["on"]:
            traceback.print_exc()
        report_user_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/bold red]")
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, full traceback with --debug
        if debug or _DEBUG["on"]:
            raise
        err_console.print(
            f"[bold red]internal error:[/bold red] {escape(type(exc).__name__)}: {escape(str(exc))} "
            "(run again with --debug for the traceback, and please report it)",
            highlight=False, soft_wrap=True,
        )
        sys.exit(1)
