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



ZIP_EXPANSION_LIMIT = 4  # declared zip contents / file size above which compressed entries are refused (plus 1 MiB)


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's top-level mapping without ever executing pickled code.

    The format is read from the content, not the name (a renamed ``.safetensors`` saved as ``.pth``
    loads; an ONNX graph is named as such), and decoding is guarded against bombs: compressed zip
    entries that would inflate far beyond the file, and tensors addressing more than their data
    (:func:`srtool.models.integrity.check_tensor_extents`).
    """
    from .integrity import check_tensor_extents

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    kind = sniff_weights_format(path)
    if kind == "empty":
        what = "safetensors file" if path.suffix.lower() == ".safetensors" else "PyTorch checkpoint"
        raise UserError(f"{path}: not a readable {what} (it is empty, 0 bytes: an interrupted copy or download?)")
    if kind is not None and kind.startswith("image:"):
        raise UserError(f"{path}: is a {kind[6:]} image, not model weights (to upscale it, give it as an input: "
                        "srtool upscale IMAGE -m MODEL)")
    if kind == "onnx":
        raise UserError(f"{path}: looks like an ONNX model (a compiled graph), not PyTorch weights; srtool loads "
                        ".pth/.pt/.ckpt state dicts and .safetensors files (the model's project usually publishes one)")
    if kind == "safetensors" or (kind is None and path.suffix.lower() == ".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    _check_zip(path)  # also where the zip is not at the start (torch.jit finds archives by their end)
    try:
        with open(path, "rb") as fh:  # a file object: torch.load must not pick a reader from the name either
            obj = torch.load(fh, map_location="cpu", weights_only=True)
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
    check_tensor_extents(obj, path)
    return obj


_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"RIFF", "WebP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)


def sniff_weights_format(path: Path) -> str | None:
    """"safetensors", "zip" (torch.save's format, or TorchScript), "pickle" (torch's legacy format),
    "onnx", "image:FORMAT" (an image given where a model was meant), "empty", or None (unknown), from the
    first bytes."""
    from ..model_files import looks_like_safetensors

    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "empty"
    if looks_like_safetensors(path):
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    for signature, name in _IMAGE_SIGNATURES:
        if head.startswith(signature) and (name != "WebP" or head[8:12] == b"WEBP"):
            return f"image:{name}"
    if head[0] == 0x80:  # pickle protocol 2+ (torch's legacy format starts with a pickled magic number)
        return "pickle"
    # ONNX ModelProto: field 1 (ir_version, a small varint), then producer name / graph / opset fields
    if len(head) > 2 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x3A, 0x42):
        return "onnx"
    return None


def _check_zip(path: Path) -> None:
    """Refuse a TorchScript archive (its code runs when loaded) and a zip bomb (compressed entries that
    would inflate far beyond the file: torch.save stores entries uncompressed), before torch reads it."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return  # torch.load words the damage
    names = [i.filename for i in infos]
    if any(n.split("/", 1)[-1] == "constants.pkl" or "/code/" in f"/{n}" for n in names):
        raise UserError(
            f"{path}: refused to load: a TorchScript archive (compiled code, which runs when loaded), not a weights file; "
            "ask for a state-dict .pth or .safetensors"
        )
    declared = sum(i.file_size for i in infos)
    size = path.stat().st_size
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) and declared > ZIP_EXPANSION_LIMIT * size + (1 << 20):
        raise UserError(
            f"{path}: declares {declared / 2**20:.1f} MiB of data in a {size / 2**10:.0f} KiB file (compressed zip "
            "entries, which torch.save never writes); refused as a possible zip bomb"
        )


def _unpickler_reason(exc: Exception) -> str:
    """The informative part of torch's long weights_only error, e.g. 'Unsupported global: GLOBAL io.open was
    not an allowed global by default' or 'Unsupported operand 35'; never its advice to allow-list the global
    or to load with weights_only=False, which is exactly what must not be done with an untrusted file."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    else:
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
        text = next((ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)), "")
    text = " ".join(text.split()).split(" Please use `torch.serialization")[0].split(" Check the documentation")[0]
    return text[:200].rstrip(".") or type(exc).__name__


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

