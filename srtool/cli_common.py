"""What every ``srtool`` subcommand module shares: the consoles, ``-h``, ``-q`` and ``--set``.

A module of its own so that command groups living in their own files (``cli_models``, ``cli_sweep``)
use the same consoles and options as :mod:`srtool.cli` without importing it (no cycle).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()

HELP = {"help_option_names": ["-h", "--help"]}  # -h works on every command (subcommands inherit it)

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and results: no progress, notices or summaries.")]


def set_quiet(on: bool) -> None:
    """-q: informational stderr output off (errors are printed by :func:`srtool.cli.main` with quiet switched back off)."""
    err_console.quiet = on


def print_error(markup: str, console: Console = err_console) -> None:
    """One error line (a failed or skipped-bad file) on ``console``, shown even under -q: -q silences
    progress, notices and summaries, never the reason for a non-zero exit status."""
    quiet, console.quiet = console.quiet, False
    try:
        console.print(markup, highlight=False, soft_wrap=True)
    finally:
        console.quiet = quiet


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a preset field, e.g. --set train.lr=2e-4 (repeatable).", metavar="KEY=VALUE"),
]
