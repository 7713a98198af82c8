"""Image reading and writing shared by prepare, eval and upscale.

Reading is guarded: the pixel count is checked from the header *before* any decoding, so a
decompression bomb (a tiny file that expands to gigapixels) is refused with a clear error; EXIF
orientation is applied so pixels are seen the way viewers show them. Every failure is an
:class:`ImageReadError` naming the file. Writing is atomic (temp file + rename).

:func:`to_dataset_array` defines how datasets see an image (uint8, grayscale kept single-channel):
16-bit -> 8-bit by rounding v/257; RGBA/LA -> alpha dropped; palette -> RGB (or L if the palette is
gray); CMYK -> RGB by PIL's conversion; 1-bit -> L.

:func:`read_image` / :func:`write_image` define how *upscale* sees an image, losing nothing:
grayscale stays single-channel, alpha is kept (LA, RGBA; palette images become RGB or RGBA), 16-bit
PNG and TIFF stay 16-bit (PIL reduces 16-bit colour to 8 bits, so those go through pypng and
tifffile), EXIF orientation is applied to the pixels, and the ICC profile and the EXIF block (with
its orientation tag removed) are carried to the output.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_path, write_bytes_atomic
from .errors import ImageWarning, UserError
from .png_writer import encode_png8, encode_png16

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels; --max-pixels raises it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# srtool enforces its own limit (below); PIL's global bomb check would otherwise fire on its own threshold.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(UserError):
    """An input image that cannot be used (missing, corrupt, unsupported, too large)."""


class _NotForPIL(ImageReadError):
    """No PIL plugin recognises the file (it may still be a TIFF layout PIL has no mode for)."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _source_label(source: str | Path | bytes) -> str:
    """How messages name an image source: its path, or ``<stdin>`` for bytes (``srtool upscale -``)."""
    return "<stdin>" if isinstance(source, bytes) else str(source)


def _read_source(source: str | Path | bytes, max_pixels: int | None) -> tuple[bytes, str]:
    """The bytes of ``source`` and its label. A file is read only once its header shows an image
    within ``max_pixels``: a multi-gigabyte non-image with an image's name, or a scan over the
    limit, is refused without being read into memory (it used to take its whole size in RAM first)."""
    label = _source_label(source)
    if isinstance(source, bytes):
        return source, label
    try:
        with open(source, "rb") as fh:
            if not fh.seekable():  # a FIFO, /dev/stdin, bash's <(...): the header is checked on its first bytes
                head = fh.read(_PIPE_HEAD_BYTES)
                _check_pipe_head(head, label, max_pixels)
                return head + _read_pipe_rest(fh, label, max_pixels), label
            _open_checked(fh, label, max_pixels)
            fh.seek(0)
            return fh.read(), label
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot open ({exc.strerror or exc})") from None


_PIPE_HEAD_BYTES = 1 << 20
_PIPE_SLACK_BYTES = 64 << 20  # metadata beyond the pixels (ICC, EXIF, XMP) an image from a pipe may hold
_TIFF_MAGIC = (b"II*\0", b"MM\0*")


def _read_pipe_rest(fh: BinaryIO, label: str, max_pixels: int | None) -> bytes:
    """The rest of a pipe, up to what an image within ``max_pixels`` can take: 8 bytes a pixel (16-bit
    RGBA stored raw) plus ``_PIPE_SLACK_BYTES`` of metadata. A valid header followed by endless bytes is refused there."""
    if max_pixels is None:
        return fh.read()
    limit = 8 * max_pixels + _PIPE_SLACK_BYTES
    rest = fh.read(limit + 1)
    if len(rest) > limit:
        raise ImageReadError(f"{label}: more than {limit / 1e9:.1f} GB from a pipe, more than an image within the "
                             f"limit of {max_pixels:,} pixels takes (raise it with --max-pixels)")
    return rest


def _check_pipe_head(head: bytes, label: str, max_pixels: int | None) -> None:
    """Refuse a piped non-image, or an image over ``max_pixels``, from its first bytes, before reading
    the rest (which may be endless). A header longer than ``head`` is checked once all is read; a TIFF
    PIL cannot identify may still be one that :func:`_read_tiff_pil_cannot_open` reads."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(head))
    except UnidentifiedImageError:
        if head[:4] in _TIFF_MAGIC:
            return
        raise ImageReadError(f"{label}: not an image file (or an unsupported format)") from None
    except Exception:  # noqa: BLE001 -- a header that goes on past the head: checked on the whole file
        return
    check_pixels(*img.size, label, max_pixels)


def read_image_bytes(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes:
    """A file's bytes, read only once its header shows an image within ``max_pixels`` (else
    :class:`ImageReadError` naming it): for callers that hash or keep the bytes before decoding."""
    return _read_source(Path(path), max_pixels)[0]


def _open_checked(data: bytes | BinaryIO, label: str, max_pixels: int | None) -> Image.Image:
    """PIL-open from bytes (or an open file) and refuse it from the header if it has too many pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except UnidentifiedImageError:
        raise _NotForPIL(f"{label}: not an image file (or an unsupported format)") from None
    except Exception as exc:  # PIL's decoders raise many types on hostile files (TypeError, struct.error, ...)
        raise ImageReadError(f"{label}: corrupt or truncated image ({_reason(exc)})") from None
    check_pixels(*img.size, label, max_pixels)
    return img


