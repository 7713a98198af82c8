"""The score cache of ``srtool sweep report`` (``SWEEP_DIR/report-cache.json``): nothing unchanged is scored twice.

Scoring every point's export on the evaluation sets is the slow part of a report (minutes per point on
DIV2K-valid), and a report is asked for again and again while a sweep grows. Each score is therefore
stored under a *key* that holds everything that can change its numbers:

- the model: the sha256 of the export file (its content, not its name or date). Hashing is skipped
  when the file's size, mtime_ns and inode equal the ones recorded with its hash (git's index does
  the same), so an unchanged sweep hashes nothing; a file that was touched is hashed again and, its
  bytes being the same, keeps its scores; a retrained or replaced export gets new ones;
- the dataset: its resolved folder, scale, LR source and every HR/LR file (resolved path, size, mtime_ns);
- how it is scored: protocol, metrics, the LPIPS network and its backbone file (when LPIPS is chosen),
  the device type (CUDA and CPU kernels differ in the last bits), ``--tile``, the srtool version and
  the cache format.

The figures are kept the same way: ``curves.png`` and ``comparison.png`` are drawn again only when
their inputs changed or the file is not the one the cache recorded (deleted, edited).

The file is written atomically (:func:`srtool.atomic.write_text_atomic`), so an interrupted or a
concurrent report leaves the previous cache or a complete new one, never half of one. A cache that
cannot be read, is not JSON, or is another program's is ignored (every point is scored again and
the file rewritten); an entry that does not fit its dataset is scored again. Entries of exports no
longer in the sweep are dropped on writing, so the file stays the size of the sweep.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .atomic import sha256_file, write_text_atomic
from .eval_results import DatasetResult, ImageResult

CACHE_NAME = "report-cache.json"
CACHE_SCHEMA = "srtool-sweep-report-cache/1"
_NUMBERS = tuple(f.name for f in dataclasses.fields(ImageResult) if f.name not in ("name", "error"))


def file_state(path: str | os.PathLike) -> list[int] | None:
    """[size, mtime_ns, inode] of a file (links followed), or None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def export_key(path: str | os.PathLike) -> str:
    """How the cache names an export file (absolute and normalised: ``../sweep/x`` and ``sweep/x`` agree)."""
    return os.path.abspath(path)


@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """sha256 of srtool's own code and data files (the bundled weights aside): a score computed by other code
    (a metric, the resize, the engine fixed) is not served again, whatever ``__version__`` says."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and p.suffix in (".py", ".npz", ".toml", ".json")
                       and "__pycache__" not in p.parts and "weights" not in p.relative_to(package).parts):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def digest(document: Any) -> str:
    """sha256 of a JSON document in canonical form (sorted keys): the cache's keys."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_id(path: Path) -> list[Any]:
    state = file_state(path)
    return [os.path.realpath(path), *(state[:2] if state else [None, None])]


def dataset_identity(dataset) -> dict[str, Any]:
    """What of a :class:`srtool.evaluate.Dataset` decides its scores: folder, scale, LR source, every file."""
    return {
        "path": os.path.realpath(dataset.path), "scale": dataset.scale, "lr_source": dataset.lr_source,
        "pairs": [[p.name, _file_id(p.hr_path), _file_id(p.lr_path) if p.lr_path is not None else None]
                  for p in dataset.pairs],
    }


def scoring_context(protocol: str, metrics: tuple[str, ...], device_type: str, tile: int | None,
                    lpips_net: str, lpips_weights: str | Path | None) -> dict[str, Any]:
    """Everything but the model and the dataset that can move a score."""
    from . import __version__

    context: dict[str, Any] = {"format": CACHE_SCHEMA, "srtool": __version__, "code": code_revision(),
                               "protocol": protocol, "metrics": list(metrics), "device": device_type, "tile": tile}
    if "lpips" in metrics:
        from .perceptual import LPIPS_NETS, LPIPS_WEIGHTS_ENV, backbone_path

        path = backbone_path(lpips_net, lpips_weights) if lpips_net in LPIPS_NETS else None  # else Scorer refuses it
        # torchvision's cached backbone is named by its hash and checked when downloaded: its path is its
        # identity (its state would change when the first report downloads it); a user's file is stat'd
        own = lpips_weights is not None or bool(os.environ.get(LPIPS_WEIGHTS_ENV))
        context["lpips"] = {"net": lpips_net, "backbone": (_file_id(path) if own else os.path.realpath(path))
                            if path is not None else None}
    return context


