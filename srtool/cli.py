"""The ``srtool`` command: a thin Typer layer over the library.

Each subcommand parses options and calls library functions (which work from Python too). User
errors surface as :class:`~srtool.errors.UserError`: :func:`main` prints them as one red line per
problem and exits 2, never with a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import __version__
from .cli_common import HELP, QuietOption, SetOption, err_console, out_console, print_error, set_quiet as _quiet
from .cli_models import models_app
from .cli_sweep import sweep_app
from .errors import ScaleMismatch, UserError


app = typer.Typer(
    name="srtool",
    help="4x single-image super-resolution: prepare data, train SRGAN/ESRGAN, evaluate, upscale.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=HELP,
)
presets_app = typer.Typer(help="List and show the shipped training presets.", no_args_is_help=True, context_settings=HELP)
prepare_app = typer.Typer(help="Build datasets: MATLAB-exact bicubic LR images and training stores.", no_args_is_help=True,
                          context_settings=HELP)
app.add_typer(presets_app, name="presets")
app.add_typer(prepare_app, name="prepare")
app.add_typer(models_app, name="models")
app.add_typer(sweep_app, name="sweep")

_DEBUG = {"on": False}

FOREIGN_OPTIONS = {  # Real-ESRGAN / common spellings -> srtool's
    "-n": "--model/-m", "--model_name": "--model/-m", "--model-name": "--model/-m", "--model_path": "--model/-m",
    "-t": "--tile", "--tile_pad": "--tile-pad", "--pre_pad": "--tile-pad", "-g": "--device cuda:N",
    "--gpu-id": "--device cuda:N", "--gpu_id": "--device cuda:N", "--alpha_upsampler": "--alpha",
    "--max_pixels": "--max-pixels", "--output_dir": "--output/-o",
    "--face_enhance": None, "--denoise_strength": None, "-dn": None,
}


def _version(value: bool) -> None:
    if value:
        out_console.print(f"srtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors (accepted anywhere on the command line).")] = False,
) -> None:
    _DEBUG["on"] = _DEBUG["on"] or debug


# ------------------------------------------------------------------------------------------ presets


@presets_app.command("list")
def presets_list(quiet: QuietOption = False) -> None:
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
    quiet: QuietOption = False,
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
    """The summary table (to stderr's console unless -q) and the exit status."""
    from .prepare.report import exit_code, summary_table

    if not err_console.quiet:
        out_console.print(summary_table(results))
    code = exit_code(results, skip_bad, err_console)
    if code:
        raise typer.Exit(code)


@prepare_app.command("benchmark")
def prepare_benchmark(
    hr_dir: Annotated[Optional[str], typer.Argument(metavar="HR_DIR", help="Folder of HR test images (png/jpg/bmp/tif; gray or RGB); or use --download.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", metavar="DIR", help="Output folder (gets HR/, LR_bicubic/X{s}/, manifest.json); with --download default: the srtool data dir/NAME.")] = None,
    download: Annotated[Optional[str], typer.Option("--download", metavar="NAME", help="Fetch a public HR test set first: Set5, Set14, B100 or Urban100 (Manga109 is not redistributable).")] = None,
    source: Annotated[Optional[str], typer.Option("--source", metavar="FILE", help="With --download: the set's archive (tar.gz or zip) you already have, instead of downloading it.")] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", metavar="HEX", help="With --download: pin the archive's sha256.")] = None,
    mirror: Annotated[Optional[str], typer.Option("--mirror", metavar="URL", help="With --download: base URL to fetch the archive from instead.")] = None,
    scale: _PrepScale = 4, edge: _PrepEdge = "replicate", workers: _PrepWorkers = None, skip_bad: _PrepSkipBad = False,
    overwrite: _PrepOverwrite = False, png_compress_level: _PrepLevel = 1, progress: _PrepProgress = True,
    quiet: QuietOption = False,
) -> None:
    """Mod-crop HR images and write MATLAB-bicubic LR copies (HR/ and LR_bicubic/X{s}/); --download fetches a set first."""
    _quiet(quiet)
    progress = progress and not quiet
    from pathlib import Path

    from .prepare import run_benchmark as run
    from .prepare.report import download_progress, skip_printer

    provenance = None
    if download is not None:
        from .prepare.benchmarks import benchmark_set, fetch_benchmark_set
        from .prepare.paths import data_dir

        if hr_dir is not None:
            raise UserError(f"give either an HR folder ({hr_dir}) or --download {download}, not both")
        entry = benchmark_set(download)
        out_path = Path(out) if out else data_dir() / entry.name
        with download_progress(err_console) as on_download:
            folder, provenance = fetch_benchmark_set(
                entry.name, out_path, source=Path(source) if source else None, sha256=sha256, mirror=mirror,
                on_progress=(lambda done, total: on_download(entry.filename, done, total)) if progress else None,
            )
        label = entry.name
    else:
        if hr_dir is None:
            raise UserError("give a folder of HR images, or --download NAME (Set5, Set14, B100, Urban100)")
        if out is None:
            raise UserError("--out: required with an HR folder")
        if source or sha256 or mirror:
            raise UserError("--source/--sha256/--mirror go with --download NAME")
        folder, out_path = Path(hr_dir), Path(out)
        resolved = folder.resolve()
        label = resolved.parent.name if resolved.name == "HR" else resolved.name
    result = run(folder, out_path, scale, workers, edge=edge, compress_level=png_compress_level,
                 overwrite=overwrite, progress=progress, on_skip=skip_printer(err_console), provenance=provenance)
    _prepare_finish({label: result}, skip_bad)


@prepare_app.command("div2k")
def prepare_div2k(
    source: Annotated[Optional[list[str]], typer.Option("--source", help="DIV2K_{train,valid}_HR.zip or a folder of the PNGs (repeatable); default: download.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Output root (gets DIV2K/train, DIV2K/valid, downloads/); default: the srtool data dir.")] = None,
    sha256: Annotated[Optional[list[str]], typer.Option("--sha256", help="Pin an archive's sha256: train=HEX or valid=HEX (repeatable).")] = None,
    mirror: Annotated[Optional[str], typer.Option("--mirror", help="Base URL to download the zips from instead of the official site.")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Only this split: train or valid (repeatable).")] = None,
    scale: _PrepScale = 4, edge: _PrepEdge = "replicate", workers: _PrepWorkers = None, skip_bad: _PrepSkipBad = False,
    overwrite: _PrepOverwrite = False, png_compress_level: _PrepLevel = 1, tile: _PrepTile = 480, step: _PrepStep = 240,
    progress: _PrepProgress = True, quiet: QuietOption = False,
) -> None:
    """Download (resumable, verified) or read DIV2K, then build its splits and training store."""
    _quiet(quiet)
    progress = progress and not quiet
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
    lr: Annotated[Optional[str], typer.Option("--lr", metavar="DIR", help="Folder of your own LR images (NAME.png or NAMEx{s}.png, exactly 1/scale of each HR) used instead of MATLAB bicubic.")] = None,
    scale: _PrepScale = 4, edge: _PrepEdge = "replicate", workers: _PrepWorkers = None, skip_bad: _PrepSkipBad = False,
    overwrite: _PrepOverwrite = False, png_compress_level: _PrepLevel = 1, tile: _PrepTile = 480, step: _PrepStep = 240,
    progress: _PrepProgress = True, quiet: QuietOption = False,
) -> None:
    """Build a training set (HR, LR and training store) from folders of HR images (or HR/LR pairs with --lr)."""
    _quiet(quiet)
    progress = progress and not quiet
    from pathlib import Path

    from .prepare import run_folder as run
    from .prepare.report import skip_printer

    result = run([Path(s) for s in sources], Path(out), scale, workers, edge=edge, tile=tile, step=step,
                 compress_level=png_compress_level, overwrite=overwrite, progress=progress,
                 on_skip=skip_printer(err_console), lr_dir=Path(lr) if lr else None)
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
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live display (plain lines when stderr is not a terminal).")] = True,
    restart: Annotated[bool, typer.Option("--restart", help="With --resume: train again from iteration 0; the old checkpoints, exports and log are kept under a dated name.")] = False,
    allow_random_vgg: Annotated[bool, typer.Option("--allow-random-vgg", help="Accept --vgg-weights random (a smoke test: the perceptual loss is then meaningless).")] = False,
    quiet: QuietOption = False,
) -> None:
    """Train a generator (PSNR stage) or a GAN from a preset; `torchrun -m srtool train ...` for DDP.

    --resume RUN continues a run exactly; --resume RUN --set train.epochs=N extends (or shortens) it."""
    _quiet(quiet)
    progress = progress and not quiet
    from pathlib import Path

    if preset and not resume:  # the trainer's first check, made before torch's import: a typo answers at once
        from .config import load_preset

        load_preset(preset, list(set_ or []))
    from .train import TrainOptions
    from .train import train as run_training

    result = run_training(TrainOptions(
        preset=preset, data=list(data or []), out=Path(out) if out else None, overrides=list(set_ or []), init_from=init_from,
        vgg_weights=vgg_weights, device=device, resume=Path(resume) if resume else None, overwrite=overwrite, progress=progress,
        restart=restart, allow_random_vgg=allow_random_vgg,
        quiet=quiet,
    ))
    best = f"; best {result.best['metric']} {result.best['score']:.4f} at iteration {result.best['iteration']}" if result.best else ""
    if result.rank == 0:
        err_console.print(f"[green]{result.run_dir}[/green]: iteration {result.iteration}/{result.total}{best}", highlight=False,
                          soft_wrap=True)  # one line in logs, however long the path
    if result.interrupted:
        raise typer.Exit(143 if result.interrupted == "SIGTERM" else 130)  # the shell's 128 + signal number


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
    tile: Annotated[Optional[int], typer.Option("--tile", metavar="N", help="Tile size (LR pixels) for bounded memory on large images; 0 = no tiling. Default: as for upscale.")] = None,
    scale: Annotated[Optional[int], typer.Option("--scale", min=2, metavar="S", help="Scale factor, checked against the models; sets bicubic's (default: the models' scale, 4 for bicubic alone).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", metavar="NAME", help="Row name of the matching --model (repeatable, in the same order).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
    quiet: QuietOption = False,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", metavar="LIST", help="Metrics, comma-separated or repeated: psnr, ssim, lpips, niqe (default psnr,ssim). LPIPS and NIQE: lower is better. --metric niqe alone also scores a folder of images without HR/ (no --model).")] = None,
    lpips_net: Annotated[str, typer.Option("--lpips-net", metavar="alex|vgg", help="LPIPS backbone.")] = "alex",
    lpips_weights: Annotated[Optional[str], typer.Option("--lpips-weights", metavar="FILE", help="torchvision ImageNet weights of the LPIPS backbone for offline machines (default: $SRTOOL_LPIPS_WEIGHTS, then the torch hub cache or a download).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", min=1, help="Images at once when the models run on the CPU (one per core; default: up to 4). PSNR/SSIM tested equal at any -j.")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse dataset images with more pixels (decompression-bomb guard).")] = 100_000_000,
) -> None:
    """Print benchmark tables (PSNR/SSIM, optionally LPIPS/NIQE) computed the way the literature computes them.

    --data takes a prepared dataset (HR/ [+ LR_bicubic/X{s}/]), a name, or a plain folder of HR images
    (LR made on the fly with MATLAB bicubic). --json - (or --csv -, --markdown -) writes that file to stdout
    (the table then goes to stderr)."""
    _quiet(quiet)
    from .evaluate import EvalOutputs, parse_region, refuse_empty, run_eval
    from .report import print_report

    from pathlib import Path

    def as_path(value: Optional[str]) -> Optional[Path]:
        return Path(value) if value is not None else None

    for option, value in (("--json", json_out), ("--csv", csv_out), ("--markdown", markdown_out),
                          ("--save-images", save_images), ("--figure", figure), ("--figure-image", figure_image),
                          ("--figure-region", figure_region), ("--lpips-weights", lpips_weights)):
        refuse_empty(option, value)  # an unset "$OUT": not the working folder, not "no figure"
    to_stdout = [f"{option} -" for option, value in (("--json", json_out), ("--csv", csv_out),
                                                     ("--markdown", markdown_out)) if value == "-"]
    if len(to_stdout) > 1:
        raise UserError(f"{' and '.join(to_stdout)}: only one of them can go to standard output")
    json_stdout, csv_stdout, markdown_stdout = json_out == "-", csv_out == "-", markdown_out == "-"

    def file_path(value: Optional[str]) -> Optional[Path]:  # "-" is standard output, written here
        return None if value == "-" else as_path(value)

    outputs = EvalOutputs(
        json=file_path(json_out), csv=file_path(csv_out), markdown=file_path(markdown_out),
        save_images=as_path(save_images), figure=as_path(figure),
        figure_image=figure_image, figure_region=parse_region(figure_region) if figure_region else None,
        overwrite=overwrite,
    )
    from .scoring import DEFAULT_METRICS

    report = run_eval(model or [], data, protocol, device, tile, scale, outputs,
                      progress=progress and not quiet, labels=label, metrics=metric or list(DEFAULT_METRICS),
                      lpips_net=lpips_net, lpips_weights=lpips_weights, workers=workers, max_pixels=max_pixels)
    if report is None:  # a torchrun rank other than 0: rank 0 prints the gathered table
        return
    if to_stdout:  # stdout carries that document only; the table goes to stderr
        import json

        from .report import to_csv, to_json_document, to_markdown

        if not quiet:
            print_report(report, err_console)
        if json_stdout:
            sys.stdout.write(json.dumps(to_json_document(report), indent=2, allow_nan=False) + "\n")
        else:
            sys.stdout.write(to_csv(report) if csv_stdout else to_markdown(report))
    else:
        print_report(report, out_console)
    for kind, option, path in (("JSON", "--json", None if json_stdout else json_out),
                               ("CSV", "--csv", None if csv_stdout else csv_out),
                               ("Markdown", "--markdown", None if markdown_stdout else markdown_out)):
        if path is not None and not any(line.startswith(f"{option} ") for line in report.kept + report.unwritten):
            err_console.print(f"{kind}: {escape(str(path))}", highlight=False)
    if save_images is not None:
        err_console.print(f"SR images: {escape(str(save_images))}", highlight=False)
    if report.figure is not None:
        dataset, image, (x, y, w, h) = report.figure
        err_console.print(f"figure: {escape(str(figure))} ({escape(dataset)}/{escape(image)}, region {x},{y},{w},{h})", highlight=False)
    for output in report.kept:
        print_error(f"[bold red]error:[/bold red] {escape(output)}: appeared while eval ran (another run?) and was kept "
                    "as it is; the results are in the table above (use --overwrite to replace it)")
    for line in report.unwritten:
        print_error(f"[bold red]error:[/bold red] {escape(line)}; the results are in the table above")
    failed = any(result.failed for result in report.results)  # a mean over fewer images than the set
    if report.kept or report.unwritten or failed:
        raise typer.Exit(1)


@app.command("upscale")
def upscale(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Image files, folders, globs, or - for stdin.", metavar="INPUT", show_default=False)] = None,
    input_opt: Annotated[Optional[list[str]], typer.Option("--input", "-i", metavar="INPUT", help="An input, as Real-ESRGAN's -i (repeatable; adds to the INPUT arguments).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder (mirrors input folders), or - for stdout. Default: beside each input.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="default, bicubic, an srtool export, a run directory, or a third-party checkpoint.")] = "default",
    scale: Annotated[Optional[int], typer.Option(help="Expected model scale (an error if the model disagrees); the bicubic factor.")] = None,
    outscale: Annotated[Optional[float], typer.Option("--outscale", "-s", metavar="X", help="Final scale, reached by MATLAB bicubic after the model.")] = None,
    tile: Annotated[Optional[int], typer.Option(min=0, help="Tile size in input pixels; 0 = no tiling (whole image at once). Default: sized by the network on the CPU, from free memory on GPUs.")] = None,
    tile_pad: Annotated[Optional[int], typer.Option(min=0, help="Context pixels around each tile; tiles cross-fade over this width (default: the architecture's receptive-field context, 10 for ESRGAN-type CNNs).")] = None,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps or xpu.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA where the architecture allows; fp32 on the CPU, bf16 for the bundled model on CPUs with AVX512-BF16/AMX), fp32, fp16 or bf16.")] = "auto",
    fp32: Annotated[bool, typer.Option("--fp32", help="Same as --precision fp32 (Real-ESRGAN's flag).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Same as --precision fp16.")] = False,
    alpha: Annotated[str, typer.Option(help="Upscale alpha with the model or with MATLAB bicubic.")] = "model",
    suffix: Annotated[Optional[str], typer.Option(help="Appended to output names: 'out' gives photo_out.png (an _ is added unless it starts with _, -, . or a space). Default _x<outscale> (_x4 with a x4 model).")] = None,
    format_: Annotated[str, typer.Option("--format", "--ext", help="png, jpg, webp, tiff, bmp, gif, or keep (the input's format). Animations and multi-page TIFFs keep every frame (png = APNG, webp, gif, tiff).")] = "png",
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality, 1-100 (100: lossless WebP).")] = 95,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders of folder inputs.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs (inputs are never replaced).")] = False,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse inputs with more pixels (decompression-bomb guard).")] = 100_000_000,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", min=1, help="Images at once on the CPU (one per core, each decoded/encoded by its own thread); decode/encode threads on a GPU (default: up to 4).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
    quiet: QuietOption = False,
) -> None:
    """Batch-upscale images with a model (tiled; never runs out of memory; keeps depth, alpha, ICC, EXIF)."""
    _quiet(quiet)
    inputs = [*(inputs or []), *(input_opt or [])]
    if not inputs:
        raise UserError("no inputs given: name image files, folders or globs (or -i INPUT, or - for stdin)")
    if fp32 and fp16:
        raise UserError("--fp32 and --fp16: give one")
    if fp32 or fp16:
        if precision not in ("auto", "fp32" if fp32 else "fp16"):
            raise UserError(f"--{'fp32' if fp32 else 'fp16'} contradicts --precision {precision}")
        precision = "fp32" if fp32 else "fp16"
    if suffix and not suffix.startswith(("_", "-", ".", " ")):
        suffix = "_" + suffix  # --suffix out -> photo_out.png, as Real-ESRGAN names them
    from .threads import default_workers
    from .upscale_jobs import BatchResult, UpscaleOptions, check_request, nothing_to_do, plan_jobs, plan_without_model

    options = UpscaleOptions(
        output=output, suffix=suffix, format=format_, quality=quality, recursive=recursive, overwrite=overwrite,
        outscale=outscale, max_pixels=max_pixels, workers=workers or default_workers(), alpha=alpha,
    )
    sources = check_request(inputs, options)  # a mistyped path or option fails before the model loads
    planned = plan_without_model(inputs, options, sources, model, scale=scale, device=device, precision=precision,
                                 tile=tile, tile_pad=tile_pad, alpha=alpha)
    if planned is not None and nothing_to_do(planned[1]):  # a re-run with every output in place: no torch, no model
        _report_batch(BatchResult(planned[1]))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .loading import load_model
    from .sharding import current_shard
    from .upscale import run_batch_sharded

    shard = current_shard()  # under torchrun: this rank's slice of the images, its own GPU

    def notice(msg: str) -> None:
        if shard.is_main:  # once, not once per rank
            err_console.print(f"[yellow]notice:[/yellow] {escape(msg)}", highlight=False)

    def prepare():
        try:
            sr_model = load_model(model, device=shard.device(device), precision=precision, tile=tile,
                                  tile_pad=tile_pad, scale=scale, alpha=alpha, notice=notice)
        except ScaleMismatch as exc:  # upscale, unlike eval, can still deliver that scale
            raise UserError(f"{exc} (for a x{exc.scale} result from it use --outscale {exc.scale}, "
                            f"or -s {exc.scale})") from exc
        if planned is not None and planned[0] == sr_model.scale:
            return sr_model, planned[1]
        return sr_model, plan_jobs(inputs, options, sr_model.scale, sources)

    sr_model, jobs = shard.run_everywhere(prepare)  # a model or plan refused on any rank stops every rank, in one line
    pending = [job for job in jobs if job.status == "pending"]
    todo = len(shard.take(pending))
    # under torchrun rank 0's bar counts its own share: say so (the ETA is the batch's, ranks run alike)
    share = f" (rank 0's {todo} of {len(pending)} images)" if shard.enabled else ""
    columns = (
        TextColumn("[bold]upscale[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} MP/s"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False, disable=not progress or quiet or not shard.is_main) as bar:
        task = bar.add_task(f"{sr_model.name} x{sr_model.scale}{share}", total=todo, rate="-")

        # The bar counts images; the images being upscaled add the fraction of their tiles done, so a
        # single large image moves it (and its ETA) and its rate. Set, not advanced: whole when no image
        # is in flight.
        finished, finished_mp, started = 0, 0.0, time.perf_counter()
        in_flight: dict[int, tuple[float, float]] = {}  # id(job) -> (its fraction on the bar, its input MP)
        lock = threading.Lock()  # image lanes report from their own threads

        def show() -> None:
            seconds = time.perf_counter() - started
            megapixels = finished_mp + sum(f * mp for f, mp in in_flight.values())
            bar.update(task, completed=finished + sum(f for f, _ in in_flight.values()),
                       rate=f"{megapixels / seconds:.3f}" if seconds > 0 and megapixels > 0 else "-")

        def on_tile(job, fraction):
            with lock:
                if fraction > in_flight.get(id(job), (0.0, 0.0))[0]:  # never backwards (an out-of-memory retry restarts)
                    in_flight[id(job)] = (fraction, job.megapixels)
                    show()

        def on_image(job, _megapixels, _seconds):
            nonlocal finished, finished_mp
            with lock:
                in_flight.pop(id(job), None)
                finished += 1
                finished_mp += job.megapixels if job.status == "written" else 0.0
                show()

        result = run_batch_sharded(sr_model, jobs, options, shard, progress=on_image, image_progress=on_tile)
    if result is None:  # a torchrun rank other than 0: rank 0 reports the whole batch
        return
    _report_batch(result)


def _report_batch(result) -> None:
    """The summary table, one line per skipped or failed input; exit 1 when an input failed."""
    table = Table(title="srtool upscale", show_edge=False)
    for col in ("written", "skipped", "failed", "input MP", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.count("written")), str(result.count("skipped")), str(result.count("failed")),
        f"{sum(j.megapixels for j in result.jobs if j.status == 'written'):.2f}", f"{result.seconds:.1f}",
    )
    err_console.print(table)
    for job in result.jobs:
        if job.status == "skipped":
            err_console.print(f"[yellow]skipped:[/yellow] {escape(job.message)}", highlight=False)
    for job in result.failed:
        message = job.message if job.label in job.message else f"{job.label}: {job.message}"
        print_error(f"[red]failed:[/red] {escape(message)}")
    if result.failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- entry


def _interrupted(exc: SystemExit) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (or SIGTERM's :class:`Terminated`) typer's exit 130 stands for, if any (it
    raises ``Exit(130) from`` the interrupt)."""
    cause = exc.__context__
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _interrupt_status(interrupt: BaseException) -> int:
    from .errors import Terminated

    return 143 if isinstance(interrupt, Terminated) else 130  # the shell's 128 + the signal's number


def _say_interrupted() -> None:
    from .ranks import is_secondary_on_node

    if is_secondary_on_node():  # torchrun passes Ctrl-C to every rank: each machine's first says it
        return
    err_console.quiet = False
    err_console.print("[bold red]interrupted[/bold red] (every file written so far is complete)", highlight=False)


def report_user_error(exc: UserError) -> None:
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err_console.print(f"[bold red]error:[/bold red] {escape(line)}", highlight=False, soft_wrap=True)


def _option_names(command) -> set[str]:
    names = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for sub in getattr(command, "commands", {}).values():
        names |= _option_names(sub)
    return names


def _foreign_option_hint(args: list[str], command) -> str | None:
    """A one-line hint for another tool's spelling of an option that no srtool command defines (checked
    before anything is imported)."""
    defined = _option_names(command)
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in FOREIGN_OPTIONS and name not in defined:
            ours = FOREIGN_OPTIONS[name]
            if ours is None:
                return f"{name}: srtool has no such option (a Real-ESRGAN feature srtool does not offer); see srtool -h"
            return f"{name}: srtool spells it {ours} (see srtool {args[0] if args else ''} -h)".replace("  ", " ")
    return None


def _command_with_user_metavars(typer_app: typer.Typer):
    """The app's command, its help showing FILE, DIR, N, X, TEXT instead of Python types (<list[str]>, <int>,
    <bool>) for every option that names no metavar itself, in every command (also ones added later)."""
    from typer.main import get_command

    dirs = {"out", "output", "save_images", "hr_dir", "resume", "cache_dir", "sources", "source", "data"}
    files = {"preset", "json_out", "csv_out", "markdown_out", "figure", "vgg_weights", "init_from"}
    root = get_command(typer_app)

    def visit(command) -> None:
        for sub in getattr(command, "commands", {}).values():
            visit(sub)

        def help_option(ctx, _original=command.get_help_option):
            option = _original(ctx)
            if option is not None and option.metavar is None:
                option.metavar = ""  # -h/--help is a flag, not a <bool>
            return option

        command.get_help_option = help_option
        for param in command.params:
            if param.param_type_name == "argument":
                param.display_type_rich = lambda ctx: None  # the metavar (INPUT, DIR) says it; no <list[str]>
                if param.required and hasattr(param, "_usage_display_name"):  # usage "DIR...", not "{DIR}..."
                    param._usage_display_name = lambda p=param: p.display_name_raw + ("..." if p.nargs != 1 else "")
            if param.metavar is not None or param.name is None:
                continue
            kind = (param.bare_type() if hasattr(param, "bare_type") else getattr(getattr(param, "type", None), "name", "")).lower()
            if getattr(param, "is_flag", False):
                param.metavar = ""  # a flag takes no value
            elif param.name in files:
                param.metavar = "FILE"
            elif param.name in dirs:
                param.metavar = "PATH" if param.name == "output" else "DIR"
            elif kind.endswith(("int", "integer", "int]", "integer]")):
                param.metavar = "N"
            elif "float" in kind:
                param.metavar = "X"
            else:
                param.metavar = param.name.strip("_").split("_")[-1].upper()

    visit(root)
    return root


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """srtool's own warnings (e.g. a broken EXIF orientation) as one yellow line, without source lines."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)


