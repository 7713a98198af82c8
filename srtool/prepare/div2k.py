"""``srtool prepare div2k``: get the official DIV2K HR archives (or use local copies) and prepare both splits.

Sources, in order of preference: ``--source`` (the official zips, or folders of the PNGs, any mix), else
``DIV2K_train_HR.zip`` / ``DIV2K_valid_HR.zip`` already in ``OUT/downloads/``, else a resumable download
from the official site (or ``--mirror``). Every archive is verified before use: its length (against the
server's), every member's CRC, the exact member list (train ``0001.png``..``0800.png``, valid
``0801.png``..``0900.png``) and, when pinned with ``--sha256 split=HEX``, its sha256. A downloaded archive
that fails is moved aside (``.bad``); a user's ``--source`` is never moved, only refused.

Outputs: ``OUT/DIV2K/train`` (with the training store) and ``OUT/DIV2K/valid`` (test-set layout), each
with ``HR/``, ``LR_bicubic/X{s}/`` and ``manifest.json``.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import sha256_file, write_text_atomic
from ..errors import UserError
from ..imageio import list_images
from .archive import MAX_IMAGE_MEMBER_BYTES, check_member, read_member
from .download import check_mirror, download, move_aside
from .paths import data_dir
from .pipeline import DEFAULT_COMPRESS_LEVEL, ImageSource, PrepareResult, Recipe, run_prepare
from .store import DEFAULT_STEP, DEFAULT_TILE

DEFAULT_BASE_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
SPLITS: dict[str, tuple[str, range]] = {
    "train": ("DIV2K_train_HR.zip", range(1, 801)),
    "valid": ("DIV2K_valid_HR.zip", range(801, 901)),
}
# Members are matched by their full path in the official archives: DIV2K_train_HR/0001.png. Another
# */0801.png elsewhere in the archive is not a DIV2K image and is ignored, never taken instead.
_MEMBER = re.compile(r"DIV2K_(train|valid)_HR/(\d{4})\.png")


def expected_names(split: str) -> set[str]:
    return {f"{i:04d}" for i in SPLITS[split][1]}


def _split_of(names: set[str], label: str) -> str:
    for split in SPLITS:
        if names == expected_names(split):
            return split
    lo, hi = (min(names), max(names)) if names else ("-", "-")
    raise UserError(
        f"{label}: not a DIV2K HR archive or folder: expected exactly 0001.png..0800.png (train) or "
        f"0801.png..0900.png (valid), found {len(names)} numbered PNGs ({lo}..{hi})"
    )


def verify_zip(path: Path, check_crc: bool = True) -> tuple[str, dict[str, str]]:
    """Check a DIV2K zip: readable, the exact member list, every CRC. Returns (split, {name: member}).

    Duplicate, encrypted, oddly compressed, oversized or corrupt members are refused, naming the
    archive and the member (srtool.prepare.archive).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members: dict[str, str] = {}
            for info in zf.infolist():
                match = _MEMBER.fullmatch(info.filename)
                if not match or info.is_dir():
                    continue
                if match.group(2) in members:
                    raise UserError(f"{path}: member {info.filename} appears twice in the archive (damaged or tampered)")
                check_member(info, path, MAX_IMAGE_MEMBER_BYTES)
                members[match.group(2)] = info.filename
            split = _split_of(set(members), str(path))
            stray = next((m for m in members.values() if not m.startswith(f"DIV2K_{split}_HR/")), None)
            if stray is not None:
                raise UserError(f"{path}: member {stray} is outside DIV2K_{split}_HR/, where the {split} images belong")
            if check_crc:
                for member in members.values():
                    read_member(zf, member, path, MAX_IMAGE_MEMBER_BYTES)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path}: corrupt zip archive ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return split, members


def _verified_cache(out_root: Path) -> Path:
    return out_root / ".srtool-prepare" / "verified.json"


