"""Run the srtool CLI in-process and return its exit status (shared by the CLI-level tests)."""

from __future__ import annotations

from srtool.cli import main


def run_cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def run_cli_err(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in-process; (exit status, stderr) with pytest's ``capsys``."""
    code = run_cli(*args)
    return code, capsys.readouterr().err
