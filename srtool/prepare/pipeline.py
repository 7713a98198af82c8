"""The prepare pipeline shared by ``prepare benchmark``, ``prepare folder`` and ``prepare div2k``.

For every input image (a file, or a member of a zip archive), one worker process:

1. reads the bytes and hashes them (sha256), decodes with the bomb-guarded :func:`srtool.imageio.open_image`
   (EXIF orientation applied) and converts with :func:`srtool.imageio.to_dataset_array` (uint8; gray stays
   single-channel; 16-bit, alpha, palette, CMYK conversions documented there);
2. mod-crops top-left to the scale (MATLAB ``modcrop``), computes the LR with :func:`srtool.resize.downscale`
   (MATLAB ``imresize(HR, 1/s, 'bicubic')`` bit for bit, replicate or mirror edges);
3. writes ``HR/<name>.png`` (the source file itself when it is a plain 8-bit PNG needing no crop, else
   :func:`srtool.imageio.encode_png8`), ``LR_bicubic/X{s}/<name>.png`` and, for training sets, the store
   arrays, each atomically (temp + rename), then a per-image record ``.srtool-prepare/records/<name>.json``
   holding the input and output sha256s.

A re-run (or a run resumed after kill -9) skips an image whose record matches the recipe and the input's
sha256 *and* whose outputs still hash to the recorded values; anything else is redone. The store index
and then ``manifest.json`` are written last, from the records in name order, so an interrupted run never
leaves a manifest and a finished one is byte-identical however many times it was interrupted.
Nothing here records times or absolute output paths, for that reason.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import is_srtool_temp, write_bytes_atomic, write_text_atomic
from ..errors import UserError
from ..imageio import (
    IMAGE_SUFFIXES, ImageReadError, encode_png8, list_images, open_image, read_image, read_image_bytes, to_dataset_array,
)
from ..resize import EDGE_MODES, downscale, modcrop
from ..threads import usable_cores
from ..atomic import sha256_file
from .archive import MAX_IMAGE_MEMBER_BYTES, read_member
from .control import out_lock, stoppable, stop_workers, worker_signals
from .store import DEFAULT_STEP, DEFAULT_TILE, as_rgb, store_paths, tile_grid, write_index

STATE_DIR = ".srtool-prepare"
MANIFEST = "manifest.json"
DEFAULT_COMPRESS_LEVEL = 1  # see notes/issue3-benchmarks.md: level 1 is ~4x faster than 6 for ~10% larger files

RESIZE_RECIPE = {
    "function": "MATLAB imresize(HR, 1/scale, 'bicubic')",
    "kernel": "Keys cubic, a = -0.5, antialiased (width 4*scale, weights scale*cubic(scale*x)), rows normalised",
    "coordinates": "u = x/scale + 0.5*(1 - 1/scale)",
    "order": "height pass, then width pass",
    "rounding": "uint8 after each pass, half away from zero, saturated",
    "modcrop": "top-left kept, bottom/right cropped to a multiple of the scale",
}
PAIRED_RECIPE = {
    "function": "none: the LR images were given (srtool prepare folder --lr), each exactly 1/scale of its HR",
    "modcrop": "none: HR sizes must already be multiples of the scale",
}
CONVERSIONS = {
    "L, RGB": "kept (grayscale stays single-channel; in the training store it is repeated to 3 channels)",
    "I;16 / I (16-bit gray)": "8-bit = round(v / 257)",
    "RGB/RGBA/LA 16-bit PNG": "8-bit = round(v / 257) per channel (decoded with pypng), alpha dropped",
    "RGBA, LA": "alpha dropped (no compositing)",
    "P (palette)": "expanded to RGB, or to L when the palette is gray",
    "CMYK (JPEG)": "PIL's CMYK->RGB conversion (no ICC colour management)",
    "1 (bilevel)": "to L (0/255)",
    "EXIF orientation": "applied before anything else, as viewers show the image",
    "HR PNG": "an 8-bit gray/RGB source PNG (no transparency, no EXIF) that needs no crop is copied byte for byte; "
              "anything else is re-encoded (8-bit, 'Up' filter, zlib level png_compress_level, no metadata)",
}


@dataclass(frozen=True)
class ImageSource:
    """One input image: a file, or ``member`` of the zip archive ``path``; ``lr_path``: its given LR (paired data)."""

    name: str
    path: Path
    member: str | None = None
    lr_path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


@dataclass(frozen=True)
class Recipe:
    scale: int = 4
    edge: str = "replicate"
    compress_level: int = DEFAULT_COMPRESS_LEVEL
    store: bool = False
    tile: int = DEFAULT_TILE
    step: int = DEFAULT_STEP
    paired: bool = False  # LR images are given (prepare folder --lr), not made by MATLAB bicubic

    def key(self) -> dict[str, Any]:
        key = {
            "scale": self.scale,
            "edge": self.edge,
            "png_compress_level": self.compress_level,
            "store": {"tile": self.tile, "step": self.step} if self.store else None,
        }
        return {**key, "lr": "given (paired)"} if self.paired else key


@dataclass
class PrepareResult:
    """What a prepare run did. ``records`` are the per-image records (name order); ``skipped`` = (input, reason)."""

    out: Path
    records: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    processed: int
    reused: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.skipped


# ----------------------------------------------------------------------------------------- inputs


def collect_folder_inputs(sources: Iterable[Path]) -> list[ImageSource]:
    """Image files directly in each source folder (others are ignored), named by file stem, in name order.

    Names must be unique in the output; a stem found in several sources is prefixed with its folder
    name (``T91_im1``), and two files with the same stem in one folder get their extension appended.
    """
    found: list[tuple[Path, Path]] = []
    for src in sources:
        src = Path(src).expanduser()
        if not src.exists():
            raise UserError(f"{src}: source folder does not exist")
        if src.is_file():
            if src.suffix.lower() in IMAGE_SUFFIXES:  # a single image file is accepted as a source too
                found.append((src.parent, src))
                continue
            raise UserError(f"{src}: not a folder of images")
        if not src.is_dir():
            raise UserError(f"{src}: not a folder")
        try:
            images = list_images(src)
        except OSError as exc:
            raise UserError(f"{src}: cannot list folder ({exc.strerror or exc})") from None
        found.extend((src, p) for p in images)
    # the same file through two arguments (`a a`, `a a/../a`, `a a/x.png`) would be prepared twice under
    # two names; two links to one image inside one folder are the user's choice
    given: dict[Path, tuple[Path, Path]] = {}
    for folder, p in found:
        first_folder, first = given.setdefault(p.resolve(), (folder, p))
        if first is not p and (first == p or first_folder != folder):
            alias = "" if first == p else f" (also as {first})"
            raise UserError(f"{p}: given twice{alias}; name each folder or image once")
    stems: dict[str, int] = {}
    for _, p in found:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    per_folder: dict[tuple[Path, str], int] = {}
    for folder, p in found:
        per_folder[(folder, p.stem)] = per_folder.get((folder, p.stem), 0) + 1
    inputs = []
    for folder, p in found:
        name = p.stem
        if stems[p.stem] > 1 and len({f for f, q in found if q.stem == p.stem}) > 1:
            name = f"{folder.name}_{name}"
        if per_folder[(folder, p.stem)] > 1:
            name = f"{name}_{p.suffix.lstrip('.').lower()}"
        inputs.append(ImageSource(name, p.resolve()))
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"input names collide after disambiguation: {', '.join(dup[:5])}; rename the files")
    return sorted(inputs, key=lambda i: i.name)


def collect_paired_inputs(hr_dir: Path, lr_dir: Path, scale: int) -> list[ImageSource]:
    """HR images of ``hr_dir`` each paired with its LR in ``lr_dir``: same stem, or the stem + ``x{scale}``
    (DIV2K's ``0001x4.png``). Every HR needs exactly one LR and every LR an HR, checked before any work."""
    hr_dir, lr_dir = Path(hr_dir).expanduser(), Path(lr_dir).expanduser()
    if not lr_dir.is_dir():
        raise UserError(f"--lr {lr_dir}: not a folder")
    hr_inputs = collect_folder_inputs([hr_dir])
    by_stem: dict[str, list[Path]] = {}
    for p in list_images(lr_dir):
        stem = p.stem[: -len(f"x{scale}")] if p.stem.endswith(f"x{scale}") else p.stem
        by_stem.setdefault(stem, []).append(p)
    pairs, missing = [], []
    for src in hr_inputs:
        found = by_stem.pop(src.path.stem, [])
        if len(found) > 1:
            raise UserError(f"--lr {lr_dir}: several LR images for {src.path.name}: {', '.join(p.name for p in found)}")
        if not found:
            missing.append(src.path.name)
            continue
        pairs.append(ImageSource(src.name, src.path, lr_path=found[0].resolve()))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UserError(f"--lr {lr_dir}: no LR image for {', '.join(missing[:3])}{more} (looked for NAME.* and NAMEx{scale}.*)")
    if by_stem:
        extra = sorted(p.name for ps in by_stem.values() for p in ps)
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        raise UserError(f"--lr {lr_dir}: {', '.join(extra[:3])}{more} has no HR image in {hr_dir}")
    return pairs


_OPEN_ZIPS: dict[Path, zipfile.ZipFile] = {}  # per process: parsing DIV2K's central directory per image is waste


def _read_source(src: ImageSource) -> bytes:
    if src.member is None:
        return read_image_bytes(src.path)  # a huge non-image (or an image over the limit) is refused unread
    zf = _OPEN_ZIPS.get(src.path)
    if zf is None:
        for old in _OPEN_ZIPS.values():
            old.close()
        _OPEN_ZIPS.clear()
        zf = _OPEN_ZIPS[src.path] = zipfile.ZipFile(src.path)
    return read_member(zf, src.member, src.path, MAX_IMAGE_MEMBER_BYTES)


# ------------------------------------------------------------------------------------- one image


def _records_dir(out: Path) -> Path:
    return out / STATE_DIR / "records"


def _lr_dir(out: Path, scale: int) -> Path:
    return out / "LR_bicubic" / f"X{scale}"


def _verify_record(out: Path, record: dict[str, Any], recipe: Recipe, source_sha: str, lr_sha: str | None) -> bool:
    if record.get("recipe") != recipe.key() or record.get("source_sha256") != source_sha:
        return False
    if record.get("lr_source_sha256") != lr_sha:
        return False
    try:
        return all(sha256_file(out / rel) == digest for rel, digest in record["outputs"].items())
    except OSError:
        return False


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_dataset_image(data: bytes) -> tuple[np.ndarray, str, bool]:
    """Decode an input for a dataset: ``(uint8 array, source mode, plain)``; conversions as :data:`CONVERSIONS` says.

    16-bit colour PNGs go through :func:`srtool.imageio.read_image` (PIL would keep only the high byte)
    and are rounded like 16-bit gray, ``round(v / 257)``; everything else through
    :func:`srtool.imageio.open_image` + :func:`srtool.imageio.to_dataset_array`. ``plain`` is True for an
    8-bit gray or RGB PNG without transparency or EXIF: its pixels are exactly ``array``, so
    the file itself can serve as the HR PNG when no mod-crop is needed.
    """
    is_png = data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 26
    if is_png and data[24] == 16 and data[25] in (2, 4, 6):
        array = read_image(data).array
        array = array[..., :3] if array.shape[2] == 4 else array[..., 0] if array.shape[2] == 2 else array
        mode = {2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}[data[25]]
        return np.floor(array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8), mode, False
    img = open_image(data)
    # any eXIf chunk at all disqualifies (conservative): asking PIL for a PNG's EXIF would decode it twice
    plain = (
        is_png and data[24] == 8 and data[25] in (0, 2) and img.mode in ("L", "RGB")
        and "transparency" not in img.info and b"eXIf" not in data
    )
    return to_dataset_array(img), img.mode, plain


def _foreign_output(out: Path, outputs: dict[str, str], old: dict[str, Any] | None) -> str | None:
    """The first existing output (relative name) that srtool did not write: no record of this image names
    it, and it is not the bytes about to be written (an interrupted run's). The fresh-folder check of
    :func:`_claim_out` for a folder srtool prepared before: a user's file under a new input's output name.
    An output a record names but whose bytes differ is srtool's, damaged: it is redone."""
    known = old.get("outputs", {}) if isinstance(old, dict) and isinstance(old.get("outputs"), dict) else {}
    for rel, digest in outputs.items():
        path = out / rel
        if rel not in known and path.exists() and sha256_file(path) != digest:
            return rel
    return None


def process_image(src: ImageSource, out: Path, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    """Prepare one image (see the module docstring). Returns its record, or ``{"error": message}`` for a bad input.

    Without ``overwrite``, an existing output srtool did not write (see :func:`_foreign_output`) is kept
    and the image reported as skipped.

    The returned dict also carries ``_status`` ("done" or "reused") and ``_timings`` (seconds per stage),
    which are not part of the record file.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    try:
        data = _read_source(src)
    except UserError as exc:  # a damaged archive member, named
        return {"input": src.label, "error": str(exc)}
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        return {"input": src.label, "error": f"{src.label}: cannot read ({exc})"}
    source_sha = hashlib.sha256(data).hexdigest()
    lr_data = lr_sha = None
    if src.lr_path is not None:
        try:
            lr_data = src.lr_path.read_bytes()
        except OSError as exc:
            return {"input": src.label, "error": f"{src.lr_path}: cannot read ({exc.strerror or exc})"}
        lr_sha = hashlib.sha256(lr_data).hexdigest()
    timings["read+hash"] = time.perf_counter() - t0
    record_path = _records_dir(out) / f"{src.name}.json"
    old = None
    if record_path.exists():
        try:
            old = json.loads(record_path.read_text())
        except (OSError, ValueError):
            old = None
        if old is not None and _verify_record(out, old, recipe, source_sha, lr_sha):
            return {**old, "_status": "reused", "_timings": {"verify": time.perf_counter() - t0}}

    t = time.perf_counter()
    try:
        array, mode, plain_png = decode_dataset_image(data)
    except ImageReadError as exc:
        return {"input": src.label, "error": str(exc).replace("<stdin>", src.label, 1)}
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input, named, not a crash
        return {"input": src.label, "error": f"{src.label}: cannot decode ({type(exc).__name__}: {exc})"}
    timings["decode"] = time.perf_counter() - t
    s = recipe.scale
    h, w = array.shape[:2]
    if h < s or w < s:
        return {"input": src.label, "error": f"{src.label}: image {w}x{h} is smaller than the scale factor {s}"}

    t = time.perf_counter()
    if lr_data is not None:
        try:
            hr, lr = array, _given_lr(src, lr_data, array, s)
        except UserError as exc:
            return {"input": src.label, "error": str(exc)}
    else:
        hr = modcrop(array, s)
        lr = downscale(hr, s, edge=recipe.edge)
    timings["resize"] = time.perf_counter() - t

    outputs: dict[str, str] = {}
    hr_rel = Path("HR") / f"{src.name}.png"
    lr_rel = _lr_dir(Path(""), s) / f"{src.name}.png"
    t = time.perf_counter()
    try:
        # a plain 8-bit PNG that needs no crop already is the HR PNG: copy its bytes (encoding is the costliest step)
        hr_png = data if plain_png and hr.shape == array.shape else encode_png8(hr, recipe.compress_level)
        blobs: list[tuple[Path, bytes]] = [(hr_rel, hr_png), (lr_rel, encode_png8(lr, recipe.compress_level))]
        timings["png encode"] = time.perf_counter() - t
        tiles: list[list[int]] = []
        if recipe.store:
            t = time.perf_counter()
            hr_npy, lr_npy = store_paths(Path("store"), src.name, s)
            blobs += [(hr_npy, _npy_bytes(as_rgb(hr))), (lr_npy, _npy_bytes(as_rgb(lr)))]
            tiles = [list(win) for win in tile_grid(hr.shape[0], hr.shape[1], s, recipe.tile, recipe.step)]
            timings["store arrays"] = time.perf_counter() - t
        t = time.perf_counter()
        for rel, blob in blobs:
            outputs[rel.as_posix()] = hashlib.sha256(blob).hexdigest()
        timings["hash outputs"] = time.perf_counter() - t
        foreign = None if overwrite else _foreign_output(out, outputs, old)
        if foreign is not None:
            return {"input": src.label, "error": f"{out / foreign}: already exists and was not written by "
                                                 "srtool prepare; kept: pass --overwrite to replace it"}
        t = time.perf_counter()
        for rel, blob in blobs:
            write_bytes_atomic(out / rel, blob)
        record = {
            "name": src.name,
            "source": src.label,
            "source_sha256": source_sha,
            **({"lr_source": str(src.lr_path), "lr_source_sha256": lr_sha} if lr_sha else {}),
            "source_mode": mode,
            "source_size": [w, h],
            "shape": list(hr.shape),
            "lr_shape": list(lr.shape),
            "recipe": recipe.key(),
            "outputs": outputs,
            "tiles": tiles,
        }
        write_text_atomic(record_path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        timings["write (atomic, fsync)"] = time.perf_counter() - t
        timings["cpu"] = time.process_time() - cpu0
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # this image's name only: skip it, the others go on
            return {"input": src.label, "error": f"{src.label}: its output names ({src.name}.png, {src.name}.json) "
                                                 "are too long for this file system; rename the file"}
        raise UserError(f"{out}: cannot write output for {src.label} ({exc.strerror or exc})") from None
    return {**record, "_status": "done", "_timings": timings}


def _given_lr(src: ImageSource, lr_data: bytes, hr: np.ndarray, scale: int) -> np.ndarray:
    """The given LR image of a pair, checked: exactly 1/scale of the HR size, same channels."""
    try:
        lr, _, _ = decode_dataset_image(lr_data)
    except Exception as exc:  # noqa: BLE001 - a bad LR file is a bad pair, named
        raise UserError(f"{src.lr_path}: cannot decode ({type(exc).__name__}: {exc})") from None
    (h, w), (lh, lw) = hr.shape[:2], lr.shape[:2]
    if (h, w) != (lh * scale, lw * scale):
        raise UserError(
            f"{src.lr_path}: LR {lw}x{lh} is not exactly 1/{scale} of its HR {src.path.name} {w}x{h} "
            f"(expected {w / scale:g}x{h / scale:g})"
        )
    if hr.ndim != lr.ndim:
        raise UserError(f"{src.lr_path}: LR is {'gray' if lr.ndim == 2 else 'colour'} but its HR {src.path.name} is not")
    return lr


# ----------------------------------------------------------------------------------------- a run


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {out}: exists and is not a folder") from None
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create folder ({exc.strerror or exc})") from None
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    probe = out / f".srtool-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: not writable ({exc.strerror or exc})") from None


def _clean_stale_temps(folders: Iterable[Path]) -> None:
    """Remove the temporaries an interrupted run left behind (atomic writes never finished).

    Only srtool's own temporary names (:func:`~srtool.atomic.is_srtool_temp`) are touched: a user's
    ``.notes.tmp`` in ``--out`` is theirs.
    """
    for folder in folders:
        if folder.is_dir():
            for p in folder.iterdir():
                if is_srtool_temp(p) and p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)


def _recipe_difference(old: Any, new: dict[str, Any]) -> str:
    """``on disk vs now: tile 64 vs 48, step 64 vs 48``: only the fields that differ, by their own names."""
    if not isinstance(old, dict) or not isinstance(old.get("recipe"), dict):
        return f"its {STATE_DIR}/state.json is unreadable"

    def fields(state: dict[str, Any]) -> dict[str, Any]:
        recipe = dict(state["recipe"])
        store = recipe.pop("store", None)
        flat = {"kind": state.get("kind"), "lr": "made by bicubic", **recipe}
        flat.update(store if isinstance(store, dict) else {"tile": "none (no training store)", "step": "none"})
        return flat

    before, after = fields(old), fields(new)
    differ = [f"{k} {before.get(k, 'none')} vs {after.get(k, 'none')}" for k in dict.fromkeys([*before, *after])
              if before.get(k) != after.get(k)]
    return "on disk vs now: " + ", ".join(differ)


def _claim_out(out: Path, inputs: list[ImageSource], recipe: Recipe, kind: str, overwrite: bool) -> None:
    """Make sure we only overwrite what an earlier run of the same recipe wrote (or --overwrite)."""
    state_path = out / STATE_DIR / "state.json"
    state = {"kind": kind, "recipe": recipe.key()}
    if state_path.exists():
        try:
            old = json.loads(state_path.read_text())
        except (OSError, ValueError):
            old = None
        if old == state:
            return
        if not overwrite:
            raise UserError(
                f"--out {out}: holds a dataset prepared with a different recipe ({_recipe_difference(old, state)}); "
                "use another --out or pass --overwrite"
            )
    elif not overwrite:
        lr_dir = _lr_dir(out, recipe.scale)
        for src in inputs:
            for path in (out / "HR" / f"{src.name}.png", lr_dir / f"{src.name}.png"):
                if path.exists():
                    raise UserError(f"{path}: already exists and was not written by srtool prepare; pass --overwrite to replace it")
        if (out / MANIFEST).exists():
            raise UserError(f"{out / MANIFEST}: already exists; pass --overwrite to replace it")
    if overwrite:
        records = _records_dir(out)
        if records.is_dir():
            for p in records.glob("*.json"):
                p.unlink()
        (out / MANIFEST).unlink(missing_ok=True)
    write_text_atomic(state_path, json.dumps(state, sort_keys=True) + "\n")


def run_prepare(
    inputs: list[ImageSource],
    out: Path,
    recipe: Recipe,
    *,
    kind: str,
    sources: list[dict[str, Any]],
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    description: str = "prepare",
    on_skip: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Prepare ``inputs`` into ``out`` with ``recipe``; see the module docstring."""
    if recipe.edge not in EDGE_MODES:
        raise UserError(f"--edge {recipe.edge!r}: must be one of {', '.join(EDGE_MODES)}")
    if recipe.scale < 1 or recipe.scale > 16:
        raise UserError(f"--scale {recipe.scale}: must be an integer from 1 to 16")
    if recipe.store and not (recipe.scale <= recipe.tile and recipe.scale <= recipe.step):
        raise UserError(f"--tile {recipe.tile} / --step {recipe.step}: must be at least the scale ({recipe.scale})")
    if not 0 <= recipe.compress_level <= 9:
        raise UserError(f"--png-compress-level {recipe.compress_level}: must be 0..9")
    if not inputs:
        raise UserError("no input images found (looked for " + ", ".join(IMAGE_SUFFIXES) + ")")
    out = Path(out).expanduser()
    outputs_dirs = {(out / "HR").resolve(), _lr_dir(out, recipe.scale).resolve()}
    clash = next((path for src in inputs if src.member is None for path in (src.path, src.lr_path)  # --lr's too
                  if path is not None and path.parent.resolve() in outputs_dirs), None)
    if clash is not None:
        raise UserError(f"--out {out}: would write into the source folder {clash.parent}; choose another --out")
    _check_out(out)
    with out_lock(out / STATE_DIR, out):
        return _run_locked(inputs, out, recipe, kind=kind, sources=sources, workers=workers, overwrite=overwrite,
                           progress=progress, description=description, on_skip=on_skip)


def _run_locked(inputs: list[ImageSource], out: Path, recipe: Recipe, *, kind: str, sources: list[dict[str, Any]],
                workers: int | None, overwrite: bool, progress: bool, description: str,
                on_skip: Callable[[str], None] | None) -> PrepareResult:
    """The body of :func:`run_prepare`, run while this process holds ``--out``'s lock."""
    _claim_out(out, inputs, recipe, kind, overwrite)
    lr_dir = _lr_dir(out, recipe.scale)
    temp_folders = [out, out / "HR", lr_dir, out / "store", out / "store" / "hr",
                    out / "store" / f"lr_x{recipe.scale}", _records_dir(out), out / STATE_DIR]
    _clean_stale_temps(temp_folders)
    (out / "HR").mkdir(exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)

    workers = max(1, int(workers or usable_cores()))
    workers = min(workers, len(inputs))
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    skipped: list[tuple[str, str]] = []
    timings: dict[str, float] = {}

    def collect(src: ImageSource, result: dict[str, Any]) -> None:
        if "error" in result:
            skipped.append((src.label, result["error"]))
            if on_skip:
                on_skip(result["error"])
            return
        for k, v in result.pop("_timings", {}).items():
            timings[k] = timings.get(k, 0.0) + v
        results[src.name] = result

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not progress, transient=False,
    )
    with bar:
        task = bar.add_task(description, total=len(inputs))
        if workers == 1:
            for src in inputs:
                collect(src, process_image(src, out, recipe, overwrite))
                bar.advance(task)
        else:
            # spawn, not fork: a caller may have started threads (torch, BLAS) that a fork would copy mid-state
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=worker_signals)
            try:
                futures = {pool.submit(stoppable, process_image, src, out, recipe, overwrite): src for src in inputs}
                for fut in as_completed(futures):
                    collect(futures[fut], fut.result())
                    bar.advance(task)
            except BaseException:  # Ctrl-C or an error: stop the workers now, not after the queued images
                stop_workers(pool)
                # a worker killed after the grace period cannot delete its temporary file; we hold --out's
                # lock, so every srtool temporary there is one of this run's: remove them now
                _clean_stale_temps(temp_folders)
                raise
            pool.shutdown()

    records = [results[name] for name in sorted(results)]
    processed = sum(1 for r in records if r.get("_status") == "done")
    reused = sum(1 for r in records if r.get("_status") == "reused")
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]

    store_index = None
    if recipe.store:
        index_images = [{"name": r["name"], "shape": r["shape"][:2], "tiles": r["tiles"]} for r in clean]
        store_index = write_index(out / "store", recipe.scale, recipe.tile, recipe.step, index_images)

    manifest = {
        "srtool_version": __version__,
        "kind": kind,
        "scale": recipe.scale,
        "recipe": {**(PAIRED_RECIPE if recipe.paired else RESIZE_RECIPE), "edge": recipe.edge,
                   "png_compress_level": recipe.compress_level},
        "conversions": CONVERSIONS,
        "sources": sources,
        "layout": {"hr": "HR/<name>.png", "lr": f"LR_bicubic/X{recipe.scale}/<name>.png",
                   "store": "store/index.json" if recipe.store else None},
        "store": None if store_index is None else {
            "index": "store/index.json", "index_sha256": sha256_file(store_index), "tile": recipe.tile, "step": recipe.step,
            "sub_images": sum(len(r["tiles"]) for r in clean),
        },
        "images": [
            {"name": r["name"], "source": r["source"], "source_sha256": r["source_sha256"], "source_mode": r["source_mode"],
             "source_size": r["source_size"], "hr_shape": r["shape"], "lr_shape": r["lr_shape"], "outputs": r["outputs"]}
            for r in clean
        ],
        "skipped": [{"source": label, "reason": reason} for label, reason in sorted(skipped)],
    }
    manifest_path = out / MANIFEST
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return PrepareResult(
        out=out, records=clean, skipped=sorted(skipped), processed=processed, reused=reused,
        seconds=time.perf_counter() - started, timings=timings, manifest=manifest_path,
    )


