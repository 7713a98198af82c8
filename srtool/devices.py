"""Where and in which precision networks run: device choice, precision policy, free memory.

Kept apart from the engine so the CLI can validate ``--device``/``--precision`` and training can
share the policy without importing the tiled engine.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .errors import UserError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps", "xpu")
NET_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _xpu_available() -> bool:
    return getattr(torch, "xpu", None) is not None and torch.xpu.is_available()


def available_devices() -> list[str]:
    """The ``--device`` values that can run a network on this machine with this torch build."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    if _xpu_available():
        names.append("xpu")
    return names


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; an explicit device must exist and compute.

    Anything else (a typo, a backend this torch build lacks such as ``hpu``, an absent GPU index,
    ``meta`` which holds no data) is a :class:`UserError` naming the usable choices.
    """
    name = str(device).strip()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    choices = ", ".join(available_devices())
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device: unknown device {name!r}; on this machine use one of {choices}") from None
    if dev.type == "meta":
        raise UserError(f"--device meta: the meta device holds no data and cannot compute; use one of {choices}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available to PyTorch on this machine; use one of {choices}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use one of {choices}")
    elif dev.type == "mps":
        if not _mps_available():
            raise UserError(f"--device {name}: Apple Metal (MPS) is not available on this machine; use one of {choices}")
    elif dev.type == "xpu":
        if not _xpu_available():
            raise UserError(f"--device {name}: no Intel XPU is available to PyTorch on this machine; use one of {choices}")
    elif dev.type != "cpu":
        raise UserError(f"--device {name}: srtool does not run on {dev.type!r} devices; on this machine use one of {choices}")
    return dev


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 convolutions are fast (Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# Weights (sha256) whose CPU bf16 output was measured against fp32 with the eval code path
# (benchmarks/bf16_psnr.py): the largest change of any Set14 image's PSNR, in dB. Only these get bf16
# from precision "auto" on CPUs with native bf16; the issue-13 rule is < 0.02 dB on every image.
CPU_BF16_VERIFIED = {
    "b824de1e4d6202f13a3b1c6c8fc2d014e1642dbd5875b3985bb08df37aadc74b": 0.0159,  # compact-x4 (bundled)
}
CPU_BF16_MAX_DB = 0.02


def resolve_precision(precision: str, device: torch.device, identity: str = "", half_ok: bool = True,
                      bf16_ok: bool = True) -> str:
    """``auto`` -> fp16 on CUDA (tensor cores, half the memory); on the CPU bf16 for weights verified in
    :data:`CPU_BF16_VERIFIED` where bf16 is native (AVX512-BF16/AMX: ~4x the fp32 rate), else fp32;
    fp32 on MPS.

    ``half_ok``/``bf16_ok``: whether the architecture computes correctly in fp16/bf16; ``auto``
    then falls back to bf16 (CUDA with bf16) or fp32, and asking for an unsupported one is an error.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision: unknown value {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            if half_ok:
                return "fp16"
            return "bf16" if bf16_ok and torch.cuda.is_bf16_supported() else "fp32"
        verified = CPU_BF16_VERIFIED.get(identity, math.inf) < CPU_BF16_MAX_DB
        return "bf16" if device.type == "cpu" and bf16_ok and verified and cpu_has_native_bf16() else "fp32"
    if (precision == "fp16" and not half_ok) or (precision == "bf16" and not bf16_ok):
        raise UserError(f"--precision {precision}: this model's architecture does not compute correctly in {precision}; use fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return precision



def available_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (CUDA: driver's free memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    from .memory import free_memory

    return free_memory()
