"""``srtool prepare``: MATLAB-exact bicubic datasets (test sets, training sets, DIV2K) and training stores.

Python API (the CLI is a thin layer over it):

* :func:`prepare_benchmark` -- HR test images -> ``HR/`` + ``LR_bicubic/X{s}/`` + ``manifest.json``;
* :func:`prepare_folder` -- folders of HR images -> the same plus a training ``store/``;
  both return the output folder; :func:`run_benchmark` / :func:`run_folder` return a :class:`PrepareResult`
  (counts, skipped inputs, per-stage timings) instead;
* :func:`prepare_div2k` -- download (resumable, verified) or read DIV2K, then both splits;
* :class:`TrainingStore` -- memory-mapped sub-images of a prepared training set;
* :func:`data_dir`, :func:`resolve_dataset` -- where prepared datasets live and name lookup.
"""

from __future__ import annotations

from .div2k import prepare_div2k
from .paths import DATASET_NAMES, data_dir, dataset_dir, resolve_dataset
from .pipeline import PrepareResult, prepare_benchmark, prepare_folder, run_benchmark, run_folder
from .store import TrainingStore, tile_grid

__all__ = [
    "DATASET_NAMES",
    "PrepareResult",
    "TrainingStore",
    "data_dir",
    "dataset_dir",
    "prepare_benchmark",
    "prepare_div2k",
    "prepare_folder",
    "resolve_dataset",
    "run_benchmark",
    "run_folder",
    "tile_grid",
]