def check_pixels(width: int, height: int, label: str, max_pixels: int | None) -> None:
    """The decompression-bomb guard: more than ``max_pixels`` (None: no limit) is an :class:`ImageReadError`."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"{label}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise it with --max-pixels)"
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def exif_orientation(img: Image.Image, label: str, header_only: bool = False) -> tuple[int, Image.Exif]:
    """(EXIF orientation 1..8, EXIF block) of an opened image.

    A broken EXIF block or orientation tag (unparseable IFD, a tag of the wrong type, a value out of
    1..8) means "no orientation": the image is read as stored, with an :class:`ImageWarning`.
    ``header_only``: the caller knows that every metadata chunk was parsed at open (a PNG without
    metadata after its pixels), so PIL must not decode the image to look for more.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own "Corrupt EXIF data" chatter; we say it once, below
            exif = Image.Image.getexif(img) if header_only else img.getexif()
            value = exif.get(ORIENTATION_TAG, 1)
            orientation = 1 if value is None else int(value)
        if orientation not in range(1, 9):
            raise ValueError(f"orientation {orientation} is not 1..8")
    except OSError as exc:  # the file itself is truncated or unreadable (PNG keeps EXIF after the pixels)
        raise ImageReadError(f"{label}: corrupt or truncated image ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 -- metadata is never a reason to refuse the pixels
        warnings.warn(f"{label}: broken EXIF orientation ({_reason(exc)}); read as not rotated", ImageWarning, stacklevel=2)
        return 1, Image.Exif()
    return orientation, exif


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@functools.cache
def _pil_orients_tiffs() -> bool:
    """Whether this Pillow applies a TIFF's orientation tag itself: recent versions give the rotated
    size from the header on and rotate the pixels while loading (older ones do neither). srtool must
    then not rotate a TIFF decoded by PIL a second time (a 6 applied twice is upside down)."""
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    Image.new("L", (2, 1)).save(buf, "TIFF", exif=exif)
    with Image.open(buf) as probe:
        return probe.size == (1, 2)


def _oriented_by_pil(img: Image.Image) -> bool:
    """Whether decoding ``img`` with PIL already applies its orientation (see :func:`_pil_orients_tiffs`)."""
    return img.format == "TIFF" and _pil_orients_tiffs()


def open_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, size-check, fully decode and EXIF-orient an image. Raises :class:`ImageReadError`."""
    data, label = _read_source(source, max_pixels)
    img = _open_checked(data, label, max_pixels)
    frames = frame_count(img)
    if frames > 1:
        raise ImageReadError(f"{label}: holds {frames} frames or pages; a dataset image must be a single image")
    orientation, _ = exif_orientation(img, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            if orientation in _TRANSPOSE and not _oriented_by_pil(img):
                img = img.transpose(_TRANSPOSE[orientation])
    except Exception as exc:  # any decoder exception: the file is unreadable (named), never an internal error
        raise ImageReadError(f"{label}: corrupt or truncated image ({_reason(exc)})") from None
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as viewers show it (EXIF orientation applied), from the header only."""
    width, height, _ = image_header(path)
    return width, height


def image_header(path: str | Path) -> tuple[int, int, str]:
    """(width, height, PIL mode) from the header only; the size as :func:`image_size` gives it."""
    label = str(path)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fh) as img:
                width, height = img.size
                mode = img.mode
                header_only = img.format == "PNG" and not _png_metadata_after_pixels(fh)
                orientation, _ = exif_orientation(img, label, header_only)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: not an image file (or an unsupported format)") from None
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot open ({exc.strerror or _reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{label}: corrupt or unreadable image ({_reason(exc)})") from None
    if img.format == "TIFF" and _pil_orients_tiffs():  # PIL's size is the oriented one already
        return width, height, mode
    return (height, width, mode) if orientation in (5, 6, 7, 8) else (width, height, mode)


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_METADATA_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")  # where PIL finds EXIF (and XMP) orientation


def _png_metadata_after_pixels(fh) -> bool:
    """True if a PNG holds an EXIF or text chunk after its first IDAT (or its chunks cannot be walked).

    Why: PIL reads such chunks only by decoding the whole image, so asking a PNG for its EXIF
    orientation costs a full decode (as much as reading the pixels: ``srtool eval``'s up-front checks
    decoded every image twice). Walking the chunk headers costs a few seeks; when nothing follows the
    pixels, everything PIL would find was parsed when the file was opened.
    """
    fh.seek(8)
    seen_pixels = False
    while True:
        header = fh.read(8)
        if len(header) < 8:
            return True  # truncated: let PIL's own path decide (and fail with its message)
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if kind == b"IEND":
            return False
        if kind == b"IDAT":
            seen_pixels = True
        elif seen_pixels and kind in _PNG_METADATA_CHUNKS:
            return True
        fh.seek(length + 4, os.SEEK_CUR)  # data and CRC


def check_complete(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Raise :class:`ImageReadError` if ``path`` is truncated or does not decode, before any work uses it.

    A PNG that ends with its IEND chunk, or a JPEG that ends with its end-of-image marker (FFD9), is
    complete (a truncated file lacks them; checking costs one small read, no decoding). Any other
    file (other formats, or a PNG/JPEG with trailing bytes) is decoded in full.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16))
            tail = fh.read()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and tail.endswith(_PNG_END):
        return
    if head.startswith(b"\xff\xd8") and tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return
    open_image(path, max_pixels)


_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_GRAY_MODES = ("L", "1", "LA")


def dataset_kind(mode: str) -> str | None:
    """What :func:`to_dataset_array` makes of an image of PIL ``mode``: "grayscale" or "RGB"; None for a
    palette image (grayscale when its palette is)."""
    if mode == "P":
        return None
    return "grayscale" if mode in _WIDE_GRAY_MODES + _GRAY_MODES else "RGB"


def to_dataset_array(img: Image.Image) -> np.ndarray:
    """uint8 (H, W) for grayscale images, (H, W, 3) otherwise; see the module docstring for conversions."""
    mode = img.mode
    if mode in _WIDE_GRAY_MODES:
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:  # 'I' holding 8-bit data
            return np.clip(arr, 0, 255).astype(np.uint8)
        return np.clip(np.floor(arr / 257.0 + 0.5), 0, 255).astype(np.uint8)
    if mode == "P":
        rgb = img.convert("RGB")
        arr = np.asarray(rgb)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            return np.ascontiguousarray(arr[..., 0])
        return arr
    if mode in _GRAY_MODES:
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))


