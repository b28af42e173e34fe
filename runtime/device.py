"""Device and precision choices."""

from __future__ import annotations

import contextlib

import torch

from .errors import CLIError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """'cuda', 'cuda:1', 'cpu' or None (CUDA when present). Under torchrun, 'cuda' means this rank's GPU."""
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name} was asked for but CUDA is not available on this machine "
                           "(use --device cpu)")
        dev = torch.device(name)
        return torch.device("cuda", local_rank if dev.index is None else dev.index)
    if name != "cpu":
        raise CLIError(f"unknown device {name!r}; use cpu, cuda or cuda:N")
    return torch.device("cpu")


def device_type(name: str | None) -> str:
    """'cuda' or 'cpu' for a --device value (None: CUDA when present), before the device itself is picked."""
    return "cuda" if (name or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else "cpu"


def sampling_precision(device: torch.device) -> str:
    """Deviation: sampling defaults to bf16 on GPUs that have it (fp16 elsewhere, fp32 on the CPU). The official
    test.py sampled in fp16, whose 65504 ceiling can overflow to inf/NaN images; bf16 has the fp32 range."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def check_precision(precision: str, device: torch.device) -> str:
    if precision not in DTYPES:
        raise CLIError(f"unknown precision {precision!r}; choose fp32, fp16 or bf16")
    if device.type == "cpu" and precision == "fp16":
        raise CLIError("fp16 needs a GPU; use --precision fp32 or bf16 on the CPU")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise CLIError("this GPU has no bf16 support; use --precision fp16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for the forward pass (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
