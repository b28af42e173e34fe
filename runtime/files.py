"""Atomic files, JSONL logs and PNG output."""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a kill never leaves a torn file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path) -> None:
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_new_file(path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse (CLIError) an output file that exists, unless ``overwrite``; a folder in its place is always refused.
    Called before any work starts, so a refused command has done nothing."""
    from .errors import CLIError
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CLIError(f"output {path} is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise CLIError(f"output {path} already exists; pass {flag} to replace it")


def make_parents(path) -> list:
    """Create the missing parent folders of ``path``; returns those created (outermost first) so that a failed
    command can remove them again with ``remove_empty``."""
    missing, parent = [], os.path.dirname(os.path.abspath(os.fspath(path)))
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(missing):
        os.mkdir(d)
    return list(reversed(missing))


def remove_empty(folders) -> None:
    """Remove the given folders, innermost first, where they are empty (folders this command created)."""
    for d in reversed(list(folders)):
        try:
            os.rmdir(d)
        except OSError:
            pass


class JsonlLog:
    """Append one JSON object per line; each row gets a wall-clock time stamp."""

    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)

    def write(self, **row) -> None:
        row = {"time": round(time.time(), 3), **row}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, rounded as (x + 1) / 2 * 255."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def save_png(x: torch.Tensor, path) -> None:
    """Write one image (3, H, W) in [-1, 1] as PNG, atomically."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    Image.fromarray(to_uint8(x)).save(tmp)
    os.replace(tmp, path)


def save_grid(images: torch.Tensor, path, ncol: int | None = None, pad: int = 2) -> None:
    """Write a batch (B, 3, H, W) in [-1, 1] as one PNG grid with white gutters."""
    b, _, h, w = images.shape
    ncol = ncol or min(b, 4)
    nrow = (b + ncol - 1) // ncol
    grid = torch.ones(3, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            images[i].detach().float().cpu()
    save_png(grid, path)
