"""Reading state dicts safely, and srtool's own export format.

Only two loaders ever touch a weights file: safetensors, and ``torch.load(weights_only=True)``,
whose restricted unpickler refuses any pickle that would run code. A refused file is one clear
error, never a traceback.

An srtool export is a single ``.safetensors`` file whose header metadata carries, under the key
``srtool``, a JSON document: the generator config (architecture and every hyperparameter, scale
included), plus free-form provenance (preset, iterations, validation scores). A JSON copy of the
same document is written beside it for people. Loading needs only the ``.safetensors`` file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_path, write_text_atomic
from ..errors import UserError
from ..model_files import EXPORT_FORMAT, read_export_metadata
from ..model_files import json_kind as _json_kind



def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's top-level mapping without ever executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    if _is_torchscript(path):
        raise UserError(
            f"{path}: refused to load: a TorchScript archive (compiled code, which runs when loaded), not a weights file; "
            "ask for a state-dict .pth or .safetensors"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: refused to load: PyTorch's safe loader (weights_only) rejected it ({_unpickler_reason(exc)}). "
            "Either it is not a checkpoint, or it pickles Python objects beyond tensors and plain containers, "
            "which could run code; convert a trusted one to .safetensors."
        ) from None
    except Exception as exc:  # truncated zip, a text file, ... (torch raises many types here)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _is_torchscript(path: Path) -> bool:
    """A torch.jit archive: a zip whose top folder holds ``constants.pkl`` or a ``code/`` tree."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.split("/", 1)[-1] == "constants.pkl" or "/code/" in f"/{n}" for n in names)


def _unpickler_reason(exc: Exception) -> str:
    """The informative line of torch's long weights_only error, e.g. 'Trying to load unsupported GLOBAL
    posix.system ...' or 'Unsupported operand 35' (the rest is boilerplate about torch.load's defaults)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for line in str(exc).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(boilerplate):
            return line[:200]
    return type(exc).__name__


def save_export(path: str | Path, network: nn.Module, info: dict[str, Any] | None = None) -> Path:
    """Write ``network`` (which must carry a pydantic ``config``) as an srtool export, atomically."""
    return _write_export(path, network.state_dict(), {"generator": network.config.model_dump(), **(info or {})})


def save_checkpoint_export(path: str | Path, state: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write a community checkpoint's state dict as an srtool export (``info`` must hold
    ``checkpoint``: architecture and scale), atomically."""
    return _write_export(path, state, info)


def _write_export(path: str | Path, state: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    from .. import __version__

    path = Path(path)
    doc = {"format": EXPORT_FORMAT, "srtool_version": __version__, **info}
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"srtool": json.dumps(doc, sort_keys=True)})
    write_text_atomic(path.with_suffix(".json"), json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def load_export(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network described by an srtool export and load its weights (strict).

    An export holds either an srtool generator (``generator``: its config) or, written by ``srtool
    models convert``, a community checkpoint's state dict (``checkpoint``: its architecture and
    scale), which :func:`srtool.loading.load_network` sends through the checkpoint detection instead.
    """
    from .integrity import check_export_table, validate_state_dict
    from .registry import build_network, generator_config_from_dict

    doc = read_export_metadata(path)
    if doc is None:
        raise UserError(f"{path}: a safetensors file without srtool metadata (not an srtool export)")
    generator = doc.get("generator")
    if not isinstance(generator, dict):
        what = "has no 'generator' entry" if generator is None else f"has a 'generator' that is a JSON {_json_kind(generator)}"
        raise UserError(f"{path}: srtool metadata {what} (the architecture to build); a damaged export")
    config = generator_config_from_dict(generator, source=str(path))
    check_export_table(path, config)  # before building anything: a tiny file cannot make us allocate a big network
    state = read_state_dict(path)
    validate_state_dict(state, path)
    network = build_network(config)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not match its metadata ({str(exc).splitlines()[0]})") from None
    return network.eval(), doc