def read_dataset_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return to_dataset_array(open_image(path, max_pixels))


def write_png(path: str | Path, array: np.ndarray, replace: bool = True) -> None:
    """Write a uint8/uint16 (H, W) or (H, W, C) array as PNG, atomically (``replace=False``: an existing
    file is kept, :class:`srtool.atomic.OutputExists`; see :func:`srtool.atomic.atomic_path`).

    With ``srtool upscale``'s encoder (:func:`encode_image`): on Set14's 14 HR-sized images 42-89 ms
    against PIL's 1.1-1.5 s at level 6, for files 10 % larger; ``srtool eval --save-images`` writes every
    SR output through it, one lane at a time."""
    write_bytes_atomic(path, encode_image(array, "png"), replace)


# ----------------------------------------------------------------------- lossless I/O for upscale

ORIENTATION_TAG = 0x0112
OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp", "gif": ".gif"}
ANIMATION_FORMATS = ("png", "webp", "tiff", "gif")  # formats that hold several frames (APNG, multi-page TIFF)
_SUFFIX_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp", ".gif": "gif"}
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp", "MPO": "jpg", "GIF": "gif"}


@dataclass
class DecodedImage:
    """Pixels as the viewer shows them, plus what an output should carry over.

    ``array``: uint8 or uint16, (H, W) grayscale or (H, W, C) with C = 2 (LA), 3 (RGB), 4 (RGBA).
    ``exif``: the EXIF block with the orientation tag removed (it is applied to ``array``).
    ``format``: srtool's name of the source format (png, jpg, webp, tiff, bmp, gif) or None.
    ``frames``: for an animation (GIF, APNG, WebP) or a multi-page TIFF, every frame, already oriented.
    """

    array: np.ndarray
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None
    frames: list[np.ndarray] | None = None  # every frame/page (frames[0] is array) when there are several
    durations: list[int] | None = None  # ms per frame (GIF, APNG, WebP), when the file says
    loop: int | None = None  # 0 = forever (GIF, APNG, WebP), when the file says
    lossless: bool = False  # a lossless WebP (VP8L bitstreams only), which --format keep keeps lossless


