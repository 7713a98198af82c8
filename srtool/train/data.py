"""Training data: aligned random HR/LR crops whose order is a pure function of (seed, iteration).

Why keyed sampling instead of a shuffling DataLoader: every sample of iteration ``it`` has a *global
position* ``p = it * global_batch + rank * batch + j``. Position ``p`` picks sub-image
``perm_e[p mod N]`` (``perm_e`` = a permutation of the N usable sub-images seeded by ``(seed, e)``,
``e = p div N``) and draws its crop window and its flip/rotation from a generator seeded by
``(seed, p)``. Nothing depends on worker count, worker scheduling or a generator's history, so:

* ``--resume`` only needs the iteration number to continue with exactly the same batches;
* under DDP, rank ``r`` takes positions ``[r * b, (r + 1) * b)`` of each iteration's global batch: the
  data is sharded per rank and ``N`` processes at batch ``b`` see the same samples as one at ``N * b``.

Samples are uint8 CHW tensors (4x fewer bytes through worker pipes and host-to-device copies than
float); the engine converts them to float on the device.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..threads import usable_cores

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
_PERM_TAG, _CROP_TAG = 0x5E9, 0xC209  # domain separation of the two seeded streams


def warn_stderr(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


class CropSource:
    """The usable sub-images of one or more training stores (those at least ``hr_crop`` on each side)."""

    def __init__(self, stores: list, labels: list[str], hr_crop: int, scale: int,
                 warn: Callable[[str], None] = warn_stderr):
        self.stores = stores
        self.labels = labels
        self.hr_crop = hr_crop
        self.scale = scale
        rows: list[tuple[int, int]] = []
        skipped: list[str] = []
        fits = 0  # the largest crop (a multiple of the scale) some sub-image could give (for the advice below)
        for si, store in enumerate(stores):
            for i in range(len(store)):
                h, w = store.hr(i).shape[:2]
                fits = max(fits, min(h, w) // scale * scale)
                if h < hr_crop or w < hr_crop:
                    name = store.image_name(i) if hasattr(store, "image_name") else str(i)
                    skipped.append(f"{labels[si]}:{name} ({w}x{h})")
                else:
                    rows.append((si, i))
        self.index = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        self.skipped = skipped
        total = sum(len(s) for s in stores)
        if skipped:
            shown = ", ".join(skipped[:5]) + (f", ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
            warn(f"skipped {len(skipped)} of {total} training sub-images smaller than the {hr_crop} px crop: {shown}")
        if not len(self.index):
            lower = f"lower train.hr_crop (--set train.hr_crop={fits} or less) or " if fits >= scale else ""
            raise UserError(
                f"no training sub-image is at least {hr_crop}x{hr_crop} in {', '.join(labels)}: "
                f"{lower}add larger images"
            )

    def __len__(self) -> int:
        return len(self.index)

    def fingerprint(self) -> str:
        """Identifies the sample set, so a resume on different data is noticed."""
        digest = hashlib.sha256(np.ascontiguousarray(self.index).tobytes())
        for label in self.labels:
            digest.update(label.encode())
        return digest.hexdigest()[:16]


class KeyedCropDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by *global sample position* (see the module docstring)."""

    def __init__(self, source: CropSource, seed: int, hflip: bool = True, rot90: bool = True):
        self.source = source
        self.seed = int(seed)
        self.hflip = hflip
        self.rot90 = rot90
        self.lr_crop = source.hr_crop // source.scale
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:  # positions are unbounded; DataLoader only needs the batch sampler's length
        return len(self.source)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, _PERM_TAG, epoch]).permutation(len(self.source))
            self._perm_epoch = epoch
        return self._perm

    def window(self, position: int) -> tuple[int, int, int, int, bool, int]:
        """(store index, sub-image, LR y, LR x, horizontal flip, quarter turns) drawn for ``position``."""
        epoch, offset = divmod(int(position), len(self.source))
        store_index, item = (int(v) for v in self.source.index[self._permutation(epoch)[offset]])
        lr_h, lr_w = self.source.stores[store_index].lr(item).shape[:2]
        rng = np.random.default_rng([self.seed, _CROP_TAG, int(position)])
        c = self.lr_crop
        y, x = int(rng.integers(0, lr_h - c + 1)), int(rng.integers(0, lr_w - c + 1))
        flip, turns = bool(rng.integers(0, 2)), int(rng.integers(0, 4))  # always drawn: the stream stays fixed
        return store_index, item, y, x, flip and self.hflip, turns if self.rot90 else 0

    def sample(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The (LR, HR) uint8 HWC crop pair at ``position``: the LR crop and the HR crop ``scale`` times
        larger at the matching position, with the same flip and rotation."""
        store_index, item, y, x, flip, turns = self.window(position)
        store = self.source.stores[store_index]
        c, s = self.lr_crop, self.source.scale
        lr = store.lr(item)[y : y + c, x : x + c]
        hr = store.hr(item)[y * s : (y + c) * s, x * s : (x + c) * s]
        if flip:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        if turns:
            lr, hr = np.rot90(lr, turns), np.rot90(hr, turns)
        return lr, hr

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.sample(position)
        to_chw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
        return to_chw(lr), to_chw(hr)


class IterationBatchSampler(torch.utils.data.Sampler):
    """Yields, for iterations ``start .. total - 1``, this rank's slice of each global batch of positions."""

    def __init__(self, start: int, total: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start, self.total = start, total
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        for it in range(self.start, self.total):
            base = it * global_batch + self.rank * self.batch_size
            yield list(range(base, base + self.batch_size))


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process handles it (and checkpoints).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_workers(requested: int) -> int:
    """``train.num_workers`` capped at the usable cores: more worker processes than cores only contend
    (and make torch warn at every run). Samples are keyed by position, so the count never changes the data."""
    return min(requested, usable_cores())


def make_loader(dataset: KeyedCropDataset, start: int, total: int, batch_size: int, num_workers: int,
                rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    num_workers = loader_workers(num_workers)
    sampler = IterationBatchSampler(start, total, batch_size, rank, world_size)
    extra = {"prefetch_factor": 4, "worker_init_fn": _ignore_sigint} if num_workers > 0 else {}
    # A private generator: creating the loader's iterator draws a worker base seed, which must not
    # advance the global torch RNG (a resumed run creates one iterator more than an uninterrupted one).
    generator = torch.Generator().manual_seed(dataset.seed)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory, generator=generator, **extra
    )


# ------------------------------------------------------------------------------------- data sources


def _is_prepared(path: Path) -> bool:
    return (path / "store" / "index.json").is_file() or (path / "index.json").is_file()


def _folder_key(folder: Path, scale: int) -> str:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"--data {folder}: neither a prepared dataset (no store/index.json) nor a folder of images")
    digest = hashlib.sha256(f"{folder.resolve()}|x{scale}".encode())
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def default_cache_dir() -> Path:
    import platformdirs

    override = os.environ.get("SRTOOL_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("srtool", appauthor=False))


def check_data_paths(paths: list[Path]) -> None:
    """Cheap checks run before anything heavy."""
    if not paths:
        raise UserError("--data: give at least one prepared dataset folder (srtool prepare) or a folder of HR images")
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(f"--data {path}: no such folder")


def check_distinct_data(given: list[str | Path]) -> None:
    """Refuse a training set given twice, whatever the spelling (``t``, ``./t``, ``t/``, an absolute path, a
    link to it, a prepared set's ``store/`` folder): its samples would silently count twice. Run on the
    user's spellings as typed (before they are resolved), so that the message names both."""
    from ..prepare.store import store_folder

    seen: dict[tuple[int, int], str] = {}
    for spelling in map(str, given):
        path = Path(spelling).expanduser()
        read = store_folder(path) if _is_prepared(path) else path  # the folder training reads
        try:
            st = os.stat(read)
        except OSError:
            continue  # a missing folder: check_data_paths names it
        first = seen.get((st.st_dev, st.st_ino))
        if first is not None:
            alias = "" if first == spelling else f" (also as {first})"
            raise UserError(f"--data {spelling}: given twice{alias}; give each training set once")
        seen[(st.st_dev, st.st_ino)] = spelling


def _prepare_into_cache(path: Path, target: Path, scale: int, workers: int | None, progress: bool,
                        hint: str) -> None:
    """Prepare the plain image folder ``path`` into the cache folder ``target``, once: another training on
    the same folder (a sweep with --jobs 2, a second run) may be preparing it now; wait for it and use its
    result, instead of failing on prepare's --out lock."""
    from ..atomic import waiting_lock
    from ..prepare import prepare_folder

    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--data {path}: cannot create the cache folder {target} ({exc.strerror or exc}); {hint}") from None
    with waiting_lock(target / ".srtool-cache.lock", lambda: warn_stderr(
            f"--data {path}: waiting for another srtool that is preparing it into the cache {target}"),
            what="cache lock", hint=hint):
        if not _is_prepared(target):
            warn_stderr(f"--data {path}: a plain image folder; preparing it once into the cache {target}")
            prepare_folder([path], target, scale=scale, workers=workers, skip_bad=True, on_skip=warn_stderr,
                           progress=progress)


def open_stores(paths: list[Path], scale: int, cache_dir: Path | None = None, workers: int | None = None,
                progress: bool = True) -> tuple[list, list[str]]:
    """Open the training store of each ``--data`` folder; a plain folder of HR images is prepared once
    (MATLAB-bicubic LR, via ``srtool.prepare.prepare_folder``) into a cache keyed by its files
    (with a progress bar unless ``progress`` is off: ``train --no-progress``/``-q``)."""
    from ..prepare.store import TrainingStore

    stores, labels = [], []
    for path in map(Path, paths):
        if _is_prepared(path):
            stores.append(TrainingStore.open(path, scale))
        else:
            target = (cache_dir or default_cache_dir()) / "train-folders" / _folder_key(path, scale)
            if not _is_prepared(target):  # a prepared cache is only read: it may be read-only, or shared
                hint = ("give a writable cache_dir" if cache_dir is not None
                        else "set SRTOOL_CACHE_DIR to a writable folder")
                _prepare_into_cache(path, target, scale, workers, progress, hint)
            stores.append(TrainingStore.open(target, scale))
        labels.append(path.name or str(path))
    return stores, labels