# ---------------------------------------------------------------------------------- public entries


def run_folder(
    sources: list[Path],
    out: Path,
    scale: int = 4,
    workers: int | None = None,
    *,
    edge: str = "replicate",
    tile: int = DEFAULT_TILE,
    step: int = DEFAULT_STEP,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
    overwrite: bool = False,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
    lr_dir: Path | None = None,
) -> PrepareResult:
    """:func:`prepare_folder` returning the full :class:`PrepareResult` (bad inputs listed, not raised)."""
    if not sources:
        raise UserError("give at least one source folder")
    if lr_dir is not None:
        if len(sources) != 1:
            raise UserError(f"--lr {lr_dir}: give exactly one HR folder with it (got {len(sources)})")
        inputs = collect_paired_inputs(Path(sources[0]), Path(lr_dir), scale)
    else:
        inputs = collect_folder_inputs([Path(s) for s in sources])
    recipe = Recipe(scale=scale, edge=edge, compress_level=compress_level, store=True, tile=tile, step=step,
                    paired=lr_dir is not None)
    srcs = [{"path": str(Path(s).expanduser().resolve())} for s in sources]
    if lr_dir is not None:
        srcs[0]["lr"] = str(Path(lr_dir).expanduser().resolve())
    return run_prepare(inputs, Path(out), recipe, kind="folder-paired" if lr_dir else "folder", sources=srcs, workers=workers,
                       overwrite=overwrite, progress=progress, description="prepare folder", on_skip=on_skip)


