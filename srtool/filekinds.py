"""What a path that is neither a regular file nor a folder is, in words for a one-line refusal.

FIFOs, sockets and devices block or never end when read as a file, so srtool refuses them by name
(``--model``, ``upscale`` inputs) instead of calling them missing or hanging on them.
"""

from __future__ import annotations

import stat


def special_file_kind(mode: int) -> str | None:
    """"a FIFO (named pipe)", "a socket", ... for ``st_mode``; None for a regular file or a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"
