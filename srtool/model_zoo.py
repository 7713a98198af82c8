"""Named official pretrained models: ``--model realesrgan-x4plus`` downloads the release file once, verified.

A small explicit registry (no scanning): each entry names the official release URL, its pinned
sha256 (from the published files; see README "Named pretrained models" for where each pin comes
from), size, licence and architecture. :func:`fetch` downloads into the platform cache folder
(``platformdirs.user_cache_dir("srtool")/models``, or ``$SRTOOL_CACHE_DIR/models``) with the
resumable downloader of ``srtool prepare`` and checks the pin before the file is ever used; later runs
find it there and only re-check it when its size or mtime changed. The file is then loaded like any
other checkpoint, through :func:`srtool.loading.load_model` (``torch.load(weights_only=True)``).

Offline, the error is one line naming the URL to fetch by hand and the path to put the file at.
``$SRTOOL_MODEL_MIRROR`` replaces the release folders by one base URL (a local mirror; the tests).

Where a full sha256 is not published anywhere we could find, the entry says so (``sha256=None``) and
is checked against the 8-hex-digit sha256 prefix that BasicSR's publishing script puts into the
file name (``...-ff704c30.pth``) instead; the README lists which.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .atomic import sha256_file, waiting_lock, write_text_atomic
from .errors import ScaleMismatch, UserError

_REALESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_SWINIR = "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0"


@dataclass(frozen=True)
class ZooModel:
    """One official release file. ``sha256=None``: no published full pin; ``sha256_prefix`` is checked instead."""

    name: str
    url: str
    architecture: str
    scale: int
    licence: str
    size: int | None
    sha256: str | None
    sha256_prefix: str | None = None
    description: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name.lower(), Path(self.filename).stem.lower())


ZOO: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("realesrgan-x4plus", f"{_REALESRGAN}/v0.1.0/RealESRGAN_x4plus.pth", "RRDBNet (23 blocks)", 4,
             "BSD-3-Clause", 67_040_989, "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
             description="Real-ESRGAN, general photos"),
    ZooModel("realesrgan-x2plus", f"{_REALESRGAN}/v0.2.1/RealESRGAN_x2plus.pth", "RRDBNet (23 blocks, pixel-unshuffle)", 2,
             "BSD-3-Clause", 67_061_725, "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
             description="Real-ESRGAN x2, general photos"),
    ZooModel("realesrnet-x4plus", f"{_REALESRGAN}/v0.1.1/RealESRNet_x4plus.pth", "RRDBNet (23 blocks)", 4,
             "BSD-3-Clause", 67_040_989, "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df",
             description="Real-ESRNet (L1 only, smoother)"),
    ZooModel("realesrgan-x4plus-anime-6b", f"{_REALESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth", "RRDBNet (6 blocks)", 4,
             "BSD-3-Clause", 17_938_799, "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
             description="Real-ESRGAN, anime illustrations"),
    ZooModel("realesr-general-x4v3", f"{_REALESRGAN}/v0.2.5.0/realesr-general-x4v3.pth", "SRVGGNetCompact (32 convs)", 4,
             "BSD-3-Clause", 4_885_111, "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
             description="Real-ESRGAN small general model"),
    ZooModel("realesr-general-wdn-x4v3", f"{_REALESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth", "SRVGGNetCompact (32 convs)", 4,
             "BSD-3-Clause", 4_885_111, "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
             description="realesr-general-x4v3, stronger denoising"),
    ZooModel("realesr-animevideov3", f"{_REALESRGAN}/v0.2.5.0/realesr-animevideov3.pth", "SRVGGNetCompact (16 convs)", 4,
             "BSD-3-Clause", 2_504_012, "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
             description="Real-ESRGAN anime video (XS)"),
    ZooModel("esrgan-x4", f"{_REALESRGAN}/v0.1.1/ESRGAN_SRx4_DF2KOST_official-ff704c30.pth", "RRDBNet (23 blocks)", 4,
             "Apache-2.0", None, None, sha256_prefix="ff704c30",
             description="ESRGAN official (DF2K+OST), BasicSR layout"),
    ZooModel("swinir-m-x4-gan", f"{_SWINIR}/003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth", "SwinIR-M (real-world)", 4,
             "Apache-2.0", None, "b9afb61e65e04eb7f8aba5095d070bbe9af28df76acd0c9405aeb33b814bcfc6",
             description="SwinIR real-world x4, GAN"),
    ZooModel("swinir-m-x4-psnr", f"{_SWINIR}/003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_PSNR.pth", "SwinIR-M (real-world)", 4,
             "Apache-2.0", None, "1fd8fed99684bd271db55563e4906d36459cf535446820053f7a1081d4781dc5",
             description="SwinIR real-world x4, PSNR"),
)}


def zoo_entries() -> list[ZooModel]:
    """Every named model, in registry order (for ``srtool models list``)."""
    return list(ZOO.values())


def zoo_entry(name: str) -> ZooModel | None:
    """The entry for ``name`` (srtool's name or the release file's stem, any case), else None."""
    key = str(name).strip().lower()
    key = key[:-4] if key.endswith(".pth") else key
    return next((m for m in ZOO.values() if key in m.aliases), None)


def cache_dir() -> Path:
    override = os.environ.get("SRTOOL_CACHE_DIR")
    if override:
        return Path(override).expanduser() / "models"
    import platformdirs

    return Path(platformdirs.user_cache_dir("srtool", appauthor=False)) / "models"


def _url(entry: ZooModel) -> str:
    mirror = os.environ.get("SRTOOL_MODEL_MIRROR")
    if not mirror:
        return entry.url
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(mirror)
        usable = parts.scheme in ("http", "https", "file") and (parts.netloc or parts.scheme == "file")
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        usable = False
    if not usable:
        raise UserError(f"SRTOOL_MODEL_MIRROR={mirror!r}: not a base URL such as http://host:8000/models "
                        "(http, https or file); fix or unset it")
    return f"{mirror.rstrip('/')}/{entry.filename}"


def _pin(entry: ZooModel) -> str:
    return entry.sha256 or f"{entry.sha256_prefix}... (prefix)"


def _matches(entry: ZooModel, digest: str) -> bool:
    return digest == entry.sha256 if entry.sha256 else digest.startswith(entry.sha256_prefix or "\0")


def _verified(entry: ZooModel, path: Path) -> bool:
    """Whether ``path`` holds the pinned file; the hash is remembered by (size, mtime) in a sidecar (not
    written where the cache is read-only: the check is then redone next time)."""
    stamp = path.with_name(path.name + ".verified.json")
    st = path.stat()
    try:
        seen = json.loads(stamp.read_text())
        if seen.get("size") == st.st_size and seen.get("mtime_ns") == st.st_mtime_ns:
            return _matches(entry, seen.get("sha256", ""))
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(path)
    if not _matches(entry, digest):
        return False
    with contextlib.suppress(OSError):
        write_text_atomic(stamp, json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}) + "\n")
    return True


def _refuse_unverified(entry: ZooModel, dest: Path, what: str) -> UserError:
    """The error for a cached file that fails its pin: moved aside (never used, never deleted) when possible."""
    from .prepare.download import move_aside

    try:
        where = f"moved aside to {move_aside(dest)}"
    except OSError as exc:
        where = f"it could not be moved aside ({exc.strerror or exc}): delete it"
    return UserError(f"{what} does not match the pinned sha256 of {entry.name} ({_pin(entry)}); {where}; "
                     "run again to download it afresh")


def _cache_folder(folder: Path, entry: ZooModel, url: str) -> None:
    """Create the cache folder; one line when it cannot be made or written (read-only, a file in the way)."""
    hint = f"set SRTOOL_CACHE_DIR to a writable folder, or fetch {url} by hand and pass the file to --model"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the model cache folder ({exc.strerror or exc}); {hint}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder}: the model cache folder is not writable; {hint}")


@contextlib.contextmanager
def _download_lock(dest: Path, notice: Callable[[str], None] | None) -> Iterator[None]:
    """Hold ``<dest>.lock`` while downloading: a second srtool asking for the same model waits, then finds
    the verified file, instead of appending to the first one's ``.part``."""
    def waiting() -> None:
        if notice:
            notice(f"waiting for another srtool that is downloading {dest.name}")

    with waiting_lock(dest.with_name(dest.name + ".lock"), waiting, "download lock",
                      "set SRTOOL_CACHE_DIR to a folder you can write"):
        yield