def run_benchmark(
    hr_dir: Path,
    out: Path,
    scale: int = 4,
    workers: int | None = None,
    *,
    edge: str = "replicate",
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
    overwrite: bool = False,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
    provenance: dict[str, Any] | None = None,
) -> PrepareResult:
    """:func:`prepare_benchmark` returning the full :class:`PrepareResult` (bad inputs listed, not raised).

    ``provenance`` (where a downloaded set came from: url, archive sha256, licence) goes into the manifest.
    """
    inputs = collect_folder_inputs([Path(hr_dir)])
    recipe = Recipe(scale=scale, edge=edge, compress_level=compress_level, store=False)
    srcs = [{"path": str(Path(hr_dir).expanduser().resolve()), **(provenance or {})}]
    return run_prepare(inputs, Path(out), recipe, kind="benchmark", sources=srcs, workers=workers,
                       overwrite=overwrite, progress=progress, description="prepare benchmark", on_skip=on_skip)


def _checked(result: PrepareResult, skip_bad: bool) -> Path:
    if result.skipped and not skip_bad:
        names = "; ".join(reason for _, reason in result.skipped[:3])
        more = f" (and {len(result.skipped) - 3} more)" if len(result.skipped) > 3 else ""
        raise UserError(f"{len(result.skipped)} input(s) skipped: {names}{more}; pass skip_bad=True to accept")
    return result.out


def prepare_folder(sources: list[Path], out: Path, scale: int = 4, workers: int | None = None, *,
                   skip_bad: bool = False, **options: Any) -> Path:
    """Build a training set from folders of HR images: ``HR/``, ``LR_bicubic/X{s}/``, ``store/``, ``manifest.json``.

    Returns ``out`` (open its store with ``TrainingStore.open(out, scale)``). Options as :func:`run_folder`
    (edge, tile, step, compress_level, overwrite, progress, on_skip, and ``lr_dir``: a folder of given LR
    images paired with the HR ones by name, used instead of MATLAB bicubic). A bad input is skipped and the others
    prepared; then :class:`UserError` names it unless ``skip_bad``.
    """
    return _checked(run_folder(sources, out, scale, workers, **options), skip_bad)


def prepare_benchmark(hr_dir: Path, out: Path, scale: int = 4, workers: int | None = None, *,
                      skip_bad: bool = False, **options: Any) -> Path:
    """Mod-crop a folder of HR test images and write MATLAB-bicubic LR copies (no training store); returns ``out``.

    Options and bad-input behaviour as :func:`prepare_folder` (see :func:`run_benchmark`).
    """
    return _checked(run_benchmark(hr_dir, out, scale, workers, **options), skip_bad)
