"""Shared helpers of the benchmark scripts: timing, peak memory, result rows."""

from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device, out: dict):
    """Wall time of the block (after a device sync) into out['seconds']; CUDA peak memory into out['peak_gib']."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    yield out
    sync(device)
    out["seconds"] = time.perf_counter() - t0
    out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def emit(rows: list, path: str | None, columns: list) -> None:
    """Print a markdown table of ``columns`` and append the rows to a JSONL file."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in columns]
        print("| " + " | ".join(cells) + " |")
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
