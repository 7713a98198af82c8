"""``srtool prepare benchmark --download NAME``: fetch a public HR test set, then prepare it as usual.

Where each set comes from (and its terms) is listed in :data:`BENCHMARK_SETS` and the README
("Benchmark sets"). The archives are the per-set HR tarballs of the ``eugenesiow`` datasets on the
Hugging Face Hub, which hold exactly the HR images the SR literature uses (``Set5_HR/baby.png``...).
No sha256 of them is published that we could find, so none is pinned: pass ``--sha256 HEX`` to pin
one; whatever was used is recorded (url + sha256) in the manifest, and the known md5 (Urban100, as
published by deepinv) is checked. The image count is always checked.

The download is the DIV2K one (:func:`srtool.prepare.download.download`: resumable, length-checked,
a failed file moved aside). Images are then read from the archive by their full expected path with
the archive guards of :mod:`srtool.prepare.archive` and written (atomically) to
``OUT/downloads/<NAME>_HR/``, which :func:`srtool.prepare.run_benchmark` prepares into ``OUT/HR`` and
``OUT/LR_bicubic/X{s}`` like any folder. Manga109 is not redistributable and has no download.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import sha256_file, write_bytes_atomic
from ..errors import UserError
from .archive import read_images
from .download import DownloadError, check_mirror, download, move_aside
from .paths import data_dir

_HF = "https://huggingface.co/datasets/eugenesiow"


@dataclass(frozen=True)
class BenchmarkSet:
    name: str
    url: str | None
    folder: str  # the images' folder inside the archive
    count: int
    licence: str
    origin: str
    md5: str | None = None  # an integrity pin published by a third party (deepinv), where one exists

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else ""


BENCHMARK_SETS: dict[str, BenchmarkSet] = {s.name: s for s in (
    BenchmarkSet("Set5", f"{_HF}/Set5/resolve/main/data/Set5_HR.tar.gz", "Set5_HR", 5,
                 "research use; no licence stated by the authors",
                 "Bevilacqua et al., BMVC 2012"),
    BenchmarkSet("Set14", f"{_HF}/Set14/resolve/main/data/Set14_HR.tar.gz", "Set14_HR", 14,
                 "research use; no licence stated by the authors",
                 "Zeyde et al., Curves and Surfaces 2010"),
    BenchmarkSet("B100", f"{_HF}/BSD100/resolve/main/data/BSD100_HR.tar.gz", "BSD100_HR", 100,
                 "Berkeley Segmentation Dataset terms: non-commercial research and education",
                 "Martin et al., ICCV 2001 (BSD300 test split)"),
    BenchmarkSet("Urban100", f"{_HF}/Urban100/resolve/main/data/Urban100_HR.tar.gz", "Urban100_HR", 100,
                 "research use; no licence stated by the authors",
                 "Huang et al., CVPR 2015", md5="65d9d84a34b72c6f7ca1e26a12df1e4c"),
    BenchmarkSet("Manga109", None, "", 109,
                 "academic use only, on request (http://www.manga109.org/en/download.html); not redistributable",
                 "Matsui et al., MTAP 2017"),
)}


def benchmark_set(name: str) -> BenchmarkSet:
    for key, entry in BENCHMARK_SETS.items():
        if key.lower() == name.strip().lower() or (key == "B100" and name.strip().lower() == "bsd100"):
            return entry
    raise UserError(f"--download {name!r}: unknown benchmark set; choose from {', '.join(BENCHMARK_SETS)}")


def fetch_benchmark_set(
    name: str,
    out: Path | None = None,
    *,
    source: Path | None = None,
    sha256: str | None = None,
    mirror: str | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Download (or take ``source``) and unpack set ``name``. Returns (HR folder, provenance for the manifest)."""
    entry = benchmark_set(name)
    out = Path(out).expanduser() if out is not None else data_dir() / entry.name
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise UserError(f"--sha256 {sha256!r}: expected 64 hex digits")
    if mirror:
        check_mirror(mirror)
    if source is None and entry.url is None:
        raise UserError(f"{entry.name} cannot be downloaded: {entry.licence}; once you have the HR images, run "
                        f"srtool prepare benchmark HR_FOLDER --out {out}")
    if source is not None:
        archive = Path(source).expanduser()
        if not archive.is_file():
            raise UserError(f"--source {archive}: not a file (give the {entry.filename or 'HR'} archive)")
        url = None
    else:
        url = f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url
        archive = out / "downloads" / entry.filename
        if not archive.is_file():
            try:
                download(url, archive, sha256=sha256, on_progress=on_progress)
            except DownloadError as exc:
                if "mismatch" in str(exc) or "moved" in str(exc):
                    raise
                raise UserError(f"{exc}; offline? download it by hand and give it with --source FILE") from None
    digest = sha256_file(archive)
    problem = None
    if sha256 and digest != sha256.lower():
        problem = f"sha256 mismatch (expected {sha256.lower()}, got {digest})"
    elif entry.md5 and source is None and hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest() != entry.md5:
        problem = f"md5 mismatch (expected the published {entry.md5})"
    try:
        if problem:
            raise UserError(f"{archive}: {problem}")
        images = read_images(archive, entry.folder or f"{entry.name}_HR")
        if len(images) != entry.count:
            raise UserError(f"{archive}: expected {entry.count} images in {entry.folder}/, found {len(images)}")
    except UserError as exc:
        if source is None:  # our download: move it aside so the next run fetches it afresh
            bad = move_aside(archive)
            raise UserError(f"{exc} -- the download was moved aside to {bad}") from None
        raise
    hr_dir = out / "downloads" / f"{entry.name}_HR"
    if hr_dir.is_dir():  # srtool's own unpack folder: drop images an earlier, different archive left
        for old in hr_dir.iterdir():
            if old.is_file() and old.name not in images:
                old.unlink()
    for base, data in sorted(images.items()):
        target = hr_dir / base
        if not (target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data):
            write_bytes_atomic(target, data)
    provenance = {"benchmark": entry.name, "archive": str(archive.resolve()), "sha256": digest,
                  "licence": entry.licence, "origin": entry.origin, **({"url": url} if url else {})}
    return hr_dir, provenance
