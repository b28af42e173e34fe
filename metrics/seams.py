"""The seam ratio: how much stronger the image gradient is across patch boundaries than inside patches.

For an image I and a patch grid of pitch p starting at pixel ``offset``, take the absolute differences of
horizontally and vertically adjacent pixels (all channels). Pairs that straddle a grid line (between pixel
offset + k p - 1 and offset + k p) are "boundary" pairs, all others "inside" pairs. The seam ratio is

    mean |grad| over boundary pairs / mean |grad| over inside pairs.

Natural images have no preferred grid, so their ratio is close to 1; visible patch seams push it above 1. It needs
no pretrained network, which makes it the direct measure of the paper's claim (no boundary artefacts). Patch-DM's
decoder tiles are the image grid (offset 0); the encoder's padded patches sit at offset p/2.
"""

from __future__ import annotations

import numpy as np
import torch


def boundary_masks(h: int, w: int, p: int, offset: int = 0):
    """Boolean masks over the horizontal pairs (H, W-1) and vertical pairs (H-1, W) that cross a grid line."""
    cols = (np.arange(1, w) - offset) % p == 0  # pair (x-1, x) crosses when x is on a grid line
    rows = (np.arange(1, h) - offset) % p == 0
    return np.broadcast_to(cols[None, :], (h, w - 1)), np.broadcast_to(rows[:, None], (h - 1, w))


def seam_sums(img: np.ndarray | torch.Tensor, p: int, offset: int = 0) -> tuple:
    """(boundary sum, boundary count, inside sum, inside count) of |grad| for one image (H, W, C) or (H, W)."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    h, w = a.shape[:2]
    dx = np.abs(np.diff(a, axis=1)).sum(axis=-1)  # (H, W-1), summed over channels
    dy = np.abs(np.diff(a, axis=0)).sum(axis=-1)  # (H-1, W)
    bx, by = boundary_masks(h, w, p, offset)
    c = a.shape[-1]
    b_sum, b_n = dx[bx].sum() + dy[by].sum(), (bx.sum() + by.sum()) * c
    i_sum, i_n = dx[~bx].sum() + dy[~by].sum(), ((~bx).sum() + (~by).sum()) * c
    return b_sum, int(b_n), i_sum, int(i_n)


def seam_ratio(img, p: int, offset: int = 0) -> float:
    """The seam ratio of one image (nan when it has no boundary pair or no inside gradient)."""
    b_sum, b_n, i_sum, i_n = seam_sums(img, p, offset)
    if b_n == 0 or i_n == 0 or i_sum == 0:
        return float("nan")
    return (b_sum / b_n) / (i_sum / i_n)


def seam_stats(images, p: int, offsets=(0,)) -> dict:
    """Per-offset mean, std and count ``n`` of the per-image seam ratios over an iterable of images; ``total`` counts
    the images, flat ones (no gradient, no ratio) included."""
    ratios = {o: [] for o in offsets}
    for img in images:
        for o in offsets:
            ratios[o].append(seam_ratio(img, p, o))
    out = {}
    for o, r in ratios.items():
        r = np.array([v for v in r if np.isfinite(v)])
        out[int(o)] = {"mean": float(r.mean()) if len(r) else float("nan"),
                       "std": float(r.std(ddof=1)) if len(r) > 1 else 0.0, "n": int(len(r)),
                       "total": len(ratios[o])}
    return out