def fetch(name: str, *, on_progress: Callable[[int, int | None], None] | None = None,
          notice: Callable[[str], None] | None = None, scale: int | None = None) -> Path:
    """The verified local file of model ``name``, downloaded into :func:`cache_dir` on first use.

    A verified file is used as it is (also from a read-only cache). Otherwise the download runs under a
    lock (:func:`_download_lock`), so concurrent runs download once; the file gets its final name only
    once complete and, for a full pin, verified. ``scale`` (``--scale``) that disagrees with the
    model's is refused before anything is downloaded (a release file is up to 67 MB).
    """
    from .prepare.download import DownloadError, download

    entry = zoo_entry(name)
    if entry is None:
        raise UserError(f"{name}: not a named model; known: {', '.join(ZOO)}")
    if scale is not None and scale != entry.scale:
        raise ScaleMismatch(f"--scale {scale} disagrees with the model {entry.name}, which upscales x{entry.scale}",
                            scale, entry.scale)
    dest = cache_dir() / entry.filename
    if dest.is_file() and _verified(entry, dest):
        return dest
    url = _url(entry)  # only a download needs it (a bad $SRTOOL_MODEL_MIRROR is refused here)
    if dest.exists() and not dest.is_file():
        raise UserError(f"{dest}: is in the way of {entry.name}'s file (not a regular file); remove it and run again")
    _cache_folder(dest.parent, entry, url)
    with _download_lock(dest, notice):
        if dest.is_file():  # a bad file, or one another run finished while this one waited
            if _verified(entry, dest):
                return dest
            raise _refuse_unverified(entry, dest, str(dest))
        if notice:
            size = f" ({entry.size / 1e6:.1f} MB)" if entry.size else ""
            notice(f"downloading {entry.name}{size} from {url} to {dest}")
        try:
            download(url, dest, sha256=entry.sha256, on_progress=on_progress)
        except DownloadError as exc:
            if "sha256 mismatch" in str(exc) or "moved the file aside" in str(exc):
                raise
            raise UserError(
                f"{entry.name}: cannot download {url} ({str(exc).split(': ', 1)[-1].split(';')[0]}); "
                f"offline? fetch that URL by hand and save it as {dest}"
            ) from None
        if not _verified(entry, dest):
            raise _refuse_unverified(entry, dest, f"{url}: the downloaded file")
    return dest
