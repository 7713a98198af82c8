"""Atomic file writes (a final name never points at a half-written file), and the file hash used to verify them.

Everything srtool writes (images, checkpoints, manifests, tables) goes through :func:`atomic_path`:
the data is written to a hidden temporary file in the destination folder, flushed, and renamed over
the final name with :func:`os.replace`, which is atomic on POSIX and Windows. An interrupted run
leaves at most a ``.srtool-*.tmp`` file behind, never a truncated output under its real name.

Temporary names are short and fixed-pattern (``.srtool-XXXXXXXX.png.tmp``), not derived from the
final name: a 250-byte final name must not fail on a longer temporary one (ENAMETOOLONG), and
:func:`is_srtool_temp` can tell srtool's leftovers from a user's own ``.notes.tmp``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


# Read once at import: os.umask can only be read by setting it, which would race with other threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

TEMP_PREFIX = ".srtool-"
_TEMP_NAME = re.compile(r"\.srtool-[A-Za-z0-9_]{8}(\.[A-Za-z0-9]{1,8})?\.tmp")


def is_srtool_temp(path: str | os.PathLike) -> bool:
    """True for a temporary name :func:`atomic_path` creates (and only for those)."""
    return _TEMP_NAME.fullmatch(Path(path).name) is not None


def _temp_suffix(suffix: str) -> str:
    """The extension part of a temporary name: kept when short and plain, else dropped."""
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


class OutputExists(FileExistsError):
    """``atomic_path(..., replace=False)`` found its final name taken (the file is kept as it was).

    Its own class, so that callers tell it from other ``FileExistsError``s on the way (a folder of the
    output's path that exists as a file)."""


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it to ``final``, else delete it.

    ``suffix`` defaults to the final suffix, so writers that pick a format from the extension
    (PIL, numpy) still see the right one. ``replace=False``: a ``final`` that exists by then (made
    after the caller checked, e.g. by a second run into the same folder) is kept and
    :class:`OutputExists` raised (see :func:`_publish_new`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=TEMP_PREFIX, suffix=_temp_suffix(suffix if suffix is not None else final.suffix) + ".tmp",
        dir=final.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        if replace:
            os.replace(tmp, final)
        else:
            _publish_new(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _publish_new(tmp: Path, final: Path) -> None:
    """``tmp`` under the name ``final`` unless that name exists (:class:`OutputExists`, nothing changed).

    A hard link is made only where no name is, atomically (os.replace would replace one); the
    temporary name then goes. Where the file system has no hard links (FAT, some network shares) the
    name is checked just before the rename instead.
    """
    taken = OutputExists(errno.EEXIST, os.strerror(errno.EEXIST), str(final))
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise taken from None
    except OSError:
        if os.path.lexists(final):
            raise taken from None
        os.replace(tmp, final)
        return
    tmp.unlink()


def name_too_long(path: str | os.PathLike) -> str | None:
    """Why ``path``'s file name cannot exist on its file system (longer than its limit, usually 255
    bytes), else None: so a long name is refused before any work rather than by the final rename."""
    name = os.fsencode(Path(path).name)
    folder = Path(path).parent
    while not folder.is_dir() and folder != folder.parent:  # the limit of the nearest existing folder
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no such folder at all
        limit = 255
    return f"its name is {len(name)} bytes, longer than this file system allows ({limit})" if len(name) > limit else None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (model identities, manifests, download checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(final: str | os.PathLike, data: bytes, replace: bool = True) -> None:
    with atomic_path(final, replace=replace) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str, replace: bool = True) -> None:
    write_bytes_atomic(final, text.encode("utf-8"), replace)


# Descriptors holding a flock in this process. A flock belongs to the open file, which a fork shares:
# a forked child (a DataLoader worker) that outlives its killed parent by the seconds it takes to
# notice kept the parent's run locked. Children close their copies at once; the parent's lock is
# untouched (closing one copy of several releases nothing).
_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def open_lock_fd(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open`` for a descriptor that will hold a flock: forked children do not keep it (see above).
    Close it with :func:`close_lock_fd`."""
    fd = os.open(path, flags, mode)
    _LOCK_FDS.add(fd)
    return fd


def close_lock_fd(fd: int) -> None:
    """Close a descriptor from :func:`open_lock_fd`, releasing its lock; in a forked child, whose copy
    is already closed (and whose descriptor number may be reused since), nothing."""
    if fd in _LOCK_FDS:
        _LOCK_FDS.discard(fd)
        os.close(fd)


@contextlib.contextmanager
def waiting_lock(lock: Path, on_wait=None, what: str = "lock", hint: str = "") -> Iterator[None]:
    """Hold the exclusive ``flock`` of the file ``lock`` (created if missing), waiting while another process
    holds it (``on_wait()`` is called first, to say so). For work that a second srtool should wait for and
    then reuse, not redo alongside (a download, a cache build). The kernel drops the lock when its holder
    dies. Windows has no flock: no lock there."""
    from .errors import UserError

    try:
        import fcntl
    except ImportError:
        yield
        return
    try:  # read-only is enough for flock, and lets users sharing a cache open each other's lock file
        fd = open_lock_fd(lock, os.O_RDONLY | os.O_CREAT)
    except OSError as exc:
        raise UserError(f"{lock}: cannot open the {what} ({exc.strerror or exc})" + (f"; {hint}" if hint else "")) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock on a read-only descriptor (NFS: EBADF/ENOLCK): no lock
            pass
        yield
    finally:
        close_lock_fd(fd)  # releases the lock
