"""Models by name or path: "default" (the bundled model), "bicubic", srtool exports, training run
directories and third-party checkpoints, made ready for the engine (device, precision, fusion).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import torch

from .atomic import sha256_file
from .devices import cpu_has_native_bf16, resolve_device, resolve_precision
from .engine import SRModel, network_traits
from .errors import ScaleMismatch, UserError
from .fusion import prepare_network
from .memory import retain_freed_memory
from .model_files import bundled_model_path, check_model_options, looks_like_safetensors, read_export_metadata, weights_in
from .models.integrity import check_model_path


def bicubic_model(scale: int = 4) -> SRModel:
    return SRModel(name="bicubic", scale=scale, identity="bicubic", source="MATLAB bicubic")


def load_network(path: Path, scale: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The plain (unprepared, CPU fp32) network of a weights file: an srtool export, or a checkpoint
    recognised by :mod:`srtool.checkpoints` (``scale`` disambiguates, see :func:`load_model`)."""
    from .checkpoints import load_checkpoint
    from .models.export import load_export

    doc = read_export_metadata(path) if looks_like_safetensors(path) else None
    if doc is None:
        return load_checkpoint(path, scale_hint=scale)
    if "generator" not in doc and isinstance(doc.get("checkpoint"), dict):
        # written by `srtool models convert`: a community state dict, detected like the original file
        network, info = load_checkpoint(path, scale_hint=scale or doc["checkpoint"].get("scale"))
        return network, {**doc, **info}
    network, info = load_export(path)
    return network, {"layout": "srtool export", **info}


def load_model(
    spec: str | Path = "default",
    device: str | torch.device = "auto",
    precision: str = "auto",
    tile: int | None = None,
    tile_pad: int | None = None,
    scale: int | None = None,
    alpha: str = "model",
    notice: Callable[[str], None] | None = None,
) -> SRModel:
    """Load ``spec``: "default", "bicubic", an srtool export, a training run directory, a third-party
    checkpoint (any single-image SR architecture spandrel recognises, plus the layouts in
    :mod:`srtool.checkpoints`), read only by srtool's safe reader, or a named official model
    (``realesrgan-x4plus``...; see :mod:`srtool.model_zoo`).

    ``scale`` is the bicubic factor, and for a network a check: a disagreement is an error. It also
    disambiguates (an old-layout ESRGAN x3 has the keys of an x2 one) and ``scale=1`` admits 1x
    restoration models. ``precision="auto"`` never picks a half precision the architecture does not
    support; ``tile_pad=None`` uses the architecture's tile context.
    ``notice`` receives one-line notices (default: printed to stderr).
    """
    say = notice or (lambda msg: print(f"notice: {msg}", file=sys.stderr))
    if not isinstance(spec, (str, os.PathLike)):
        raise UserError(f"model: expected a name or a path (str or pathlib.Path), got {type(spec).__name__}")
    check_model_options(tile, tile_pad, alpha, scale)
    dev = resolve_device(device)  # checked first: an unusable --device is refused whatever the model
    resolve_precision(precision, dev)  # and a bad --precision, even for bicubic (which runs no network)
    if dev.type == "cpu":
        # before srtool (or the caller) starts threads: glibc gives a thread its own malloc arena on its
        # first allocation, and one arena for all threads only holds for arenas made after this
        retain_freed_memory()
    spec_str = str(spec)
    if scale == 1 and spec_str in ("bicubic", "default"):
        raise UserError("--scale 1 is for 1x restoration checkpoints (--model FILE); bicubic and the default model upscale")
    if spec_str == "bicubic":
        return bicubic_model(scale or 4)
    if spec_str == "default":
        path = bundled_model_path()
        if path is None:
            model = bicubic_model(scale or 4)
            model.info["notice"] = "no bundled model ships with this srtool yet: using MATLAB bicubic"
            say(model.info["notice"])
            return model
        spec = path
    elif not Path(spec_str).expanduser().exists():
        from .model_zoo import fetch, zoo_entry

        if zoo_entry(spec_str) is not None:  # a named official model: downloaded once, verified
            spec = fetch(spec_str, notice=say, scale=scale)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(
            f"model not found: {spec_str} (use 'default', 'bicubic', an srtool export, a run directory, a checkpoint file "
            "or a named model such as realesrgan-x4plus)"
        )
    check_model_path(path, spec_str)
    path = weights_in(path)
    with torch.device("cpu"):  # built on the CPU whatever default device the caller set (meta, cuda)
        network, info = load_network(path, scale)
    net_scale = int(getattr(network, "scale"))
    if scale is not None and scale != net_scale:
        raise ScaleMismatch(f"--scale {scale} disagrees with the model {path.name}, which upscales x{net_scale}",
                            scale, net_scale)
    identity = sha256_file(path)
    traits = network_traits(network)
    prec = resolve_precision(precision, dev, identity, half_ok=traits.half, bf16_ok=traits.bf16)
    if prec == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
        say("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 will be slow; fp32 is recommended")
    return SRModel(
        name=path.parent.parent.name if path.parent.name == "exports" else path.stem,
        scale=net_scale, network=prepare_network(network, dev, prec), identity=identity,
        source=str(path), info=info, device=dev, precision=prec, tile=tile,
        tile_pad=traits.context if tile_pad is None else tile_pad, alpha=alpha, traits=traits,
    )