def _image_from(doc: Any, name: str) -> ImageResult:
    """One cached image result, checked field by field (a damaged entry raises ValueError)."""
    if not isinstance(doc, dict) or doc.get("name") != name or set(doc) != {"name", "error", *_NUMBERS}:
        raise ValueError("not an image result")
    for key in _NUMBERS:
        value = doc[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{key} is not a number")
    if doc["error"] is not None and not isinstance(doc["error"], str):
        raise ValueError("error is not text")
    return ImageResult(**{key: (float(v) if key in _NUMBERS and v is not None else v) for key, v in doc.items()})


class ReportCache:
    """The cache of one sweep folder: export hashes, scores and the figures' inputs."""

    def __init__(self, sweep_dir: Path, use: bool = True):
        self.path = Path(sweep_dir) / CACHE_NAME
        self.hashes: dict[str, dict[str, Any]] = {}  # export path -> {"state": [size, mtime_ns, ino], "sha256"}
        self.scores: dict[str, dict[str, Any]] = {}  # key -> {"model": sha256, "images": [...], "metric_sources"}
        self.outputs: dict[str, dict[str, Any]] = {}  # "curves.png" -> {"key", "state", ...}
        self.problem: str | None = None  # why an existing cache file was ignored
        if use:
            self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.problem = f"{self.path}: unreadable ({type(exc).__name__}), ignored"
            return
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("schema") != CACHE_SCHEMA:
                raise ValueError("not an srtool sweep report cache")
            hashes, scores, outputs = doc["hashes"], doc["scores"], doc["outputs"]
            if not all(isinstance(part, dict) for part in (hashes, scores, outputs)):
                raise ValueError("damaged")
        except (ValueError, KeyError, RecursionError):
            self.problem = f"{self.path}: not a report cache of this srtool version (or damaged), ignored"
            return
        self.hashes, self.scores, self.outputs = hashes, scores, outputs

    # ----------------------------------------------------------------------------------- exports

    def sha256(self, path: Path) -> str:
        """The export's sha256: the recorded one while its size, mtime_ns and inode are unchanged."""
        key = export_key(path)
        state = file_state(path)
        known = self.hashes.get(key)
        if isinstance(known, dict) and known.get("state") == state and isinstance(known.get("sha256"), str):
            return known["sha256"]
        sha = sha256_file(path)
        if file_state(path) == state:  # not rewritten while it was read: the hash belongs to this state
            self.hashes[key] = {"state": state, "sha256": sha}
        return sha

    # ------------------------------------------------------------------------------------ scores

    def results(self, key: str, dataset, model_label: str, model_identity: str, protocol: str) -> DatasetResult | None:
        """The cached result of one model on one dataset, or None (absent, or not fitting the dataset)."""
        entry = self.scores.get(key)
        if not isinstance(entry, dict) or entry.get("model") != model_identity:
            return None
        images = entry.get("images")
        if not isinstance(images, list) or len(images) != len(dataset.pairs):
            return None
        try:
            parsed = [_image_from(doc, pair.name) for doc, pair in zip(images, dataset.pairs)]
        except ValueError:
            return None
        return DatasetResult(dataset.name, str(dataset.path), dataset.scale, protocol, model_label, model_identity,
                             dataset.lr_source, parsed)

    def metric_sources(self, key: str) -> dict[str, str]:
        entry = self.scores.get(key)
        sources = entry.get("metric_sources") if isinstance(entry, dict) else None
        return {str(k): str(v) for k, v in sources.items()} if isinstance(sources, dict) else {}

    def store(self, key: str, result: DatasetResult, metric_sources: dict[str, str]) -> None:
        self.scores[key] = {"model": result.model_identity, "metric_sources": dict(metric_sources),
                            "images": [dataclasses.asdict(image) for image in result.images]}

    # ----------------------------------------------------------------------------------- figures

    def output(self, name: str, key: str) -> dict[str, Any] | None:
        """The record of ``SWEEP_DIR/name`` when it is the file drawn from ``key`` (else None: draw it)."""
        record = self.outputs.get(name)
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        state = file_state(self.path.parent / name)
        return record if state is not None and record.get("state") == state else None

    def record_output(self, name: str, key: str, **extra: Any) -> None:
        self.outputs[name] = {"key": key, "state": file_state(self.path.parent / name), **extra}

    # ------------------------------------------------------------------------------------- write

    def save(self, models: set[str], exports: set[str]) -> None:
        """Write the cache (atomically), keeping only what the sweep's current ``exports`` (paths) and
        their ``models`` (sha256s) can use."""
        hashes = {path: record for path, record in self.hashes.items() if path in exports}
        scores = {key: entry for key, entry in self.scores.items()
                  if isinstance(entry, dict) and entry.get("model") in models}
        doc = {"schema": CACHE_SCHEMA, "hashes": hashes, "scores": scores, "outputs": self.outputs}
        try:
            write_text_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
        except OSError as exc:  # the report itself stands; the next one scores again
            self.problem = f"{self.path}: not written ({exc.strerror or exc}); the next report scores again"