def webp_is_lossless(data: bytes) -> bool:
    """Whether a WebP file holds lossless (VP8L) bitstreams only: its still image or every frame.

    PIL does not say; the RIFF chunks do (a lossy image is a ``VP8 `` chunk, with an ``ALPH`` chunk
    for its alpha; an animation's ``ANMF`` frames each hold one of the two)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    kinds: set[bytes] = set()

    def walk(start: int, end: int, top: bool) -> None:
        pos = start
        while pos + 8 <= end:
            tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
            if tag in (b"VP8 ", b"VP8L"):
                kinds.add(tag)
            elif tag == b"ANMF" and top:  # a frame: 16 bytes of position and timing, then its chunks
                walk(pos + 8 + 16, min(pos + 8 + size, end), False)
            pos += 8 + size + (size & 1)

    walk(12, len(data), True)
    return kinds == {b"VP8L"}


def format_for_suffix(suffix: str) -> str | None:
    return _SUFFIX_FORMATS.get(suffix.lower())


def format_for_pil(pil_format: str | None) -> str | None:
    """srtool's format name for a PIL format name (``JPEG`` -> ``jpg``), None if srtool does not write it."""
    return _PIL_FORMATS.get(pil_format or "")


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W[, C]) array, as ``ImageOps.exif_transpose`` does."""
    a = array
    ops = {
        2: lambda: a[:, ::-1], 3: lambda: a[::-1, ::-1], 4: lambda: a[::-1],
        5: lambda: a.swapaxes(0, 1), 6: lambda: np.rot90(a, -1), 7: lambda: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation]()) if orientation in ops else array


def array_from_pil(img: Image.Image, alpha16: bool = False) -> np.ndarray:
    """Pixels of a PIL image without loss: L/LA/RGB/RGBA uint8, 16-bit gray as uint16 (H, W).

    A transparent colour (PNG's tRNS on a gray or RGB image: every pixel of that value is fully
    transparent) becomes an alpha channel, as it does for palette images: LA/RGBA. ``alpha16``: a
    16-bit gray image's transparent value too, as (H, W, 2) uint16, which no PIL image can hold (so
    :func:`srtool.upscale_image` with a PIL image keeps 16-bit gray, without it)."""
    mode = img.mode
    key = img.info.get("transparency")
    keyed = isinstance(key, tuple) if mode == "RGB" else isinstance(key, int) and mode in (
        "1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError("32-bit integer image with values outside 0..65535")
        arr = arr.astype(np.uint16)
        if keyed and alpha16:
            alpha = np.where(arr == key, 0, 65535).astype(np.uint16)
            return np.dstack([arr, alpha])
        return arr
    if mode == "F":
        raise ValueError("32-bit float images are not supported")
    if mode in ("1", "L"):
        return np.asarray(img.convert("LA" if keyed else "L"))
    if mode in ("LA", "La"):
        return np.asarray(img.convert("LA"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("RGBA", "RGBa") or keyed:
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))


def pil_from_array(array: np.ndarray) -> Image.Image:
    """Inverse of :func:`array_from_pil` (PIL has no 16-bit colour modes: those raise ValueError)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint16 and array.ndim != 2:
        raise ValueError("PIL cannot hold 16-bit colour images; use srtool.imageio.write_image")
    if array.dtype in (np.float32, np.float64):
        if array.ndim != 2:
            raise ValueError("PIL holds float images only as single-channel 'F'")
        array = array.astype(np.float32)
    elif array.dtype != np.uint16:
        array = array.astype(np.uint8, copy=False)
    return Image.fromarray(np.ascontiguousarray(array))  # L, LA, RGB, RGBA, I;16 or F, inferred


def _png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG, or None if ``data`` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _read_png16_colour(data: bytes) -> np.ndarray:
    import png  # pypng: PIL reduces 16-bit colour PNGs to 8 bits

    width, height, rows, info = png.Reader(bytes=data).asDirect()
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
    return arr[..., 0] if info["planes"] == 1 else arr


