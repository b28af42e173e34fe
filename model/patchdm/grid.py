"""Patch grids and the feature collage (FAITHFULNESS.md: Feature collage), as small pure tensor functions.

Glossary: ``p`` patch (or feature-tile) size, ``grid = (rows, cols)``, ``shift = p // 2``. Patches are ordered
(image, row, col) everywhere. Training, sampling and tests all use these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.images import region_bounds


def split(canvas: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, rows*p, cols*p) -> (B*rows*cols, C, p, p), ordered (image, row, col)."""
    b, c, h, w = canvas.shape
    if h % p or w % p:
        raise ValueError(f"canvas {h}x{w} is not divisible by the patch size {p}")
    rows, cols = h // p, w // p
    x = canvas.reshape(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * rows * cols, c, p, p)


def stitch(patches: torch.Tensor, grid: tuple) -> torch.Tensor:
    """(B*rows*cols, C, p, p) -> (B, C, rows*p, cols*p); inverse of ``split``."""
    rows, cols = grid
    n, c, p, q = patches.shape
    b = n // (rows * cols)
    if b * rows * cols != n:
        raise ValueError(f"{n} patches do not fill whole {rows}x{cols} grids")
    x = patches.reshape(b, rows, cols, c, p, q).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * p, cols * q)


WRAPS = ("", "x", "y", "xy")


def wrap_axes(wrap: str) -> tuple:
    """'' | 'x' | 'y' | 'xy' -> (wrap rows, wrap columns): which axes are padded circularly instead of with zeros."""
    wrap = (wrap or "").lower()
    if wrap == "yx":
        wrap = "xy"
    if wrap not in WRAPS:
        raise ValueError(f"wrap {wrap!r}: use x (horizontal, 360-degree panoramas), y, xy (tileable) or nothing")
    return "y" in wrap, "x" in wrap


def pad(canvas: torch.Tensor, left: int, right: int, top: int, bottom: int, wrap: str = "") -> torch.Tensor:
    """Pad a canvas with zeros, or circularly along the axes named in ``wrap`` (each pad at most the side)."""
    wy, wx = wrap_axes(wrap)
    if left or right:
        canvas = F.pad(canvas, (left, right, 0, 0), mode="circular" if wx else "constant")
    if top or bottom:
        canvas = F.pad(canvas, (0, 0, top, bottom), mode="circular" if wy else "constant")
    return canvas


def pad_half(canvas: torch.Tensor, p: int, wrap: str = "") -> torch.Tensor:
    """Pad a canvas by half a patch on each side: (B, C, H, W) -> (B, C, H+p, W+p); zeros as the official code,
    or circular along the ``wrap`` axes (seamless panoramas / tiles)."""
    s = p // 2
    if not wrap:
        return F.pad(canvas, (s, s, s, s))
    return pad(canvas, s, s, s, s, wrap)


def crop_half(canvas: torch.Tensor, p: int) -> torch.Tensor:
    """Remove half a patch from each border: (B, C, H+p, W+p) -> (B, C, H, W)."""
    s = p // 2
    return canvas[..., s:canvas.shape[-2] - s, s:canvas.shape[-1] - s]


def collage(features: torch.Tensor, grid: tuple) -> torch.Tensor:
    """Feature collage: stitch the padded grid, crop half a tile, re-cut (FAITHFULNESS.md: Feature collage).

    features (B*R*C, ch, s, s) for a padded grid (R, C) -> (B*(R-1)*(C-1), ch, s, s), the tiles aligned with the
    un-padded image. ``s`` is the feature size at this level, so the crop is always half a patch.
    """
    s = features.shape[-1]
    return split(crop_half(stitch(features, grid), s), s)


def grid_positions(rows: int, cols: int, offset: float = 0.0, device=None) -> torch.Tensor:
    """(rows*cols, 2) float (row, col) positions in patch units, row-major, plus ``offset``.

    Encoder positions of a padded grid use offset 0 (integers); decoder positions use 0.5 (FAITHFULNESS.md:
    Conditioning).
    """
    r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    return torch.stack([r.reshape(-1), c.reshape(-1)], dim=1).float() + offset


def window_slice(window, p: int):
    """Pixel slices of the 2x2-patch window with top-left padded-grid index window = (row, col), in the
    half-patch-padded canvas."""
    r, c = window
    return slice(r * p, (r + 2) * p), slice(c * p, (c + 2) * p)


def window_size(p: int, tiles: tuple = (1, 1)) -> tuple:
    """(height, width) in pixels of a training window of ``tiles`` = (R, C) decoder tiles: (R+1) x (C+1) patches."""
    return (tiles[0] + 1) * p, (tiles[1] + 1) * p


def window_regions(window, p: int, tiles: tuple = (1, 1)) -> list:
    """The training window(s) as regions (top, left, height, width) of the un-padded image, reaching past its border
    by up to half a patch (more with random offsets). ``window`` is the official form, (row, col): the top-left
    padded-grid index shared by the batch (one region), or a (B, 2) integer tensor of each sample's top-left pixel
    (random-offset windows, one region per sample)."""
    h, w = window_size(p, tiles)
    if torch.is_tensor(window):
        return [(int(y), int(x), h, w) for y, x in window.tolist()]
    return [(window[0] * p - p // 2, window[1] * p - p // 2, h, w)]


def window_region(window, p: int, tiles: tuple = (1, 1)) -> tuple:
    """The window (row, col) of the half-patch-padded canvas as a region (top, left, height, width) of the
    un-padded image (it reaches past the border by up to half a patch)."""
    return window_regions(window, p, tiles)[0]


def window_origin(window, p: int):
    """The encoder position of the window's first patch: (row, col) itself for the official windows, (B, 2) float
    (top + p/2) / p for pixel tops (the image-aligned positions of seamless sampling: a patch whose top-left pixel
    is (y, x) sits at (y / p + 1/2, x / p + 1/2))."""
    if torch.is_tensor(window):
        return (window + p // 2).float() / p
    return window


def window_masks(hw: tuple, window, p: int, tiles: tuple = (1, 1), device=None, dtype=torch.float32):
    """The mask of the window(s) (``window_regions``) on an H x W image: 1 on the image, 0 on the padding; (1, 1, ...)
    for the shared official window, (B, 1, ...) for per-sample windows. Only the windows are materialised."""
    masks = []
    for region in window_regions(window, p, tiles):
        rows, cols, pad = region_bounds(*hw, *region)
        ones = torch.ones(1, 1, rows.stop - rows.start, cols.stop - cols.start, device=device, dtype=dtype)
        masks.append(F.pad(ones, pad))
    return masks[0] if len(masks) == 1 else torch.cat(masks)


def window_crop(x0: torch.Tensor, window, p: int, tiles: tuple = (1, 1)):
    """The training window(s) of the half-patch-padded canvas (``window_regions``), and their mask
    (``window_masks``).

    x0 (B, C, H, W) -> (B, C, (R+1)p, (C+1)p) and a mask (1 or B, 1, ...); only the windows are materialised, never
    the padded canvas."""
    crops, regions = [], window_regions(window, p, tiles)
    for i, region in enumerate(regions):
        rows, cols, pad = region_bounds(*x0.shape[-2:], *region)
        crops.append(F.pad(x0[..., rows, cols] if len(regions) == 1 else x0[i:i + 1, :, rows, cols], pad))
    mask = window_masks(x0.shape[-2:], window, p, tiles, x0.device, x0.dtype)
    return (crops[0] if len(crops) == 1 else torch.cat(crops)), mask
