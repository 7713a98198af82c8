"""What a model spec names, and what an srtool export says about itself, read without torch.

Importing torch and loading a network take seconds; some answers need neither. ``srtool upscale``
run a second time over the same folder has nothing to do, and deciding that needs only the model's
scale (it is in the output names), which an srtool export carries in its safetensors header. So the
spec's file (``default``, a run directory's export) and its header are resolved here, torch-free, and
:mod:`srtool.loading` builds on the same functions when it does load the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError

BUNDLED_WEIGHTS_DIR = Path(__file__).parent / "weights"
EXPORT_FORMAT = "srtool-export/1"
ALPHA_MODES = ("model", "bicubic")
MIN_TILE = 16
MODEL_SCALES = (1, 2, 3, 4, 8)  # 1: restoration checkpoints only


def bundled_model_path() -> Path | None:
    candidates = sorted(BUNDLED_WEIGHTS_DIR.glob("*.safetensors"))
    return candidates[0] if candidates else None


def run_directory_export(path: Path) -> Path | None:
    """A training run directory's export: exports/best.safetensors, else exports/last.safetensors."""
    for name in ("best.safetensors", "last.safetensors"):
        candidate = path / "exports" / name
        if candidate.is_file():
            return candidate
    return None


def weights_in(path: Path) -> Path:
    """``path`` itself, or for a training run directory its export (:func:`run_directory_export`); a folder
    that holds none is refused in one line."""
    if not path.is_dir():
        return path
    export = run_directory_export(path)
    if export is None:
        raise UserError(f"{path}: a directory but not a training run (no exports/best.safetensors or exports/last.safetensors)")
    return export


def check_model_options(tile: int | None, tile_pad: int | None, alpha: str, scale: int | None) -> None:
    """The model options whose validity does not depend on the model (``load_model`` checks them first)."""
    for option, value in (("--tile", tile), ("--tile-pad", tile_pad), ("--scale", scale)):
        if value is not None and (isinstance(value, bool) or not hasattr(value, "__index__")):  # int, numpy ints
            raise UserError(f"{option}: must be a whole number (got {value!r})")  # Python callers: "64", 16.5
    if tile is not None and tile != 0 and tile < MIN_TILE:
        raise UserError(f"--tile: must be at least {MIN_TILE} pixels, or 0 for no tiling (got {tile})")
    if tile_pad is not None and tile_pad < 0:
        raise UserError(f"--tile-pad: must be >= 0 (got {tile_pad})")
    if alpha not in ALPHA_MODES:
        raise UserError(f"--alpha: unknown mode {alpha!r}; use one of {', '.join(ALPHA_MODES)}")
    if scale is not None and scale not in MODEL_SCALES:
        raise UserError(f"--scale: unsupported value {scale}; supported: 1 (restoration models), 2, 3, 4, 8")


def looks_like_safetensors(path: str | Path) -> bool:
    """Whether the file is in safetensors' format, from its first bytes (whatever its name): an 8-byte
    little-endian header length that fits the file, then the JSON header's ``{``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def read_export_metadata(path: str | Path) -> dict[str, Any] | None:
    """The ``srtool`` metadata document of a safetensors file, or None if it is not an srtool export.

    Only the header is read (safetensors' numpy front end, so torch is not imported)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    if "srtool" not in meta:
        return None
    try:
        doc = json.loads(meta["srtool"])
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt srtool metadata ({exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: srtool metadata is a JSON {json_kind(doc)}, not an object (a damaged export)")
    if doc.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: unsupported export format {doc.get('format')!r} (this srtool reads {EXPORT_FORMAT})")
    return doc


def json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def scale_without_loading(spec: str | Path, scale: int | None = None) -> int | None:
    """The scale :func:`srtool.loading.load_model` would give ``spec``, when it can be known without
    loading anything: bicubic, a named official model, and srtool exports (``default``, a file, a run
    directory) from their header. None when only loading can tell (a third-party checkpoint) or when
    loading would refuse the spec: then the caller loads it, and the refusal is the usual one line."""
    from .model_zoo import zoo_entry

    spec_str = str(spec)
    if scale is not None and scale not in MODEL_SCALES:
        return None
    if spec_str == "bicubic":
        return None if scale == 1 else scale or 4
    path = bundled_model_path() if spec_str == "default" else Path(spec_str).expanduser()
    if path is None:
        return None
    if not path.exists():
        entry = zoo_entry(spec_str)
        found = entry.scale if entry is not None else None
    else:
        if path.is_dir():
            path = run_directory_export(path)
        if path is None or path.suffix != ".safetensors" or not path.is_file():
            return None
        try:
            doc = read_export_metadata(path)
        except UserError:
            return None
        generator = doc.get("generator") if doc is not None else None
        found = generator.get("scale") if isinstance(generator, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or found not in MODEL_SCALES:
        return None
    if (scale is not None and scale != found) or (found == 1 and scale != 1):
        return None  # a disagreement, or a 1x model without --scale 1: loading words the refusal
    return found
