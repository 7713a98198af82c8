"""Integrity checks on model files, run before any network is built from them.

Every route that turns a file into a network (``--model``, ``train --init-from``, srtool exports,
third-party checkpoints) passes through these checks, so a hostile or damaged file is one clear
line naming the file and the tensor or field, never an internal error, a hang or a huge allocation:

* :func:`check_model_path`: only regular files (and run directories) are opened; a FIFO, socket or
  device would block or stream forever.
* :func:`check_export_table`: an srtool export's tensor table (names, shapes, dtypes, read from the
  safetensors header without loading any data) must be exactly what its metadata's architecture
  holds. The expected table comes from the network built on PyTorch's ``meta`` device (shapes only,
  no memory), so a 2 kB file whose metadata describes a large network allocates nothing.
* :func:`check_tensor_extents`, on whatever ``torch.load`` returned: no tensor may address much more
  data than the file stores (a stride-0 view of one float can declare 10^10 elements in a 3 kB file;
  the first check that reads it would allocate them), and only dense tensors are weights.
* :func:`validate_state_dict`: no NaN/inf weights, no zero-size tensors, no scalar ``.weight``, and
  the convolutions every supported layout names (``conv_first``, ``conv_last``, ``upconv1`` ...)
  are 4-D.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..filekinds import special_file_kind
from ..threads import one_torch_thread

# Convolution weights the supported layouts name this way (srtool's networks, BasicSR, ESRGAN): they
# must be 4-D (out, in, kh, kw); a detector inferring channels from them needs that.
# Only these top-level names: other architectures (spandrel's) may use 1-D/3-D "convN" layers inside blocks.
_CONV_WEIGHT = re.compile(r"(^|\.)(conv_first|conv_last|conv_body|conv_hr|conv_up\d+|upconv\d+|HRconv|trunk_conv)\.weight$")


def check_model_path(path: Path, spec: str) -> None:
    """Refuse anything but a regular file or a directory (FIFOs, sockets and devices block or never end)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UserError(f"model {spec}: cannot open ({exc.strerror or exc})") from None
    kind = special_file_kind(mode)
    if kind is None:
        return
    raise UserError(f"model {spec}: is {kind}; give a weights file or a training run directory")


def _tensors(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every tensor in a (nested) checkpoint mapping."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping) and depth < 4:
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)


EXTENT_SLACK = 16 << 20  # bytes that views may address beyond their stored data, all tensors together


def check_tensor_extents(obj: Any, path: str | Path) -> None:
    """Refuse tensors (anywhere in ``obj``, to any depth) that address more than their stored data by
    over :data:`EXTENT_SLACK` in total, and non-dense tensors; names the worst tensor. Touches no data."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    excess, worst = 0, (0, "", 0, 0)
    while stack:
        name, item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.layout != torch.strided:
                raise UserError(f"{path}: tensor {name!r} is {item.layout} (not dense); weights files hold dense tensors")
            logical, stored = item.numel() * item.element_size(), item.untyped_storage().nbytes()
            if logical > stored:
                excess += logical - stored
                worst = max(worst, (logical - stored, name, item.numel(), stored))
        elif isinstance(item, (Mapping, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in pairs)
    if excess > EXTENT_SLACK:
        _, name, numel, stored = worst
        raise UserError(
            f"{path}: tensor {name!r} declares {numel:,} elements but its stored data holds {stored:,} bytes (an expanded "
            "or overlapping view); refused: reading it would allocate far more memory than the file holds"
        )


def validate_state_dict(state: Mapping[str, Any], path: str | Path) -> None:
    """Refuse weights no network should be built from (see the module docstring); names the tensor."""
    with one_torch_thread():  # ~150 tiny reductions: a barrier each on a team, a time slice each when busy
        _validate_tensors(state, path)


def _validate_tensors(state: Mapping[str, Any], path: str | Path) -> None:
    for name, tensor in _tensors(state):
        shape = tuple(tensor.shape)
        if tensor.numel() == 0:
            raise UserError(f"{path}: tensor {name!r} is empty (shape {list(shape)}: a zero-size dimension)")
        if name.endswith("weight") and tensor.dim() == 0:
            raise UserError(f"{path}: tensor {name!r} is a scalar, but a layer's weight has at least one dimension")
        if _CONV_WEIGHT.search(name) and tensor.dim() != 4:
            raise UserError(
                f"{path}: tensor {name!r} has shape {list(shape)}, but a convolution weight is 4-D (out, in, kh, kw)"
            )
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            kinds = " and ".join(k for k, f in (("NaN", torch.isnan), ("inf", torch.isinf)) if bool(f(tensor).any()))
            raise UserError(
                f"{path}: tensor {name!r} holds {bad} non-finite value(s) ({kinds}); such weights only produce garbage"
            )


def expected_tensors(config: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of the network ``config`` describes, built on the meta device (no memory)."""
    from .registry import build_network

    with torch.device("meta"):
        network: nn.Module = build_network(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in network.state_dict().items()}


def read_tensor_table(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype string) from a safetensors header; no tensor data is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: (tuple(fh.get_slice(k).get_shape()), str(fh.get_slice(k).get_dtype())) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def check_export_table(path: str | Path, config: Any) -> None:
    """The export's tensor table must be exactly the architecture's: checked before anything is built."""
    expected = expected_tensors(config)
    table = read_tensor_table(path)
    arch = getattr(config, "arch", "?")
    missing = [k for k in expected if k not in table]
    extra = [k for k in table if k not in expected]

    def listing(keys: list[str]) -> str:
        more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
        return ", ".join(repr(k) for k in keys[:3]) + more

    if missing:
        raise UserError(
            f"{path}: its metadata describes {arch} with {len(expected)} tensors but the file lacks "
            f"{len(missing)}: {listing(missing)} (a damaged export, or metadata from another model)"
        )
    if extra:
        raise UserError(f"{path}: tensors the metadata's {arch} does not have: {listing(extra)}")
    for name, (shape, dtype) in expected.items():
        got_shape, got_dtype = table[name]
        if got_shape != shape:
            raise UserError(f"{path}: tensor {name!r} has shape {list(got_shape)}, but the metadata's {arch} needs {list(shape)}")
        if dtype.is_floating_point and got_dtype not in _FLOAT_DTYPES:
            raise UserError(f"{path}: tensor {name!r} is {got_dtype}, but weights are floating point")
