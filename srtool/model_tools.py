"""What ``srtool models`` does, as library functions: inspect, list, convert, export to ONNX.

Every function reads weights only through srtool's safe loading path
(:func:`srtool.loading.load_network`), so a pickle is read once, safely, and ``convert`` turns it into
a ``.safetensors`` file that never needs unpickling again.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_path, name_too_long, sha256_file
from .engine import network_traits
from .errors import UserError

DEFAULT_OPSET = 17


def _source(path: str | Path, scale: int | None = None) -> Path:
    """The weights file ``path`` names: a file, a training run directory (its export, as ``--model``
    takes it), ``default`` (the bundled model) or a named official model (downloaded once, verified)."""
    from .model_files import bundled_model_path, weights_in
    from .model_zoo import fetch, zoo_entry
    from .models.integrity import check_model_path

    if str(path) == "default" and bundled_model_path() is not None:  # the name, as --model default (./default: a path)
        return bundled_model_path()
    given = Path(path).expanduser()
    if str(path) == "bicubic" and not given.exists():
        raise UserError("bicubic: MATLAB bicubic is a resize, not a network: there is no model file to "
                        "inspect, convert or export")
    if not given.exists() and zoo_entry(str(path)) is not None:
        return fetch(str(path), notice=lambda msg: print(f"notice: {msg}", file=sys.stderr), scale=scale)
    if not os.path.lexists(given):
        raise UserError(f"model file not found: {given}")
    check_model_path(given, str(path))  # a FIFO or device would block: refused by name, as --model does
    return weights_in(given)


def _target(out: str | Path, suffix: str, overwrite: bool, source: Path) -> Path:
    """The output file, checked before any work: the right extension, not a folder, not the input
    model (its own conversion would replace it, even with --overwrite), existing only with ``overwrite``."""
    out = Path(out).expanduser()
    if out.suffix.lower() != suffix:
        raise UserError(f"{out}: the output must end in {suffix}")
    if (too_long := name_too_long(out)) is not None:
        raise UserError(f"{out}: {too_long}")
    for written in (out, out.with_suffix(".json")) if suffix == ".safetensors" else (out,):
        if os.path.lexists(written) and written.resolve() == source.resolve():
            raise UserError(f"{written}: is the input model {source}; give the output another name "
                            "(the input is never replaced, even with --overwrite)")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; name the output file (ending in {suffix})")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: " + ("is not a folder" if out.parent.exists() else "output folder does not exist"))
    return out


def _architecture(network: nn.Module, info: dict[str, Any]) -> str:
    if "architecture" in info:
        return str(info["architecture"]) if "hyperparameters" not in info else f"{info['architecture']} (as srtool RRDBNet)"
    config = getattr(network, "config", None)
    return getattr(config, "arch", None) or type(network).__name__


def inspect_model(path: str | Path, scale: int | None = None) -> dict[str, Any]:
    """Architecture, scale, channels, parameters, size requirements, precisions, purpose/tags, sha256."""
    from .loading import load_network

    path = _source(path, scale)
    network, info = load_network(path, scale)
    traits = network_traits(network)
    precisions = ["fp32"] + (["fp16"] if traits.half else []) + (["bf16"] if traits.bf16 else [])
    config = getattr(network, "config", None)
    return {
        "file": str(path),
        "sha256": sha256_file(path),
        "architecture": _architecture(network, info),
        "layout": info.get("layout"),
        "scale": int(network.scale),
        "input_channels": traits.in_channels,
        "output_channels": traits.out_channels,
        "parameters": sum(p.numel() for p in network.parameters()),
        "size_requirements": {"multiple_of": traits.multiple_of, "minimum": traits.minimum, "square": traits.square},
        "precisions": precisions,
        "tile_context": traits.context,
        "tiling": getattr(network, "tiling", "supported"),  # spandrel's advice (srtool tiles with the context above)
        "purpose": info.get("purpose", "SR"),
        "tags": info.get("tags", []),
        "hyperparameters": info.get("hyperparameters") or (config.model_dump() if config is not None else {}),
        "loader": "spandrel" if type(network).__name__ == "CommunityNetwork" else "srtool",
    }


def list_architectures() -> list[dict[str, str]]:
    """Architectures srtool loads, with the upstream code licence (spandrel's wheel ships none)."""
    from .community import FAMILIES, OTHER_LICENCE, SRTOOL_FAMILIES

    rows = [{"architecture": f.name, "loader": "srtool", "upstream": f.upstream, "licence": f.licence, "files": f.files}
            for f in SRTOOL_FAMILIES]
    rows += [{"architecture": f.name, "loader": "spandrel", "upstream": f.upstream, "licence": f.licence, "files": f.files}
             for f in FAMILIES.values()]
    rows.append({"architecture": "other spandrel SR architectures", "loader": "spandrel",
                 "upstream": "Swin2SR, GRL, RGT, ATD, DRCT, PLKSR, SAFMN, ... (spandrel's main package)",
                 "licence": OTHER_LICENCE, "files": ""})
    return rows


def list_named_models() -> list[dict[str, str]]:
    """The named official release files (:mod:`srtool.model_zoo`), with size, licence and cache state."""
    from .model_zoo import cache_dir, zoo_entries

    rows = []
    for entry in zoo_entries():
        size = f"{entry.size / 1e6:.1f} MB" if entry.size else "?"
        cached = "yes" if (cache_dir() / entry.filename).is_file() else "no"
        rows.append({"name": entry.name, "architecture": entry.architecture, "scale": f"x{entry.scale}", "size": size,
                     "licence": entry.licence, "cached": cached, "file": entry.filename, "url": entry.url})
    return rows


def convert_model(path: str | Path, out: str | Path, scale: int | None = None, overwrite: bool = False) -> Path:
    """Any loadable checkpoint -> a ``.safetensors`` srtool export (metadata names the architecture).

    srtool's own architectures are saved as srtool exports (loadable without spandrel); community
    architectures keep their state dict and record architecture and scale, so loading repeats the
    same detection without any unpickling.
    """
    from .checkpoints import unwrap_state
    from .loading import load_network
    from .models.export import read_state_dict, save_checkpoint_export, save_export
    from .models.registry import GENERATORS

    path = _source(path, scale)
    out = _target(out, ".safetensors", overwrite, path)
    if out.with_suffix(".json").is_dir():
        raise UserError(f"{out.with_suffix('.json')}: is a folder (convert writes its metadata there)")
    if out.with_suffix(".json").exists() and not overwrite:  # the export's human-readable metadata copy
        raise UserError(f"{out.with_suffix('.json')}: exists (convert writes it beside {out.name}); pass --overwrite to replace it")
    network, info = load_network(path, scale)
    provenance = {"converted_from": {"file": path.name, "sha256": sha256_file(path)}}
    if type(network) in {cls for _cfg, cls in GENERATORS.values()}:
        return save_export(out, network, {**provenance, "layout": info.get("layout")})
    state = unwrap_state(read_state_dict(path))
    doc = {"checkpoint": {"architecture": _architecture(network, info), "layout": info.get("layout"),
                          "scale": int(network.scale)}, **provenance}
    return save_checkpoint_export(out, state, doc)


def export_onnx(path: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, fp16: bool = False,
                scale: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """ONNX graph of the model with dynamic batch, height and width; input/output RGB in [0, 1].

    The graph does not pad: inputs must meet the reported size requirements. Returns a summary.
    """
    from .loading import load_network

    path = _source(path, scale)
    out = _target(out, ".onnx", overwrite, path)
    if not 9 <= opset <= 21:
        raise UserError(f"--opset: {opset} is outside 9..21")
    network, info = load_network(path, scale)
    traits = network_traits(network)
    if fp16 and not traits.half:
        raise UserError(f"{path}: its architecture does not compute correctly in fp16; export without --fp16")
    dtype = torch.float16 if fp16 else torch.float32
    network = network.eval().requires_grad_(False).to(dtype)
    side = max(traits.minimum, 16)
    side = -(-side // traits.multiple_of) * traits.multiple_of
    example = torch.rand(1, traits.in_channels, side, side, dtype=dtype)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation/tracer notices are not the user's concern
        try:
            torch.onnx.export(network, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": axes, "output": axes})
        except Exception as exc:  # noqa: BLE001 -- exporter errors are long; keep the first line
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: ONNX export failed for {_architecture(network, info)} ({first})") from None
    return {"file": str(out), "architecture": _architecture(network, info), "scale": int(network.scale),
            "opset": opset, "dtype": "fp16" if fp16 else "fp32",
            "size_requirements": {"multiple_of": traits.multiple_of, "minimum": traits.minimum, "square": traits.square}}
