"""Image reading and writing shared by prepare, eval and upscale.

Reading is guarded: the pixel count is checked from the header *before* any decoding, so a
decompression bomb (a tiny file that expands to gigapixels) is refused with a clear error; EXIF
orientation is applied so pixels are seen the way viewers show them. Every failure is an
:class:`ImageReadError` naming the file. Writing is atomic (temp file + rename).

:func:`to_dataset_array` defines how datasets see an image (uint8, grayscale kept single-channel):
16-bit -> 8-bit by rounding v/257; RGBA/LA -> alpha dropped; palette -> RGB (or L if the palette is
gray); CMYK -> RGB by PIL's conversion; 1-bit -> L.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_path
from .errors import UserError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels; --max-pixels raises it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# srtool enforces its own limit (below); PIL's global bomb check would otherwise fire on its own threshold.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(UserError):
    """An input image that cannot be used (missing, corrupt, unsupported, too large)."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def open_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, size-check, fully decode and EXIF-orient an image. Raises :class:`ImageReadError`."""
    label = "<stdin>" if isinstance(source, bytes) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot open ({exc.strerror or exc})") from None
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = Image.open(fp)
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageReadError(
                        f"{label}: {width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the limit of "
                        f"{max_pixels / 1e6:.1f} (possible decompression bomb; raise it with --max-pixels)"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
        except ImageReadError:
            raise
        except UnidentifiedImageError:
            raise ImageReadError(f"{label}: not an image file (or an unsupported format)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageReadError(f"{label}: corrupt or truncated image ({exc})") from None
    return img


def to_dataset_array(img: Image.Image) -> np.ndarray:
    """uint8 (H, W) for grayscale images, (H, W, 3) otherwise; see the module docstring for conversions."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
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
    if mode in ("L", "1", "LA"):
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))


def read_dataset_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return to_dataset_array(open_image(path, max_pixels))


def write_png(path: str | Path, array: np.ndarray, compress_level: int = 6) -> None:
    """Write a uint8/uint16 (H, W) or (H, W, C) array as PNG, atomically."""
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError("16-bit PNG writing here supports single-channel arrays only")
        img = Image.fromarray(array.astype(np.uint16), mode="I;16")
    else:
        img = Image.fromarray(np.ascontiguousarray(array))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=compress_level)
