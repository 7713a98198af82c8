"""User-facing errors.

A :class:`UserError` is something the user can fix (a missing file, a bad value). The CLI prints its
message as one red line and exits with status 2; it never shows a traceback unless ``--debug`` is given.
Library callers get an ordinary exception they can catch.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; the message names the culprit (file, field or value)."""

    exit_code = 2


class ScaleMismatch(UserError):
    """A model asked to run at a scale it does not have (``--scale``); ``upscale`` adds how to reach that scale."""

    def __init__(self, message: str, scale: int, model_scale: int):
        super().__init__(message)
        self.scale, self.model_scale = scale, model_scale


class ImageWarning(UserWarning):
    """A recoverable problem with an input image (e.g. broken EXIF metadata): the pixels are still used."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a service manager, a batch scheduler's time limit), unwound like Ctrl-C: every file
    written so far is complete and no temporary is left; the exit status is 143 (the shell's 128 + 15).
    ``received`` stays True once one arrived (typer may turn the interrupt into a plain exit 130)."""

    received = False


def raise_terminated(_signum: int, _frame: object) -> None:
    """A SIGTERM handler (main thread only) that unwinds the way Ctrl-C does."""
    Terminated.received = True
    raise Terminated