def _read_tiff16_colour(data: bytes) -> np.ndarray:
    import tifffile  # PIL reduces 16-bit colour TIFFs to 8 bits

    arr = tifffile.imread(io.BytesIO(data), key=0)
    if arr.ndim == 3 and arr.shape[0] in (2, 3, 4) and arr.shape[2] not in (2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return np.ascontiguousarray(arr.astype(np.uint16))


def frame_count(img: Image.Image) -> int:
    """Frames (GIF, APNG, WebP) or pages (TIFF) in an opened image; 1 for stills. An MPO (a camera
    JPEG with a preview or second view appended) counts as one: its first image is the photo."""
    if img.format == "MPO":
        return 1
    try:
        return max(1, int(getattr(img, "n_frames", 1)))
    except Exception as exc:  # noqa: BLE001 -- a damaged frame table
        raise ImageReadError(f"{getattr(img, 'filename', '') or 'image'}: cannot count its frames ({_reason(exc)})") from None


def _check_frame_pixels(img: Image.Image, frames: int, label: str, max_pixels: int | None) -> None:
    width, height = img.size
    total = width * height * frames
    if max_pixels is not None and frames > 1 and total > max_pixels:
        raise ImageReadError(
            f"{label}: {frames} frames of {width}x{height} = {total / 1e6:.1f} megapixels exceed the limit of "
            f"{max_pixels / 1e6:.1f} (raise it with --max-pixels)"
        )


def _decode_frames(img: Image.Image, count: int) -> tuple[list[np.ndarray], list[int] | None]:
    """Every frame as an array (GIF/APNG/WebP frames composited to the full canvas by PIL), same channels."""
    frames, durations = [], []
    for index in range(count):
        img.seek(index)
        img.load()
        frames.append(array_from_pil(img))
        durations.append(int(img.info.get("duration", 0) or 0))
    if img.format != "TIFF":  # animation frames share one canvas: give them one channel layout
        alpha = any(f.ndim == 3 and f.shape[2] in (2, 4) for f in frames)
        frames = [_as_channels(f, 4 if alpha else 3) for f in frames]
    return frames, (durations if any(durations) else None)


def _as_channels(frame: np.ndarray, channels: int) -> np.ndarray:
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[2] in (1, 2):  # gray (+alpha) -> RGB (+alpha)
        frame = np.concatenate([np.repeat(frame[..., :1], 3, axis=2), frame[..., 1:]], axis=2)
    if channels == 4 and frame.shape[2] == 3:
        frame = np.concatenate([frame, np.full(frame.shape[:2] + (1,), np.iinfo(frame.dtype).max, frame.dtype)], axis=2)
    return np.ascontiguousarray(frame)


def read_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode an image for upscaling without losing depth, alpha, ICC, EXIF or frames. Raises :class:`ImageReadError`.

    An animated GIF/APNG/WebP or a multi-page TIFF yields every frame in ``frames`` (``array`` is the
    first), with per-frame ``durations`` (ms) and the ``loop`` count.
    """
    data = None
    try:
        data, label = _read_source(source, max_pixels)
        img = _open_checked(data, label, max_pixels)
    except _NotForPIL:  # from the bytes read (a FIFO cannot be read twice) or, unread, from the file
        decoded = _read_tiff_pil_cannot_open(data if data is not None else source, max_pixels, _source_label(source))
        if decoded is None:
            raise
        return decoded
    orientation, exif = exif_orientation(img, label)
    frames = durations = loop = None
    oriented = False  # whether PIL's decoding applied the orientation (TIFFs in recent Pillow)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            icc = img.info.get("icc_profile") or None
            fmt = _PIL_FORMATS.get(img.format or "")
            header = _png_header(data)
            bits = img.tag_v2.get(258) if img.format == "TIFF" else None
            count = frame_count(img)
            _check_frame_pixels(img, count, label, max_pixels)
            tiff16 = bits is not None and (bits if isinstance(bits, tuple) else (bits,))[0] == 16 and img.mode not in (
                "I;16", "I;16L", "I;16B", "I;16N", "I"
            )
            if count > 1:
                if tiff16:
                    raise ImageReadError(f"{label}: a multi-page 16-bit colour TIFF ({count} pages) is not supported")
                loop = img.info.get("loop")
                frames, durations = _decode_frames(img, count)
                array = frames[0]
                oriented = _oriented_by_pil(img)
            elif header is not None and header[0] == 16 and header[1] in (2, 4, 6):
                array = _read_png16_colour(data)
            elif tiff16:
                array = _read_tiff16_colour(data)
            else:
                img.load()
                key = img.info.get("transparency")
                if header is not None and header[:2] in ((2, 0), (4, 0)) and isinstance(key, int) and key < 1 << header[0]:
                    # PIL scales 2/4-bit gray pixels to 0..255 but keeps their transparent value unscaled
                    img.info["transparency"] = key * 255 // ((1 << header[0]) - 1)
                if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    icc = None  # a CMYK/Lab profile does not describe the RGB pixels we produce
                array = array_from_pil(img, alpha16=True)
                oriented = _oriented_by_pil(img)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, KeyError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{label}: corrupt, truncated or unsupported image ({_reason(exc)})") from None
    except Exception as exc:  # PIL on hostile files and third-party decoders (pypng, tifffile) raise their own types
        raise ImageReadError(f"{label}: cannot decode ({_reason(exc)})") from None
    if orientation in range(2, 9) and not oriented:
        array = apply_orientation(array, orientation)
        frames = [apply_orientation(f, orientation) for f in frames] if frames else None
    if frames:
        array = frames[0]
    return DecodedImage(
        array=array, icc_profile=icc, exif=_portable_exif(exif, label), format=fmt,
        frames=frames, durations=durations, loop=loop, lossless=fmt == "webp" and webp_is_lossless(data),
    )


def _read_tiff_pil_cannot_open(source: str | Path | bytes, max_pixels: int | None, label: str) -> DecodedImage | None:
    """A single-page 16-bit gray+alpha TIFF (which PIL cannot open: it has no such mode) read with
    tifffile, size-checked from its header first; None for anything else (the caller's error stands).

    Why: ``srtool upscale`` writes 16-bit LA images as such TIFFs, and GIMP exports them; srtool could
    not read them back ("not an image file")."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(source) if isinstance(source, bytes) else source) as tiff:
            page = tiff.pages[0]
            if len(tiff.pages) != 1 or page.dtype != np.uint16 or page.shape[-1:] != (2,) or len(page.shape) != 3:
                return None
            check_pixels(page.shape[1], page.shape[0], label, max_pixels)
            array = np.ascontiguousarray(page.asarray(), dtype=np.uint16)
            orientation = page.tags.get(ORIENTATION_TAG)
            icc = page.tags.get(34675)
    except ImageReadError:
        raise
    except Exception:  # noqa: BLE001 -- not a TIFF tifffile can read either: the caller's error stands
        return None
    value = orientation.value if orientation is not None else 1
    array = apply_orientation(array, int(value)) if value in range(2, 9) else array
    return DecodedImage(array=array, icc_profile=bytes(icc.value) if icc is not None else None, format="tiff")


# EXIF tags worth carrying to an output: descriptive IFD0 tags and the Exif/GPS sub-IFDs. Structural
# tags (sizes, strips, compression, a TIFF writer's shape description) describe the *input* file and
# would corrupt the output; orientation is dropped because it has been applied to the pixels.
_PORTABLE_TAGS = (0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298, 0x011A, 0x011B, 0x0128, 0x010E)
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
# Exif sub-IFD tags in the input's pixel units: PixelXDimension, PixelYDimension (its size), SubjectArea and
# SubjectLocation (coordinates in it). Carried over they would describe another image (a quarter of the
# output's size, unrotated), so they are left out.
_INPUT_PIXEL_TAGS = (0xA002, 0xA003, 0x9214, 0xA214)


def _portable_exif(exif: Image.Exif, label: str = "image") -> bytes | None:
    """The EXIF block to carry to an output, or None (also, with a warning, when it cannot be re-encoded)."""
    try:
        return _portable_exif_bytes(exif)
    except Exception as exc:  # noqa: BLE001 -- a broken tag never costs the image
        warnings.warn(f"{label}: EXIF block is damaged ({_reason(exc)}); the output is written without it", ImageWarning, stacklevel=3)
        return None


def _portable_exif_bytes(exif: Image.Exif) -> bytes | None:
    if not len(exif):
        return None
    out = Image.Exif()
    for tag in _PORTABLE_TAGS:
        value = exif.get(tag)
        if value is None or (tag == 0x010E and str(value).startswith("{")):  # tifffile's JSON shape note
            continue
        out[tag] = value
    for ifd in (_EXIF_IFD, _GPS_IFD):
        sub = {tag: value for tag, value in exif.get_ifd(ifd).items() if ifd != _EXIF_IFD or tag not in _INPUT_PIXEL_TAGS}
        if sub:
            out.get_ifd(ifd).update(sub)
    return out.tobytes() if len(out) or any(out.get_ifd(i) for i in (_EXIF_IFD, _GPS_IFD)) else None


def _to_8bit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint16:
        return np.floor(array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    return array


def _flatten_alpha(array: np.ndarray) -> np.ndarray:
    """Composite over white (for formats without alpha)."""
    if array.ndim == 3 and array.shape[2] in (2, 4):
        colour, alpha = array[..., :-1].astype(np.float64), array[..., -1:].astype(np.float64) / 255.0
        return np.floor(colour * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    return array


def encode_image(
    array: np.ndarray, fmt: str, quality: int = 95, icc_profile: bytes | None = None, exif: bytes | None = None,
    software: str | None = None, helpers: Executor | None = None, helper_count: int = 0, lossless: bool = False,
) -> bytes:
    """Encode an (H, W[, C]) uint8/uint16 array as ``fmt`` (png, jpg, webp, tiff, bmp, gif).

    PNG and TIFF keep 16 bits; JPEG, WebP and BMP are 8-bit (16-bit input is rounded v/257); JPEG
    and BMP have no alpha, so alpha images are composited over white. ICC and EXIF are embedded
    where the format allows (16-bit colour TIFF keeps the ICC profile but not EXIF). ``software``
    is recorded as the PNG ``Software`` text, the TIFF Software tag, the JPEG or GIF comment or the WebP's
    EXIF Software tag (see :func:`read_software`); BMP does not carry it. ``lossless``: a lossless WebP
    (``quality`` is then its compression effort). ``helpers``/``helper_count``: threads that may share
    an 8-bit PNG's compression with the caller (:func:`srtool.png_writer.encode_png8`).
    """
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    extra: dict = {}
    if icc_profile:
        extra["icc_profile"] = icc_profile
    if exif:
        extra["exif"] = exif
    buf = io.BytesIO()
    if fmt == "png":
        if array.dtype == np.uint16:  # gray too: the same writer carries the output marker
            return encode_png16(array, icc_profile, exif, software)
        if array.dtype == np.uint8:
            # the 'Up' filter and ISA-L's deflate in parts (srtool/png_writer.py): ~35x less CPU than PIL at level 6 for ~15 % larger files,
            # so that encoding stays a few percent of the network's time on a machine the network keeps
            # busy (issue 13, benchmarks/README.md)
            return encode_png8(array, None, icc_profile, exif, software, helpers, helper_count)
        pil_from_array(array).save(buf, format="PNG", compress_level=6, **extra)
    elif fmt == "tiff":
        if array.dtype == np.uint16 and array.ndim == 3:
            import tifffile

            photometric = "rgb" if array.shape[2] in (3, 4) else "minisblack"
            extrasamples = ("unassalpha",) if array.shape[2] in (2, 4) else None
            tifffile.imwrite(
                buf, array, photometric=photometric, extrasamples=extrasamples, compression="zlib",
                iccprofile=icc_profile, metadata=None, software=software or None,
            )
        else:
            if software:
                extra["software"] = software
            pil_from_array(array).save(buf, format="TIFF", compression="tiff_adobe_deflate", **extra)
    else:
        arr8 = _to_8bit(array)
        if fmt in ("jpg", "bmp"):
            arr8 = _flatten_alpha(arr8)
        if fmt == "webp" and arr8.ndim == 2:
            arr8 = np.repeat(arr8[..., None], 3, axis=2)
        if fmt in ("webp", "gif") and arr8.ndim == 3 and arr8.shape[2] == 2:
            arr8 = np.concatenate([np.repeat(arr8[..., :1], 3, axis=2), arr8[..., 1:]], axis=2)
        if _profile_for(icc_profile, gray=arr8.ndim == 2 or arr8.shape[2] <= 2) is None:
            extra.pop("icc_profile", None)  # a gray image's profile, on the RGB pixels WebP holds it as
        img = pil_from_array(arr8)
        if fmt == "jpg":
            if software:
                extra["comment"] = software.encode("utf-8")
            img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **extra)
        elif fmt == "webp":
            if software:
                extra["exif"] = _with_software(exif, software)
            img.save(buf, format="WEBP", **_webp_options(quality, lossless), **extra)
        elif fmt == "gif":
            _gif_frame(arr8).save(buf, format="GIF", optimize=False,
                                  **({"comment": software.encode("utf-8")} if software else {}))
        else:
            img.save(buf, format="BMP")
    return buf.getvalue()


def _with_software(exif: bytes | None, software: str) -> bytes:
    """``exif`` (or an empty block) with its Software tag set: WebP's place for srtool's marker."""
    block = Image.Exif()
    if exif:
        block.load(exif)
    block[0x0131] = software
    return block.tobytes()


WEBP_LOSSLESS_EFFORT = 80  # libwebp's compression effort (0..100) for lossless outputs: its default


def _webp_options(quality: int, lossless: bool) -> dict:
    return {"lossless": True, "quality": WEBP_LOSSLESS_EFFORT} if lossless else {"quality": quality}


def _profile_for(icc_profile: bytes | None, gray: bool) -> bytes | None:
    """``icc_profile`` unless it is a gray profile for colour pixels or a colour one for gray pixels.

    WebP and animated outputs hold a gray image as RGB(A); its gray profile does not describe those
    pixels (colour-managed viewers, and lcms, cannot apply it), so the output goes without it."""
    if not icc_profile or len(icc_profile) < 20 or icc_profile[16:20] not in (b"GRAY", b"RGB "):
        return icc_profile or None
    return icc_profile if (icc_profile[16:20] == b"GRAY") == gray else None


def read_software(path: str | Path) -> str | None:
    """The writer recorded by :func:`encode_image` (PNG text, TIFF tag, JPEG/GIF comment, WebP EXIF), else None.

    Reads only the header (no pixel decoding); unreadable files give None.
    """
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                value = img.info.get("Software")
            elif img.format == "TIFF":
                value = img.tag_v2.get(0x0131)
            elif img.format in ("JPEG", "MPO", "GIF"):
                value = img.info.get("comment")
            elif img.format == "WEBP":
                value = img.getexif().get(0x0131)
            else:
                return None
    except Exception:  # noqa: BLE001 -- not an image PIL reads: a 16-bit gray+alpha TIFF's tag, else no marker
        try:
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                value = tiff.pages[0].tags.get(0x0131)
                value = value.value if value is not None else None
        except Exception:  # noqa: BLE001
            return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def encode_frames(
    frames: list[np.ndarray], fmt: str, quality: int = 95, durations: list[int] | None = None,
    loop: int | None = None, icc_profile: bytes | None = None, exif: bytes | None = None, software: str | None = None,
    lossless: bool = False,
) -> bytes:
    """Encode several frames as one animated (PNG = APNG, WebP, GIF) or multi-page (TIFF) file.

    Frame durations (ms) and the loop count are kept when given. JPEG and BMP hold one image:
    asking for them is a :class:`UserError` (frames are never dropped silently). Animation formats
    are 8-bit (16-bit frames are rounded v/257); a multi-page TIFF keeps 16-bit pages.
    """
    if len(frames) == 1:
        return encode_image(frames[0], fmt, quality, icc_profile, exif, software=software, lossless=lossless)
    if fmt not in ANIMATION_FORMATS:
        raise UserError(
            f"{len(frames)} frames: {fmt} holds a single image; use --format {', '.join(ANIMATION_FORMATS)} "
            "(or keep) to keep every frame"
        )
    if fmt == "tiff":
        images = [pil_from_array(f[..., 0] if f.ndim == 3 and f.shape[2] == 1 else f) for f in frames]
    elif fmt == "gif":
        images = [_gif_frame(_frame_for_animation(f, fmt)) for f in frames]
    else:
        images = [pil_from_array(_frame_for_animation(f, fmt)) for f in frames]
    extra: dict = {}
    if durations:
        extra["duration"] = list(durations)
    if loop is not None:
        extra["loop"] = int(loop)
    if icc_profile and fmt != "gif" and _profile_for(icc_profile, gray=images[0].mode in ("1", "L", "LA", "I", "I;16")):
        extra["icc_profile"] = icc_profile  # frames made RGB(A) for an animation drop a gray image's profile
    if exif and fmt in ("png", "webp"):
        extra["exif"] = exif
    if software and fmt == "png":  # the marker srtool upscale recognises its own outputs by (read_software)
        from PIL import PngImagePlugin

        extra["pnginfo"] = PngImagePlugin.PngInfo()
        extra["pnginfo"].add_text("Software", software)
    elif software and fmt == "tiff":
        extra["software"] = software
    elif software and fmt == "webp":
        extra["exif"] = _with_software(exif, software)
    elif software and fmt == "gif":
        extra["comment"] = software.encode("utf-8")
    buf = io.BytesIO()
    first, rest = images[0], images[1:]
    if fmt == "png":
        first.save(buf, format="PNG", save_all=True, append_images=rest, compress_level=6, **extra)
    elif fmt == "webp":
        first.save(buf, format="WEBP", save_all=True, append_images=rest, **_webp_options(quality, lossless), **extra)
    elif fmt == "gif":
        # optimize=False: PIL's optimiser drops palette entries a frame does not use, and with them an opaque
        # first frame's transparent entry 255, which later frames need (see _gif_frame)
        first.save(buf, format="GIF", save_all=True, append_images=rest, disposal=2, optimize=False, **extra)
    else:
        first.save(buf, format="TIFF", save_all=True, append_images=rest, compression="tiff_adobe_deflate", **extra)
    return buf.getvalue()


GIF_CLEAR_BELOW = 128  # alpha under which a pixel is GIF's transparent entry (GIF has no partial transparency)


def _gif_frame(arr8: np.ndarray) -> Image.Image:
    """An 8-bit (H, W[, C]) array as an image PIL writes to GIF without losing its transparency.

    GIF has one fully transparent palette entry and no partial alpha. PIL quantises RGBA with the
    alpha as a fourth colour and marks a palette entry transparent only if its alpha came out
    exactly 0, so an upscaled image (soft alpha edges) lost all its transparency. Here pixels under
    half opacity (:data:`GIF_CLEAR_BELOW`) become palette entry 255, the others keep their colour,
    quantised to 255 colours.
    """
    if arr8.ndim == 3 and arr8.shape[2] in (2, 4):
        clear = arr8[..., -1] < GIF_CLEAR_BELOW
        colour = np.ascontiguousarray(arr8[..., :-1])
        # a fully opaque frame keeps the transparent palette entry too: PIL's animated GIF writer takes
        # the transparency of the first frame only, so later frames with clear pixels would lose theirs
        if clear.any():
            colour[clear] = colour[~clear][0] if (~clear).any() else 0  # hidden pixels take no palette entry
        quantised = pil_from_array(colour).convert("RGB").quantize(255)
        index = np.asarray(quantised).copy()
        index[clear] = 255
        palette = quantised.getpalette()[: 255 * 3]
        out = Image.fromarray(index, "P")
        out.putpalette(palette + [0] * (768 - len(palette)))
        out.info["transparency"] = 255
        return out
    return pil_from_array(arr8)


def _frame_for_animation(frame: np.ndarray, fmt: str) -> np.ndarray:
    """8-bit frames with 3 or 4 channels (animated PNG/WebP/GIF frames share one RGB(A) layout)."""
    arr8 = _to_8bit(frame)
    return _as_channels(arr8, 4 if arr8.ndim == 3 and arr8.shape[2] in (2, 4) else 3)


def write_image(
    path: str | Path, array: np.ndarray, fmt: str | None = None, quality: int = 95,
    icc_profile: bytes | None = None, exif: bytes | None = None,
) -> None:
    """Encode (see :func:`encode_image`; format from the suffix by default) and write atomically."""
    path = Path(path)
    fmt = fmt or format_for_suffix(path.suffix)
    if fmt is None:
        raise UserError(f"{path}: cannot tell the output format from the suffix {path.suffix!r}")
    data = encode_image(array, fmt, quality, icc_profile, exif)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
