"""What the ``srtool prepare`` commands print: skip messages, a download bar, the summary table, the exit code."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..cli_common import print_error
from .pipeline import PrepareResult

EXIT_SKIPPED = 1  # finished, but some inputs were bad and skipped (0 with --skip-bad); user errors exit 2


def skip_printer(console: Console) -> Callable[[str], None]:
    def show(message: str) -> None:
        print_error(f"[yellow]skipped:[/yellow] {escape(message)}", console)  # a bad input: shown under -q too

    return show


@contextlib.contextmanager
def download_progress(console: Console) -> Iterator[Callable[[str, int, int | None], None]]:
    """A rich bar per downloaded file (bytes, speed, ETA); yields the ``on_download(name, done, total)`` callback.

    The bar is live only while bytes arrive (rich allows one live display at a time, and the prepare bar
    follows), and stops when a file is complete.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=console)
    tasks: dict[str, int] = {}
    live = {"on": False}

    def update(name: str, done: int, total: int | None) -> None:
        if not live["on"]:
            bar.start()
            live["on"] = True
        if name not in tasks:
            tasks[name] = bar.add_task(f"download {name}", total=total)
        bar.update(tasks[name], completed=done, total=total)
        if total is not None and done >= total:
            bar.stop()
            live["on"] = False

    try:
        yield update
    finally:
        if live["on"]:
            bar.stop()


def summary_table(results: dict[str, PrepareResult]):
    """The summary: a table narrow enough for 80 columns, then one ``output:`` line per dataset (paths are
    long; in a table cell they would wrap the whole row)."""
    from rich.console import Group
    from rich.text import Text

    table = Table(title="srtool prepare", pad_edge=False)
    for col in ("dataset", "images", "new", "reused", "skipped", "sub-images", "seconds", "img/s"):
        table.add_column(col, justify="left" if col == "dataset" else "right", no_wrap=col != "dataset")
    for label, r in results.items():
        subs = sum(len(rec.get("tiles", [])) for rec in r.records)
        rate = r.processed / r.seconds if r.seconds > 0 and r.processed else 0.0
        table.add_row(escape(label), str(len(r.records)), str(r.processed), str(r.reused), str(len(r.skipped)),
                      str(subs) if subs else "-", f"{r.seconds:.1f}", f"{rate:.2f}")
    outputs = [Text(f"output: {r.out}" if len(results) == 1 else f"{label} output: {r.out}", overflow="fold")
               for label, r in results.items()]
    return Group(table, *outputs)


def exit_code(results: dict[str, PrepareResult], skip_bad: bool, console: Console) -> int:
    """0 if nothing was skipped (or ``skip_bad``), else print why and return :data:`EXIT_SKIPPED`."""
    skipped = sum(len(r.skipped) for r in results.values())
    if skipped and not skip_bad:
        print_error(f"[bold red]error:[/bold red] {skipped} input file(s) skipped (listed above and in manifest.json); "
                    "pass --skip-bad to accept that", console)
        return EXIT_SKIPPED
    return 0
