"""srtool's own PNG writer: the 'Up' row filter and a fast deflate, split into parts that threads share.

Why not PIL: PIL tries every filter on every row and deflates at zlib level 6; for upscaled photos
that costs ~35x the CPU for ~15 % smaller files (benchmarks/README.md), and on a CPU the network
keeps busy every millisecond of encoding is taken from the network.

Why parts: ``srtool upscale`` on the CPU encodes each image between two network calls, so the
encode's wall time adds to the batch's. The filtered rows are cut into independent raw-deflate
parts (each ends on a byte boundary with a sync flush, only the last is final) and their Adler-32
checksums are combined, which gives one valid zlib stream that several threads compress at once.
The cut depends on the image size alone (:data:`PART_BYTES`), never on how many threads help, so the
same image gives the same bytes with any ``-j`` on any machine with the same deflate library.
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import Executor

import numpy as np

from .threads import run_shared

PART_BYTES = 128 << 10  # filtered bytes per deflate part: 4+ parts for a 0.2 MP output, so threads share it evenly
MAX_PARTS = 64  # compression restarts in every part; beyond 64 parts the extra threads are not there anyway
_ADLER_BASE = 65521
ISAL_LEVEL = 1  # on Up-filtered photos 8-13 % faster than ISA-L's level 3 for 0.7 % larger files
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KB window, no preset dictionary (FLEVEL is advisory)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _codec():
    """(raw deflate compressor factory, adler32, flush modes): Intel ISA-L (``isal``) where installed, else zlib.

    ISA-L at level 1 compresses upscaled photos' filtered rows ~4x faster than zlib level 1, to
    1.7 % smaller files (benchmarks/bench_png.py); zlib's fallback is level 1 with ``Z_RLE``, its fastest search
    (22 % faster than level 1's default). Looked up per part (an import of a loaded module is a dict
    lookup), so a test can hide ``isal``.
    """
    try:
        from isal import isal_zlib
    except ImportError:
        return (lambda: zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)), zlib.adler32, zlib
    return (lambda: isal_zlib.compressobj(ISAL_LEVEL, isal_zlib.DEFLATED, -15)), isal_zlib.adler32, isal_zlib


def _deflate_part(data: memoryview, last: bool) -> tuple[bytes, int, int]:
    """(raw deflate, adler32, length) of one part. A part that is not the last ends with a sync flush:
    byte-aligned and not final, so the next part's blocks may follow it directly."""
    compressor, adler32, flush = _codec()
    deflate = compressor()
    data_out = deflate.compress(data) + deflate.flush(flush.Z_FINISH if last else flush.Z_SYNC_FLUSH)
    return data_out, adler32(data) & 0xFFFFFFFF, len(data)


def adler32_combine(adler1: int, adler2: int, length2: int) -> int:
    """Adler-32 of A + B from Adler-32(A), Adler-32(B) and len(B) (zlib's ``adler32_combine``)."""
    rem = length2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (sum2 + (adler1 >> 16) + (adler2 >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return sum1 | (sum2 << 16)


def part_count(nbytes: int) -> int:
    return max(1, min(MAX_PARTS, nbytes // PART_BYTES))


def _zlib_stream(parts: list[tuple[bytes, int, int]]) -> bytes:
    """One zlib stream from (raw deflate, adler32, length) parts in order."""
    adler = 1
    for _, part_adler, length in parts:
        adler = adler32_combine(adler, part_adler, length)
    return b"".join([_ZLIB_HEADER, *(data for data, _, _ in parts), struct.pack(">I", adler)])


def _png_file(w: int, h: int, depth: int, colour_type: int, idat: bytes, icc_profile: bytes | None,
              exif: bytes | None, software: str | None = None) -> bytes:
    """PNG signature, IHDR, optional iCCP/eXIf/Software text, the compressed filtered rows, IEND."""
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))]
    if icc_profile:
        out.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        out.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    if software:
        out.append(_png_chunk(b"tEXt", b"Software\x00" + software.encode("latin-1", "replace")))
    out += [_png_chunk(b"IDAT", idat), _png_chunk(b"IEND", b"")]
    return b"".join(out)


def _colour_type(array: np.ndarray) -> int:
    return {1: 0, 2: 4, 3: 2, 4: 6}[1 if array.ndim == 2 else array.shape[2]]


def encode_png16(
    array: np.ndarray, icc_profile: bytes | None = None, exif: bytes | None = None, software: str | None = None,
) -> bytes:
    """A 16-bit PNG of a uint16 (H, W[, C]) array (C = 1..4), rows with PNG's 'Up' filter, zlib level 6."""
    h, w = array.shape[:2]
    raw = np.ascontiguousarray(array, dtype=">u2").view(np.uint8).reshape(h, -1)
    filtered = raw.copy()
    filtered[1:] -= raw[:-1]  # 'Up' filter, modulo 256
    rows = np.concatenate([np.full((h, 1), 2, np.uint8), filtered], axis=1)
    return _png_file(w, h, 16, _colour_type(array), zlib.compress(rows.tobytes(), 6), icc_profile, exif, software)


def encode_png8(array: np.ndarray, compress_level: int | None = 1, icc_profile: bytes | None = None,
                exif: bytes | None = None, software: str | None = None, helpers: Executor | None = None,
                helper_count: int = 0) -> bytes:
    """An 8-bit PNG of a uint8 (H, W[, C]) array, C = 1..4, rows with PNG's 'Up' filter (+ ICC/EXIF).

    About twice as fast as PIL's encoder at the same zlib level for nearly the same size;
    ``srtool prepare`` writes its datasets with it at ``compress_level`` 0-9 (reproducible bytes).
    ``compress_level`` None: the fast deflate in parts (what ``srtool upscale`` writes), each part
    filtered and compressed by whichever of this thread and ``helper_count`` threads of ``helpers``
    takes it.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png8 takes uint8 arrays, got {array.dtype}")
    h, w = array.shape[:2]
    raw = np.ascontiguousarray(array).reshape(h, -1)
    rows = np.empty((h, raw.shape[1] + 1), np.uint8)

    def filter_rows(r0: int, r1: int) -> None:
        rows[r0:r1, 0] = 2  # 'Up': each byte minus the one above it, modulo 256; the first row as it is
        if r0 == 0:
            rows[0, 1:] = raw[0]
            r0 = 1
        np.subtract(raw[r0:r1], raw[r0 - 1:r1 - 1], out=rows[r0:r1, 1:])

    if compress_level is not None:
        filter_rows(0, h)
        return _png_file(w, h, 8, _colour_type(array), zlib.compress(rows.data, compress_level), icc_profile, exif,
                         software)
    n = min(h, part_count(rows.nbytes))
    bounds = [h * k // n for k in range(n + 1)]

    def part(k: int) -> tuple[bytes, int, int]:
        r0, r1 = bounds[k], bounds[k + 1]
        filter_rows(r0, r1)
        return _deflate_part(memoryview(rows[r0:r1]).cast("B"), k == n - 1)

    idat = _zlib_stream(run_shared(part, n, helpers, helper_count))
    return _png_file(w, h, 8, _colour_type(array), idat, icc_profile, exif, software)
