"""Where prepared datasets live, and how a dataset *name* ("Set5") becomes a folder.

Prepared datasets go to the user data dir (``platformdirs.user_data_dir("srtool")``), overridable with
the environment variable ``SRTOOL_DATA_DIR``. ``srtool prepare benchmark HR --out $(data dir)/Set5``
makes ``Set5`` resolvable by name for ``srtool eval``; ``srtool prepare div2k`` writes
``DIV2K/train`` and ``DIV2K/valid`` there by default.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

# name (lower case) -> (folder under the data dir, the benchmark set `prepare benchmark --download` fetches,
# or None for DIV2K, which `srtool prepare div2k` makes)
_KNOWN = {
    "set5": ("Set5", "Set5"),
    "set14": ("Set14", "Set14"),
    "b100": ("B100", "B100"),
    "bsd100": ("B100", "B100"),
    "urban100": ("Urban100", "Urban100"),
    "div2k-valid": ("DIV2K/valid", None),
    "div2k_valid": ("DIV2K/valid", None),
    "div2k-train": ("DIV2K/train", None),
    "div2k_train": ("DIV2K/train", None),
}
DATASET_NAMES: tuple[str, ...] = ("Set5", "Set14", "B100", "Urban100", "DIV2K-valid", "DIV2K-train")


def data_dir() -> Path:
    """srtool's data folder: ``$SRTOOL_DATA_DIR`` if set, else the platform's user data dir."""
    override = os.environ.get("SRTOOL_DATA_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("srtool", appauthor=False))


def dataset_dir(name: str) -> Path | None:
    """The data-dir folder a known dataset name maps to (whether or not it exists yet); None if unknown."""
    known = _KNOWN.get(name.lower())
    return data_dir() / known[0] if known else None


def is_flat_hr_folder(path: Path) -> bool:
    """A plain folder of HR images (no ``HR/``): eval and validation make the LR images on the fly."""
    from ..imageio import list_images

    return path.is_dir() and not (path / "HR").is_dir() and bool(list_images(path))


def given_dataset_folder(name_or_path: str | Path) -> Path | None:
    """The folder a dataset argument names as a path, or None where it names a known dataset: a known
    name (``Set5``) means the data dir's copy unless a same-named folder here is a dataset: it has an ``HR/``
    subfolder, or HR images directly in it (a downloaded ``Set5/`` of PNGs is the user's, not the data dir's)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if _KNOWN.get(text.lower()) is None or (path / "HR").is_dir() or is_flat_hr_folder(path):
        return path
    return None


def resolve_dataset(name_or_path: str | Path, scale: int) -> Path:
    """Folder of a dataset given as a path (a folder with ``HR/``) or a known name (Set5, Set14, B100,
    Urban100, DIV2K-valid, DIV2K-train, case-insensitive) prepared under :func:`data_dir`.

    Raises :class:`UserError` naming the dataset and the command that prepares it. ``scale`` is used to
    check for ``LR_bicubic/X{scale}`` only in the advice (the LR folder is optional: eval can make it).
    """
    text = str(name_or_path)
    path = given_dataset_folder(text)
    known = _KNOWN.get(text.lower())
    if path is not None:
        if not path.exists():
            names = ", ".join(DATASET_NAMES)
            raise UserError(f"dataset {text!r}: no such folder, and not a known dataset name ({names})")
        if not (path / "HR").is_dir() and not is_flat_hr_folder(path):
            raise UserError(f"dataset {text!r}: folder has neither an HR/ subfolder (with LR_bicubic/X{scale}/) "
                            "nor HR images directly in it")
        return path
    folder = data_dir() / known[0]
    if not (folder / "HR").is_dir():
        raise UserError(f"dataset {text!r} is not prepared in {folder}: {_prepare_advice(known[1], folder, scale)}, "
                        "or set SRTOOL_DATA_DIR to where it is")
    return folder


def _prepare_advice(download: str | None, folder: Path, scale: int) -> str:
    """Commands that paste as they are: fetch the set, or prepare the user's own copy of its HR images."""
    import shlex

    if download is None:
        return f"run `srtool prepare div2k --scale {scale}`"
    return (f"run `srtool prepare benchmark --download {download} --scale {scale}` (or `srtool prepare benchmark "
            f"{download.upper()}_HR_DIR --out {shlex.quote(str(folder))} --scale {scale}`)")
