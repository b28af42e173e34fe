"""Images as the project reads them: any PIL mode to 8-bit RGB, uint8 arrays to tensors in [-1, 1], and the user's
image files for the scripts (paint.py's image and mask, test.py --codes) with one-line errors for missing or
unreadable files."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import CLIError


def to_unit_tensor(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) in [-1, 1], the same float32 operations as ToTensor + Normalize(0.5, 0.5)."""
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)


class View(NamedTuple):
    """What a training item shows of its image: the region (top, left, height, width), which may reach past the
    border (zeros there), brought to ``out`` = (H, W) when given (bilinear, antialiased) and mirrored left-right when
    ``flip``."""
    top: int
    left: int
    height: int
    width: int
    out: tuple | None = None
    flip: bool = False


def region_bounds(h: int, w: int, top: int, left: int, height: int, width: int) -> tuple:
    """Where the region (top, left, height, width), which may reach past the border, meets an H x W image: the image's
    (row slice, column slice) inside the region and the zero padding (left, right, top, bottom) around it."""
    rows, cols = slice(max(0, top), min(h, top + height)), slice(max(0, left), min(w, left + width))
    return rows, cols, (cols.start - left, left + width - cols.stop, rows.start - top, top + height - rows.stop)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16/32-bit integer modes are scaled (not clipped); alpha is dropped."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def pixels(path, convert=to_rgb, what: str = "image") -> np.ndarray:
    """convert(PIL image) as a uint8 array."""
    try:
        with Image.open(path) as img:
            return np.asarray(convert(img), dtype=np.uint8)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{path}: not a readable {what} ({e})") from None


def read_image(path) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] from any image file, at its own size."""
    return to_unit_tensor(pixels(path))[None]


def read_rgb(path, geometry) -> torch.Tensor:
    """(3, H, W) in [-1, 1]: the image file through ``geometry`` (PIL -> PIL, e.g. a preset's transform)."""
    return to_unit_tensor(pixels(path, lambda img: geometry(to_rgb(img))))
