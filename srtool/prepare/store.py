"""The training store: memory-mapped uint8 HR/LR images addressed as BasicSR-style sub-images.

Layout (inside a prepared dataset folder ``DIR``)::

    DIR/store/index.json            which sub-images exist (written last, atomically)
    DIR/store/hr/<name>.npy         the whole mod-cropped HR image, uint8 (H, W, 3)
    DIR/store/lr_x{s}/<name>.npy    its MATLAB-bicubic LR, uint8 (H/s, W/s, 3)

A *sub-image* is a ``tile`` x ``tile`` window (default 480, step 240, as BasicSR's
``extract_subimages``; the last window is pushed flush to the border so nothing is lost; a side
shorter than ``tile`` is kept whole). All window positions are multiples of the scale, so the LR
sub-image is an exact crop of the LR of the WHOLE image -- never a re-resize of the HR crop, which
would differ at the window border.

Why whole images plus an index instead of BasicSR's copied-out sub-image files: the windows overlap
(step = tile / 2), so copies would cost about 3.3x the disk of the images (about 23 GB of raw uint8 for
DIV2K train); a window here is a zero-copy view into a memory map (``np.load(mmap_mode="r")``), so the
store is exactly 1x the raw pixels and a random crop reads only the pages it touches, with no PNG
decode in the training loop. Grayscale images are stored with their channel repeated 3 times
(the resize of repeated channels equals the repeated resize, so this is exact).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

STORE_FORMAT = "srtool-training-store"
STORE_VERSION = 1
DEFAULT_TILE = 480
DEFAULT_STEP = 240


def _positions(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, scale: int, tile: int = DEFAULT_TILE, step: int = DEFAULT_STEP) -> list[tuple[int, int, int, int]]:
    """Sub-image windows ``(y, x, h, w)`` in HR pixels of a mod-cropped ``height`` x ``width`` image.

    ``tile`` and ``step`` are rounded down to multiples of ``scale`` so every window is LR-aligned.
    """
    if height % scale or width % scale:
        raise ValueError(f"{width}x{height} is not a multiple of the scale {scale}")
    tile = max(scale, tile - tile % scale)
    step = max(scale, step - step % scale)
    th, tw = min(tile, height), min(tile, width)
    return [(y, x, th, tw) for y in _positions(height, tile, step) for x in _positions(width, tile, step)]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) grayscale -> (H, W, 3) by repeating the channel; (H, W, 3) unchanged."""
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def store_paths(store_dir: Path, name: str, scale: int) -> tuple[Path, Path]:
    """Relative-to-``store_dir`` paths of one image's HR and LR arrays."""
    return store_dir / "hr" / f"{name}.npy", store_dir / f"lr_x{scale}" / f"{name}.npy"


def write_index(store_dir: Path, scale: int, tile: int, step: int, images: list[dict[str, Any]]) -> Path:
    """Write ``index.json`` (atomically): ``images`` = [{"name", "shape": [H, W], "tiles": [[y, x, h, w], ...]}]."""
    from ..atomic import write_text_atomic

    index = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "scale": scale,
        "tile": tile,
        "step": step,
        "sub_images": sum(len(im["tiles"]) for im in images),
        "images": images,
    }
    path = store_dir / "index.json"
    write_text_atomic(path, json.dumps(index, separators=(",", ":")) + "\n")
    return path


def _check_index(index: dict[str, Any], path: Path) -> None:
    """Every field ``open`` relies on, with its type: a damaged index is one line naming the field."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what}; rebuild the store with `srtool prepare`")

    for key in ("scale", "tile", "step"):
        if not isinstance(index.get(key), int) or isinstance(index.get(key), bool) or index[key] < 1:
            raise bad(f"'{key}' is missing or not a positive integer")
    if not isinstance(index.get("images"), list):
        raise bad("'images' is missing or not a list")
    for k, entry in enumerate(index["images"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise bad(f"images[{k}] lacks a plain file name")
        shape = entry.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise bad(f"images[{k}] ({name}): 'shape' must be [H, W]")
        tiles = entry.get("tiles")
        if not isinstance(tiles, list) or not all(
                isinstance(t, list) and len(t) == 4 and all(isinstance(v, int) and v >= 0 for v in t) for t in tiles):
            raise bad(f"images[{k}] ({name}): 'tiles' must be a list of [y, x, h, w] integer windows")


def rebuild_hint(dataset_dir: Path) -> str:
    return f"rebuild it by running the same `srtool prepare ... --out {dataset_dir}` again (it re-makes damaged files)"


def check_array_file(path: Path, shape: tuple[int, ...], dataset_dir: Path) -> None:
    """A store ``.npy`` must hold uint8 ``shape`` completely: header read, size checked, nothing mapped.

    Run on every file when a store is opened, so a truncated file is one clear line before training,
    never a crash in a loader worker (or a SIGBUS from a memory map past the end of the file)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            got_shape, _fortran, dtype = read_header(fh)
            offset = fh.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: store file missing; {rebuild_hint(dataset_dir)}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: damaged store file ({exc}); {rebuild_hint(dataset_dir)}") from None
    if tuple(got_shape) != tuple(shape) or dtype != np.uint8:
        raise UserError(f"{path}: store file holds {dtype} {tuple(got_shape)}, the index says uint8 {tuple(shape)}; "
                        f"{rebuild_hint(dataset_dir)}")
    need = offset + int(np.prod(shape))
    if size < need:
        raise UserError(f"{path}: truncated store file ({size} of {need} bytes); {rebuild_hint(dataset_dir)}")


