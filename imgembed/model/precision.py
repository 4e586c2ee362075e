"""Choosing and applying the inference precision.

``auto`` picks bf16 autocast with channels_last memory layout where the hardware runs it
natively (CPUs with AVX-512 BF16 or AMX; CUDA GPUs with bf16 support) and fp32 elsewhere, so a
CPU without those instructions never takes a slow emulated path. On the sample images bf16
embeddings stay within cosine 0.999 of fp32 (checked in the tests).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

from ..config import PRECISIONS


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for this device; ``fp32``/``bf16`` pass through."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device | str = "cpu"):
    """A context that runs the enclosed forward pass at ``precision`` (already resolved)."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
