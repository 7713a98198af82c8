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
from .errors import NotLandedError, UserError

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
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


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


# --------------------------------------------------------------------------- not-yet-landed commands


def _not_landed(command: str, issue: str) -> None:
    raise NotLandedError(f"'srtool {command}' is not available yet: it lands with the {issue} issue")


@prepare_app.command("benchmark", context_settings=_PASS_THROUGH)
def prepare_benchmark(ctx: typer.Context) -> None:
    """Mod-crop HR images and write MATLAB-bicubic LR copies (HR/ and LR_bicubic/X{s}/)."""
    _not_landed("prepare benchmark", "prepare")


@prepare_app.command("div2k", context_settings=_PASS_THROUGH)
def prepare_div2k(ctx: typer.Context) -> None:
    """Download (resumable) or read DIV2K, then build its splits and training store."""
    _not_landed("prepare div2k", "prepare")


@prepare_app.command("folder", context_settings=_PASS_THROUGH)
def prepare_folder(ctx: typer.Context) -> None:
    """Build a training set (HR, LR and training store) from folders of HR images."""
    _not_landed("prepare folder", "prepare")


@app.command("train", context_settings=_PASS_THROUGH)
def train(ctx: typer.Context) -> None:
    """Train a generator (PSNR stage) or a GAN from a preset."""
    _not_landed("train", "train")


@app.command("eval", context_settings=_PASS_THROUGH)
def eval_(ctx: typer.Context) -> None:
    """Print PSNR/SSIM benchmark tables computed the way the literature computes them."""
    _not_landed("eval", "eval")


@app.command("upscale", context_settings=_PASS_THROUGH)
def upscale(ctx: typer.Context) -> None:
    """Batch-upscale images with a model."""
    _not_landed("upscale", "upscale")


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
