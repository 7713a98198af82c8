"""Reading members of a downloaded or user-given zip (or tar) archive defensively.

An archive is data from outside: its member list and headers may lie. Every failure a hostile or
damaged archive can cause -- an encrypted member, a compression method Python cannot inflate
(deflate64, ...), a corrupt deflate stream, a CRC mismatch, a member that inflates far beyond
anything expected (a zip bomb) -- becomes one :class:`~srtool.errors.UserError` naming the archive
and the member, instead of an internal error or gigabytes in memory. Reading stops at the size
bound however the headers lie, so nothing larger than ``limit`` is ever held.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError

_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 9: "deflate64", 93: "zstandard", 99: "AES"}
CHUNK = 1 << 20
# The images srtool takes from archives (DIV2K HR: at most 2040x2040 RGB, benchmark sets: smaller)
# are under 12.5 MB even uncompressed. A member that claims or inflates to more is refused.
MAX_IMAGE_MEMBER_BYTES = 32 << 20


def check_member(info: zipfile.ZipInfo, archive: Path | str, limit: int) -> None:
    """Refuse a member before reading it: encrypted, an unexpected compression, or declared too large."""
    where = f"{archive}: member {info.filename}"
    if info.flag_bits & 0x1:
        raise UserError(f"{where} is encrypted (password-protected); expected a plain archive")
    if info.compress_type not in _METHODS:
        method = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
        raise UserError(f"{where} uses {method} compression, which srtool does not read; expected stored or deflate")
    if info.file_size > limit:
        raise UserError(
            f"{where} inflates to {info.file_size:,} bytes, more than the {limit:,} any expected member can take "
            "(a damaged archive or a zip bomb)"
        )


def read_member(zf: zipfile.ZipFile, name: str, archive: Path | str, limit: int) -> bytes:
    """The member's bytes, CRC-checked, never more than ``limit`` of them held (see the module docstring)."""
    info = zf.getinfo(name)
    check_member(info, archive, limit)
    where = f"{archive}: member {name}"
    chunks, total = [], 0
    try:
        with zf.open(info) as fh:  # reading to the end checks the CRC (BadZipFile if wrong)
            while block := fh.read(min(CHUNK, limit + 1 - total)):
                total += len(block)
                if total > limit:
                    raise UserError(f"{where} inflates to more than {limit:,} bytes (a damaged archive or a zip bomb)")
                chunks.append(block)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{where} is corrupt ({exc})") from None
    except (zlib.error, EOFError) as exc:
        raise UserError(f"{where} is corrupt: its compressed data does not inflate ({exc})") from None
    except (NotImplementedError, RuntimeError) as exc:  # unsupported method / encryption the headers hid
        raise UserError(f"{where} cannot be read ({exc})") from None
    return b"".join(chunks)


def _tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo, archive: Path | str, limit: int) -> bytes:
    where = f"{archive}: member {info.name}"
    if not info.isreg():
        raise UserError(f"{where} is a {'link' if info.issym() or info.islnk() else 'special file'}, not an image file")
    if info.size > limit:
        raise UserError(f"{where} is {info.size:,} bytes, more than the {limit:,} any expected member can take")
    fh = tf.extractfile(info)
    data = fh.read(limit + 1) if fh is not None else b""
    if len(data) != info.size:
        raise UserError(f"{where} is truncated ({len(data):,} of {info.size:,} bytes)")
    return data


def read_images(archive: Path, folder: str, limit: int = MAX_IMAGE_MEMBER_BYTES) -> dict[str, bytes]:
    """``{file name: bytes}`` of the image files directly in ``folder/`` of a zip or (gzipped) tar archive.

    Members are matched by their full path (``Set5_HR/baby.png``; a leading ``./`` is ignored): other
    members are not read. Duplicates, links, encrypted or oversized members and corrupt streams are
    one :class:`UserError` naming the archive and the member. Nothing is written anywhere.
    """
    from ..imageio import IMAGE_SUFFIXES

    def wanted(name: str) -> str | None:
        name = name[2:] if name.startswith("./") else name
        head, _, base = name.rpartition("/")
        return base if head == folder and base and Path(base).suffix.lower() in IMAGE_SUFFIXES else None

    found: dict[str, bytes] = {}

    def add(base: str, member: str, read: Callable[[], bytes]) -> None:
        if base in found:
            raise UserError(f"{archive}: member {member} appears twice in the archive (damaged or tampered)")
        found[base] = read()

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    base = wanted(info.filename)
                    if base is not None and not info.is_dir():
                        add(base, info.filename, lambda i=info: read_member(zf, i.filename, archive, limit))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                for info in tf:
                    base = wanted(info.name)
                    if base is not None and not info.isdir():
                        add(base, info.name, lambda i=info: _tar_member(tf, i, archive, limit))
        else:
            raise UserError(f"{archive}: neither a zip nor a tar archive")
    except zipfile.BadZipFile as exc:
        raise UserError(f"{archive}: corrupt zip archive ({exc})") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{archive}: corrupt or unreadable archive ({exc})") from None
    return found
