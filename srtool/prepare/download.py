"""Resumable, verified HTTP downloads (standard library ``urllib`` only).

:func:`download` writes to ``<dest>.part`` and resumes it with a ``Range: bytes=N-`` request, both after
a dropped connection within one call (a few retries with back-off) and across runs (a ``.part`` left
by a killed run). A server that ignores Range (200 instead of 206) makes it start over, safely, and so
does a ``.part`` the server says is not a prefix of the file (416, once).
The finished file must have the server's announced length (``Content-Length`` / ``Content-Range``
total) and, when given, the pinned sha256; only then is it renamed to ``dest``. A file that fails
a check is moved aside to ``<dest>.bad`` (never used, never silently deleted) and a
:class:`~srtool.errors.UserError` says what failed.
"""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path

from .. import __version__
from ..atomic import sha256_file
from ..errors import UserError

CHUNK = 1 << 20


class DownloadError(UserError):
    """A download that failed (network, size or checksum); the message names the URL or file."""


def check_mirror(base_url: str) -> str:
    """``--mirror`` must be an http(s) URL (a local copy is given with ``--source``)."""
    parsed = urllib.parse.urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--mirror {base_url!r}: not an http(s) URL; for files you already have, use --source")
    return base_url


def move_aside(path: Path) -> Path:
    """Rename a bad file to ``<name>.bad`` (``.bad1``, ``.bad2``... if taken) and return the new path."""
    target = path.with_name(path.name + ".bad")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bad{n}")
    os.replace(path, target)
    return target


def _total_from_headers(status: int, headers, have: int) -> int | None:
    if status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != have:
            return -1  # a range we did not ask for
        return None if match.group(3) == "*" else int(match.group(3))
    length = headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` resumably and verify it (see the module docstring). Returns ``dest``.

    ``on_progress(bytes_done, total_or_None)`` is called as data arrives (for a progress bar).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total: int | None = None
    failures = 0
    restarted = False
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": f"srtool/{__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                announced = _total_from_headers(resp.status, resp.headers, have)
                if announced == -1:
                    raise DownloadError(f"{url}: server answered a different byte range than requested")
                mode = "ab"
                if resp.status == 200:
                    have, mode = 0, "wb"  # server ignored Range: start over
                if announced is not None:
                    if total is not None and announced != total:
                        part.unlink(missing_ok=True)  # the file changed on the server: restart
                        raise DownloadError(f"{url}: size changed during download ({total} -> {announced} bytes)")
                    total = announced
                if on_progress:
                    on_progress(have, total)
                with open(part, mode) as fh:
                    while chunk := resp.read(CHUNK):
                        fh.write(chunk)
                        have += len(chunk)
                        if on_progress:
                            on_progress(have, total)
                    fh.flush()
                    os.fsync(fh.fileno())
            if total is not None and have < total:
                raise ConnectionError(f"connection closed at {have} of {total} bytes")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have and not restarted:
                # the .part is not a prefix of this file (as long or longer): start over, once
                part.unlink(missing_ok=True)
                restarted = True
                continue
            reason = "too many redirects (a redirect loop)" if 300 <= exc.code < 400 else " ".join(str(exc.reason).split())
            raise DownloadError(f"{url}: HTTP {exc.code} {reason}") from None
        except (urllib.error.URLError, ConnectionError, HTTPException, socket.timeout, TimeoutError, OSError) as exc:
            if isinstance(exc, DownloadError):
                raise
            reason = getattr(exc, "reason", exc)
            if failures == 0 and total is None and isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
                # never connected at all (no network, no such host, nothing listening): say so now, not after retries
                raise DownloadError(f"{url}: cannot connect ({reason})") from None
            failures += 1
            if failures > retries:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(
                    f"{url}: download failed after {retries} retries ({reason}); run again to resume from {part.stat().st_size if part.exists() else 0} bytes"
                ) from None
            time.sleep(backoff * failures)
    size = part.stat().st_size
    if total is not None and size != total:
        bad = move_aside(part)
        raise DownloadError(f"{url}: got {size} bytes but the server announced {total}; moved the file aside to {bad}")
    if sha256:
        actual = sha256_file(part)
        if actual.lower() != sha256.lower():
            bad = move_aside(part)
            raise DownloadError(f"{url}: sha256 mismatch (expected {sha256}, got {actual}); moved the file aside to {bad}")
    os.replace(part, dest)
    return dest