@dataclass
class _Image:
    name: str
    hr_path: Path
    lr_path: Path


def store_folder(dir: Path) -> Path:  # noqa: A002 - as TrainingStore.open names it
    """The store of a prepared dataset folder: ``DIR/store``, or ``DIR`` itself when it is the store."""
    dir = Path(dir)
    return dir / "store" if (dir / "store" / "index.json").exists() or not (dir / "index.json").exists() else dir


class TrainingStore:
    """Random access to the sub-images of a prepared training set, as zero-copy memory-map views.

    ``store.hr(i)`` is uint8 (h, w, 3), ``store.lr(i)`` is uint8 (h//s, w//s, 3), the aligned crop of the
    whole image's MATLAB LR. Memory maps are opened lazily and are not pickled, so a store can be handed
    to DataLoader worker processes (each re-opens what it touches).
    """

    def __init__(self, store_dir: Path, scale: int, images: list[_Image], tiles: np.ndarray, tile: int, step: int):
        self.store_dir = store_dir
        self.scale = scale
        self.tile = tile
        self.step = step
        self._images = images
        self._tiles = tiles  # int64 (N, 5): image index, y, x, h, w (HR pixels)
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    @classmethod
    def open(cls, dir: Path, scale: int, verify: bool = True) -> "TrainingStore":  # noqa: A002 - contract name
        """Open the store of a prepared dataset folder (``DIR`` or ``DIR/store``) built at ``scale``;
        ``verify`` checks every array file's header and size against the index first."""
        dir = Path(dir)
        store_dir = store_folder(dir)
        index_path = store_dir / "index.json"
        if not index_path.is_file():
            raise UserError(
                f"{dir}: no training store (missing {index_path}); build one with `srtool prepare folder` or `srtool prepare div2k`"
            )
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{index_path}: unreadable store index ({exc})") from None
        if not isinstance(index, dict):
            raise UserError(f"{index_path}: expected a JSON object, found a {type(index).__name__}; rebuild the store with `srtool prepare`")
        if index.get("format") != STORE_FORMAT or index.get("version") != STORE_VERSION:
            raise UserError(f"{index_path}: not an srtool training store (format {index.get('format')!r} v{index.get('version')})")
        _check_index(index, index_path)
        if int(index["scale"]) != int(scale):
            raise UserError(f"{dir}: the store was built for x{index['scale']}, not x{scale}; prepare it again with --scale {scale}")
        images, rows = [], []
        dataset_dir = store_dir.parent if store_dir.name == "store" else store_dir
        for k, entry in enumerate(index["images"]):
            hr_path, lr_path = store_paths(store_dir, entry["name"], scale)
            images.append(_Image(entry["name"], hr_path, lr_path))
            rows.extend((k, *t) for t in entry["tiles"])
            if verify:
                h, w = entry["shape"]
                check_array_file(hr_path, (h, w, 3), dataset_dir)
                check_array_file(lr_path, (h // scale, w // scale, 3), dataset_dir)
        tiles = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
        return cls(store_dir, int(scale), images, tiles, int(index["tile"]), int(index["step"]))

    def __len__(self) -> int:
        return len(self._tiles)

    @property
    def num_images(self) -> int:
        return len(self._images)

    def image_name(self, i: int) -> str:
        """Name of the source image sub-image ``i`` comes from."""
        return self._images[int(self._tiles[i, 0])].name

    def window(self, i: int) -> tuple[int, int, int, int]:
        """``(y, x, h, w)`` of sub-image ``i`` in HR pixels of its image."""
        _, y, x, h, w = (int(v) for v in self._tiles[i])
        return y, x, h, w

    def _map(self, k: int, which: str) -> np.ndarray:
        key = (k, which)
        arr = self._maps.get(key)
        if arr is None:
            image = self._images[k]
            path = image.hr_path if which == "hr" else image.lr_path
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                dataset_dir = self.store_dir.parent if self.store_dir.name == "store" else self.store_dir
                raise UserError(f"{path}: cannot open store array ({exc}); {rebuild_hint(dataset_dir)}") from None
            self._maps[key] = arr
        return arr

    def hr(self, i: int) -> np.ndarray:
        k, y, x, h, w = (int(v) for v in self._tiles[i])
        return self._map(k, "hr")[y : y + h, x : x + w]

    def lr(self, i: int) -> np.ndarray:
        k, y, x, h, w = (int(v) for v in self._tiles[i])
        s = self.scale
        return self._map(k, "lr")[y // s : (y + h) // s, x // s : (x + w) // s]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __repr__(self) -> str:
        return f"TrainingStore({str(self.store_dir)!r}, x{self.scale}, {len(self)} sub-images of {self.num_images} images)"
