"""Reading the user's image files for the scripts (paint.py's image and mask, test.py --codes), with one-line
errors for missing or unreadable files."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dataset import to_rgb, to_unit_tensor
from runtime.errors import CLIError


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