def _invoke(command, args: list[str]) -> None:
    """Run the command. A torchrun rank leaves a usage error (``--quality 200``: the same on every rank)
    to its machine's first rank to print, so the run shows it once, not once per rank."""
    from .errors import Terminated
    from .ranks import is_secondary_on_node

    if not is_secondary_on_node():
        command(args=args, prog_name="srtool")
        return
    try:
        code = command(args=args, prog_name="srtool", standalone_mode=False)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors
        from .sharding import report_once

        report_once(exc, lambda _: None)
        sys.exit(getattr(exc, "exit_code", 2))
    if code == 130 and Terminated.received:  # typer returned the interrupt as a plain 130
        code = 143
    sys.exit(code if isinstance(code, int) else 0)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning user errors into one red line and exit status 2.

    ``--debug`` is accepted anywhere on the command line (before a ``--``)."""
    import warnings

    from .errors import ImageWarning, Terminated, raise_terminated
    from .threads import fit_threads_to_cpu_quota

    Terminated.received = False

    warnings.showwarning = _show_warning
    warnings.simplefilter("always", ImageWarning)  # one line per image, not once per code location
    fit_threads_to_cpu_quota()  # before torch loads: a container's CPU quota, not the host's cores
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        # `kill`, a service manager or a scheduler's time limit: unwound like Ctrl-C (files in flight are
        # finished or removed, never left half-written); train and sweep install their own on top
        previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        _main(args_in=argv)
    finally:
        if previous_sigterm is not None:  # main() called in-process (tests, an embedding program)
            signal.signal(signal.SIGTERM, previous_sigterm)


def _main(args_in: list[str] | None) -> None:
    """:func:`main`'s body, run with srtool's SIGTERM handler in place."""
    args = list(sys.argv[1:] if args_in is None else args_in)
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    if debug:
        args = [a for a in args[:end] if a != "--debug"] + args[end:]
    _DEBUG["on"] = debug
    err_console.quiet = False
    command = _command_with_user_metavars(app)
    hint = _foreign_option_hint(args, command)
    if hint:
        from .sharding import report_once

        report_once(UserError(hint), report_user_error)
        sys.exit(2)
    try:
        _invoke(command, args)
    except UserError as exc:
        err_console.quiet = False
        if debug or _DEBUG["on"]:
            traceback.print_exc()
        from .sharding import report_once

        report_once(exc, report_user_error)  # under torchrun: one line, not one per rank
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _say_interrupted()
        sys.exit(_interrupt_status(exc))
    except SystemExit as exc:  # typer turns Ctrl-C inside a command into a silent exit 130
        interrupt = _interrupted(exc)
        if interrupt is not None:
            _say_interrupted()
            if exc.code == 130:
                sys.exit(_interrupt_status(interrupt))
        raise
    except Exception as exc:  # a bug: say so in one line, full traceback with --debug
        if debug or _DEBUG["on"]:
            raise
        err_console.quiet = False
        err_console.print(
            f"[bold red]internal error:[/bold red] {escape(type(exc).__name__)}: {escape(str(exc))} "
            "(run again with --debug for the traceback, and please report it)",
            highlight=False, soft_wrap=True,
        )
        sys.exit(1)