def _verify_archive_cached(path: Path, out_root: Path) -> tuple[str, dict[str, str], str]:
    """verify_zip + sha256, remembered by (path, size, mtime) so re-runs skip re-reading 3.5 GB."""
    cache_path = _verified_cache(out_root)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    st = path.stat()
    key = str(path.resolve())
    entry = cache.get(key)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        split, members = verify_zip(path, check_crc=False)
        digest = entry["sha256"]
    else:
        split, members = verify_zip(path)
        digest = sha256_file(path)
        cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        write_text_atomic(cache_path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    return split, members, digest


def _folder_split(folder: Path) -> tuple[str, list[Path], Path]:
    for sub in (folder, folder / "DIV2K_train_HR", folder / "DIV2K_valid_HR"):
        if sub.is_dir():
            images = [p for p in list_images(sub) if re.fullmatch(r"\d{4}", p.stem) and p.suffix.lower() == ".png"]
            if images:
                return _split_of({p.stem for p in images}, str(sub)), images, sub
    raise UserError(f"{folder}: no DIV2K PNGs (0001.png...) found in it or in DIV2K_train_HR/ / DIV2K_valid_HR/")


def parse_sha256_pins(pins: list[str] | None) -> dict[str, str]:
    """``["train=HEX", "valid=HEX"]`` -> {"train": HEX, ...}."""
    result = {}
    for pin in pins or []:
        split, sep, digest = pin.partition("=")
        split = split.strip().lower().replace("div2k_", "").replace("_hr.zip", "")
        if not sep or split not in SPLITS or not re.fullmatch(r"[0-9a-fA-F]{64}", digest.strip()):
            raise UserError(f"--sha256 {pin!r}: expected train=<64 hex digits> or valid=<64 hex digits>")
        result[split] = digest.strip().lower()
    return result


def prepare_div2k(
    source: list[Path] | Path | None = None,
    out: Path | None = None,
    scale: int = 4,
    workers: int | None = None,
    *,
    sha256: dict[str, str] | None = None,
    base_url: str = DEFAULT_BASE_URL,
    splits: tuple[str, ...] = ("train", "valid"),
    edge: str = "replicate",
    tile: int = DEFAULT_TILE,
    step: int = DEFAULT_STEP,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
    overwrite: bool = False,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
    on_download: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, PrepareResult]:
    """Prepare DIV2K into ``OUT/DIV2K/{train,valid}`` (``OUT`` defaults to :func:`data_dir`). See the module docstring."""
    check_mirror(base_url)
    out = Path(out).expanduser() if out is not None else data_dir()
    sha256 = sha256 or {}
    for split in splits:
        if split not in SPLITS:
            raise UserError(f"unknown DIV2K split {split!r}; choose from {', '.join(SPLITS)}")
    found: dict[str, tuple[list[ImageSource], dict[str, Any]]] = {}
    sources = [source] if isinstance(source, (str, Path)) else list(source or [])

    def add_zip(path: Path, downloaded_from: str | None = None) -> None:
        try:
            split, members, digest = _verify_archive_cached(path, out)
            pinned = sha256.get(split)
            if pinned and digest != pinned:
                raise UserError(f"{path}: sha256 mismatch for DIV2K {split} (expected {pinned}, got {digest})")
        except UserError as exc:
            if downloaded_from:
                bad = move_aside(path)
                raise UserError(f"{exc} -- the download was moved aside to {bad}") from None
            raise
        if split in found:
            raise UserError(f"{path}: a second source for the DIV2K {split} split")
        inputs = [ImageSource(name, path.resolve(), member) for name, member in sorted(members.items())]
        info = {"path": str(path.resolve()), "sha256": digest, **({"url": downloaded_from} if downloaded_from else {})}
        found[split] = (inputs, info)

    for src in sources:
        src = Path(src).expanduser()
        if not src.exists():
            raise UserError(f"--source {src}: does not exist")
        if src.is_file():
            if not zipfile.is_zipfile(src):
                raise UserError(f"--source {src}: not a zip archive (give DIV2K_train_HR.zip / DIV2K_valid_HR.zip or a folder)")
            add_zip(src)
        elif any((src / SPLITS[s][0]).is_file() for s in SPLITS):
            for s in SPLITS:
                if (src / SPLITS[s][0]).is_file():
                    add_zip(src / SPLITS[s][0])
        else:
            split, images, folder = _folder_split(src)
            if split in found:
                raise UserError(f"{src}: a second source for the DIV2K {split} split")
            found[split] = ([ImageSource(p.stem, p.resolve()) for p in images], {"path": str(folder.resolve())})

    downloads = out / "downloads"
    for split in splits:
        if split in found:
            continue
        zip_name = SPLITS[split][0]
        local = downloads / zip_name
        url = base_url.rstrip("/") + "/" + zip_name
        if local.is_file():
            add_zip(local, downloaded_from=url)
            continue
        if sources:
            raise UserError(f"no source for the DIV2K {split} split among --source; give {zip_name} too, or --split")
        download(url, local, sha256=sha256.get(split),
                 on_progress=(lambda done, total, _n=zip_name: on_download(_n, done, total)) if on_download else None)
        add_zip(local, downloaded_from=url)

    results = {}
    for split in splits:
        inputs, info = found[split]
        recipe = Recipe(scale=scale, edge=edge, compress_level=compress_level, store=(split == "train"), tile=tile, step=step)
        results[split] = run_prepare(
            inputs, out / "DIV2K" / split, recipe, kind=f"div2k-{split}", sources=[info], workers=workers,
            overwrite=overwrite, progress=progress, description=f"DIV2K {split}", on_skip=on_skip,
        )
    return results

