"""Run-directory state checked before it is trusted: ``run.json``, the recorded paths, checkpoints.

Rule: a user error (a damaged or hand-edited file, a path that moved) is one line naming the file or
field; a damaged run is never silently restarted from scratch and never loses a good checkpoint.

* ``run.json`` must be a JSON object with a ``data`` list; every path in it is absolute, and files
  carry their sha256 (``*_sha256``), so ``--resume`` works from any working directory and notices a
  VGG19 or ``--init-from`` file that changed under the run.
* A checkpoint is validated completely (keys, tensor shapes against the networks being built,
  optimiser state, RNG states) before anything is loaded from it; a damaged one is set aside as
  ``NAME.damaged`` (kept, never deleted) and the newest good one is used.
* ``--resume`` on a run whose ``checkpoints/`` is gone refuses unless ``--restart``, which moves the old
  exports and log aside under a dated name before training starts again.
* A full disk while checkpointing becomes "disk full at PATH, free N MB and --resume".
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import close_lock_fd, open_lock_fd, sha256_file
from ..errors import UserError

#: What ``--restart`` moves aside (kept under a dated name) before a run starts again from iteration 0.
RESTART_KEEP = ("checkpoints", "exports", "log.jsonl", "curves.png", "tensorboard")


# ------------------------------------------------------------------------------------ recorded paths


def record_path(spec: str | None, keywords: tuple[str, ...] = (), hash_file: bool = True) -> tuple[str | None, str | None]:
    """(absolute path, sha256 if a file) of a user-given path; keywords (``imagenet``, a model name that
    is not a path) are kept as given with no hash."""
    if spec is None:
        return None, None
    if spec in keywords:
        return spec, None
    path = Path(spec).expanduser()
    if not path.exists():
        return spec, None  # not a path (e.g. a named model); the loader reports it if it is wrong
    path = path.resolve()
    return str(path), sha256_file(path) if path.is_file() and hash_file else None


def init_weights_file(spec: str | None) -> str | None:
    """``--init-from`` as a run uses and records it: a run directory stands for the export file it holds
    now. The run may go on training (a new best export), and ``run.json``, the exports' provenance and
    ``--restart`` must name, and hash, the weights this run really started from."""
    if spec and Path(spec).expanduser().is_dir():
        from ..model_files import weights_in

        return str(weights_in(Path(spec).expanduser()))
    return spec


def weights_record(vgg_spec: str | None, run_info: Mapping[str, Any]) -> dict[str, Any]:
    """``{"vgg_weights": {source, path, sha256}, "init_from": {path, sha256}}`` for exports and run.json:
    which VGG19 file the perceptual loss really used (torchvision's cached file for ``imagenet``)."""
    record: dict[str, Any] = {}
    if vgg_spec is not None:
        if vgg_spec == "imagenet":
            from ..models.vgg import TORCHVISION_VGG19_FILE

            file = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG19_FILE
            path = str(file) if file.is_file() else None
        else:
            path = None if vgg_spec == "random" else str(Path(vgg_spec).expanduser().resolve())
        known = run_info.get("vgg_weights_sha256") if path and path in (run_info.get("vgg_weights"),
                                                                          run_info.get("vgg_weights_file")) else None
        digest = known or (sha256_file(path) if path and Path(path).is_file() else None)
        record["vgg_weights"] = {"source": vgg_spec if vgg_spec in ("imagenet", "random") else "file",
                                 "path": path, "sha256": digest}
    if run_info.get("init_from"):
        record["init_from"] = {"path": run_info["init_from"], "sha256": run_info.get("init_from_sha256")}
    return record


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory, checked to be what srtool wrote (an object with a data list)."""
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object, found a {type(info).__name__}; the run's record is damaged")
    data = info.get("data")
    if not isinstance(data, list) or not data or not all(isinstance(p, str) and p for p in data):
        what = "lacks 'data'" if "data" not in info else "'data' must be a non-empty list of folder paths"
        raise UserError(f"{path}: {what}; the run's record is damaged")
    for key in ("init_from", "vgg_weights"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise UserError(f"{path}: '{key}' must be a path string or null")
    return info


def check_recorded_paths(run_dir: Path, info: Mapping[str, Any], check_vgg: bool = True, check_init: bool = False) -> None:
    """Every path ``run.json`` recorded must still exist (and a recorded file still hash the same)."""
    where = Path(run_dir) / "run.json"
    for folder in info["data"]:
        if not Path(folder).is_dir():
            raise UserError(f"{where}: the recorded training data folder {folder} is missing; restore it there")
    checks = [("vgg_weights", "--vgg-weights")] if check_vgg else []
    if check_init:
        checks.append(("init_from", "--init-from"))
    for key, option in checks:
        value, digest = info.get(key), info.get(f"{key}_sha256")
        if value is None or not Path(value).is_absolute():
            continue  # a keyword (imagenet, random, a named model)
        if not Path(value).exists():
            raise UserError(f"{where}: the recorded {option} {value} is missing; restore it there"
                            + (" or pass --vgg-weights FILE" if key == "vgg_weights" else ""))
        if digest and Path(value).is_file() and sha256_file(value) != digest:
            raise UserError(f"{where}: the recorded {option} {value} has changed since the run started "
                            f"(sha256 {digest[:12]}... expected); restore the original file")


def validation_folders(run_dir: Path, info: dict[str, Any], datasets: list[str], scale: int) -> list[Path]:
    """The folders of ``validation.datasets``. One given as a path (``Set5mini``, ``../val``) is recorded in
    ``run.json`` absolute at the start (``validation_folders``) and used from there on ``--resume``: the
    preset keeps it as typed, which from another working directory names no folder, or another one, so
    the resumed run would validate, and pick its best export, on different images. A known name
    (``Set5``) stays a name, resolved in srtool's data folder."""
    from ..prepare.paths import given_dataset_folder, resolve_dataset

    recorded = dict(info.get("validation_folders") or {})
    folders = []
    for name in datasets:
        if isinstance(recorded.get(name), str):
            folder = Path(recorded[name])
            if not folder.is_dir():
                raise UserError(f"{Path(run_dir) / 'run.json'}: the recorded validation dataset {name!r} "
                                f"({folder}) is missing; restore it there")
        else:
            folder = resolve_dataset(name, scale)
            if given_dataset_folder(name) is not None and "validation_folders" not in info:  # a new run
                recorded[name] = str(folder.resolve())
        folders.append(folder)
    if recorded and "validation_folders" not in info:
        info["validation_folders"] = recorded
    return folders


# --------------------------------------------------------------------------------- run directory


def restart_aside(run_dir: Path, warn: Callable[[str], None]) -> list[Path]:
    """``--restart``: keep the old exports and log under a dated name; returns the new names."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in RESTART_KEEP:
        path = Path(run_dir) / name
        if not path.exists():
            continue
        stem, dot, suffix = name.partition(".")
        target = path.with_name(f"{stem}.{stamp}{dot}{suffix}")
        n = 1
        while target.exists():
            target = path.with_name(f"{stem}.{stamp}-{n}{dot}{suffix}")
            n += 1
        path.rename(target)
        moved.append(target)
    if moved:
        warn(f"--restart: kept the previous attempt's {', '.join(p.name for p in moved)} in {run_dir}")
    return moved


def check_resumable(run_dir: Path, checkpoints: list[Path], checkpoint_dir: Path, restart: bool) -> None:
    """Refuse ``--resume`` when the checkpoints are gone, unless the user asked to ``--restart``.

    A run killed before its first checkpoint (an empty ``checkpoints/``, no ``last`` export: every
    checkpoint writes one) has nothing to lose and starts again; a best export its validations wrote
    meanwhile is kept aside then (:meth:`Trainer._reconcile_exports`). One whose checkpoints were deleted
    would lose its exports and log."""
    if restart or checkpoints:
        return
    exported = (Path(run_dir) / "exports" / "last.safetensors").exists()
    if checkpoint_dir.is_dir() and not exported:
        return
    what = "checkpoints folder" if not checkpoint_dir.is_dir() else "checkpoint files (iter_*.pt) in"
    raise UserError(
        f"--resume {run_dir}: its {what} {checkpoint_dir} is missing, so the run cannot continue; "
        "restore it, or pass --restart to train again from iteration 0 keeping the old exports and log aside"
    )


# ------------------------------------------------------------------------------------ checkpoints


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be used; the message says why."""


def _check_tensors(name: str, got: Any, want: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(got, Mapping):
        raise DamagedCheckpoint(f"'{name}' is a {type(got).__name__}, not a state dict")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        detail = (f"missing {missing[:3]}" if missing else "") + (", " if missing and extra else "") + \
                 (f"unexpected {extra[:3]}" if extra else "")
        raise DamagedCheckpoint(f"'{name}' does not match the run's architecture ({detail})")
    for key, ref in want.items():
        value = got[key]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise DamagedCheckpoint(f"'{name}.{key}' has shape {shape}, the run's architecture needs {tuple(ref.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DamagedCheckpoint(f"'{name}.{key}' holds NaN or inf values")


def _check_optimizer(name: str, got: Any, net: nn.Module) -> None:
    if not isinstance(got, Mapping) or not isinstance(got.get("state"), Mapping) or not isinstance(got.get("param_groups"), list):
        raise DamagedCheckpoint(f"'{name}' is not an optimiser state")
    params = list(net.parameters())
    ids = [i for g in got["param_groups"] if isinstance(g, Mapping) for i in g.get("params", [])]
    if len(ids) != len(params):
        raise DamagedCheckpoint(f"'{name}' holds {len(ids)} parameters, the run's network has {len(params)}")
    for slot, param in zip(ids, params):
        for key, value in (got["state"].get(slot) or {}).items():
            if key != "step" and isinstance(value, torch.Tensor) and value.shape != param.shape:
                raise DamagedCheckpoint(f"'{name}' state {key} of parameter {slot} has shape {tuple(value.shape)}, "
                                        f"expected {tuple(param.shape)}")


def _check_rng(rng: Any) -> None:
    """Each RNG state must be accepted by a *private* generator of its kind (the globals stay untouched)."""
    if not isinstance(rng, Mapping) or not {"python", "numpy", "torch"} <= set(rng):
        raise DamagedCheckpoint("'rng' lacks the python/numpy/torch generator states")
    try:
        version, internal, gauss = rng["python"]
        random.Random().setstate((int(version), tuple(int(v) for v in internal), gauss))
        n = rng["numpy"]
        np.random.RandomState().set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        torch.Generator().set_state(rng["torch"])
    except Exception as exc:  # any malformed piece: wrong types, sizes, values
        raise DamagedCheckpoint(f"'rng' holds an invalid generator state ({type(exc).__name__}: {str(exc)[:80]})") from None


def validate_checkpoint(state: Mapping[str, Any], networks: Mapping[str, nn.Module | None]) -> None:
    """Raise :class:`DamagedCheckpoint` unless ``state`` can resume a run with these networks.

    ``networks``: ``generator``, ``ema`` and (GAN stage) ``discriminator``; nothing is modified.
    """
    iteration = state.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise DamagedCheckpoint(f"'iteration' is {iteration!r}, expected a non-negative integer")
    for name, net in networks.items():
        if net is None:
            continue
        if name not in state:
            raise DamagedCheckpoint(f"lacks '{name}'")
        _check_tensors(name, state[name], net.state_dict())
    for opt, net_name in (("optimizer_g", "generator"), ("optimizer_d", "discriminator")):
        if networks.get(net_name) is not None:
            _check_optimizer(opt, state.get(opt), networks[net_name])
    for sched, net_name in (("scheduler_g", "generator"), ("scheduler_d", "discriminator")):
        if networks.get(net_name) is not None and not (isinstance(state.get(sched), Mapping) and "last_epoch" in state[sched]):
            raise DamagedCheckpoint(f"'{sched}' is not a scheduler state")
    skipped = state.get("skipped_steps", 0)
    if not isinstance(skipped, int) or skipped < 0:
        raise DamagedCheckpoint(f"'skipped_steps' is {skipped!r}, expected a non-negative integer")
    best = state.get("best")
    if best is not None and not (isinstance(best, Mapping) and isinstance(best.get("score"), (int, float))):
        raise DamagedCheckpoint("'best' is not a validation record (with a numeric score)")
    data = state.get("data")
    if not isinstance(data, Mapping) or not {"global_batch", "fingerprint"} <= set(data):
        raise DamagedCheckpoint("'data' lacks the batch size and data fingerprint")
    _check_rng(state.get("rng"))


def newest_good_checkpoint(paths: list[Path], load: Callable[[Path], dict[str, Any]],
                           validate: Callable[[dict[str, Any]], None], warn: Callable[[str], None],
                           set_aside: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint of ``paths`` (oldest first) that loads and validates; damaged newer ones are
    renamed ``NAME.damaged`` (kept for inspection) with a warning. Raises if all are damaged."""
    damaged: list[str] = []
    for path in reversed(paths):
        try:
            state = load(path)
            validate(state)
        except (UserError, DamagedCheckpoint) as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            damaged.append(f"{path.name} ({reason})")
            aside = path.with_name(path.name + ".damaged")
            if set_aside:  # only rank 0 renames; a renamed file is no longer a numbered checkpoint
                path.rename(aside)
            warn(f"checkpoint {path} is damaged ({reason}); kept as {aside.name}")
            continue
        if damaged:
            warn(f"resuming from the newest good checkpoint {path} (iteration {state['iteration']})")
        return path, state
    if damaged:
        raise UserError(
            f"no usable checkpoint in {paths[0].parent}: {'; '.join(damaged)}. Restore a good one, or pass --restart "
            "to train again from iteration 0 keeping the old exports and log aside"
        )
    return None


# ------------------------------------------------------------------- files of a discarded timeline


def export_iteration(path: Path) -> int | None:
    """The training iteration an export records (its ``iterations``), or None where it cannot tell (an
    export of an older srtool, a damaged header): such a file is left as it is."""
    from ..model_files import read_export_metadata

    try:
        doc = read_export_metadata(path)
    except UserError:
        return None
    value = (doc or {}).get("iterations")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def set_aside_discarded(path: Path, iteration: int | None) -> Path:
    """Rename ``best.safetensors`` (with its ``.json``) or ``best.pt`` to ``best.discarded-iterN...``: kept for
    inspection, no longer what a run directory's export or best checkpoint names. Returns the new name."""
    stem = f"{path.stem}.discarded" + (f"-iter{iteration}" if iteration is not None else "")
    target, n = path.with_name(stem + path.suffix), 1
    while target.exists():
        target, n = path.with_name(f"{stem}-{n}{path.suffix}"), n + 1
    path.rename(target)
    sidecar = path.with_suffix(".json")
    if path.suffix == ".safetensors" and sidecar.exists():
        sidecar.rename(target.with_suffix(".json"))
    return target


# -------------------------------------------------------------------------------- loader errors


def loader_errors(loader: Iterable, stores: list) -> Iterator:
    """Iterate ``loader``; an error in a worker process becomes one line, not a worker traceback.

    A UserError raised in a worker (a store file that cannot be read) comes back wrapped with the worker's
    traceback: keep its own message. A worker that died (SIGBUS on a store file truncated while mapped)
    sends the stores through their full check, which names the damaged file."""
    try:
        yield from loader
    except UserError as exc:
        text = str(exc)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.splitlines() if line.strip()][-1]
        raise UserError(last.split("UserError: ", 1)[-1].strip()) from None
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        from ..prepare.store import TrainingStore

        for store in stores:
            if isinstance(store, TrainingStore):
                TrainingStore.open(store.store_dir, store.scale, verify=True)
        raise


# ------------------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def disk_full_guard(path: Path, needed_bytes: int, run_dir: Path) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT while writing ``path`` into one line: where, how much to free, what next."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        mb = max(1, -(-int(needed_bytes) // (1 << 20)))
        raise UserError(f"disk full at {path}, free {mb} MB and --resume {run_dir}") from None


def state_nbytes(obj: Any) -> int:
    """Bytes of tensor data in a (nested) state: what a checkpoint of it needs on disk, roughly."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


# ------------------------------------------------------------------------------------------- run lock


class RunLock:
    """One ``srtool train`` per run directory at a time: an exclusive ``flock`` on the directory itself
    (no file is added to the run; the kernel drops the lock when the holder dies, so a killed run never
    leaves a stale lock). A second process resuming, overwriting or extending the same run would
    otherwise train next to the first: both write the same checkpoints and exports, and each rewrites
    ``log.jsonl`` under the other, whose records are then lost. (Windows: no flock, no lock.)"""

    def __init__(self, run_dir: Path):
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        fd = open_lock_fd(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            close_lock_fd(fd)
            raise UserError(f"{run_dir}: another srtool train is training in this run directory; wait for it "
                            "to finish or stop it first") from None
        except OSError:  # a file system without flock on a directory (NFS emulates it, EBADF/ENOLCK): no lock
            close_lock_fd(fd)
            return
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            close_lock_fd(self._fd)  # releases the lock (in a forked DataLoader worker: nothing)
            self._fd = None

    __del__ = close  # a Trainer that failed while setting up releases the run at once
