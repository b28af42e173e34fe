"""The denoiser over patch grids: one canvas evaluation (sampling) and the two-term window loss (training).

Both go through ``encode_grid`` and ``decode_collaged`` so training and sampling cannot drift apart (spec §4, §5.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.collage import collage, crop_half, grid_positions, pad_half, split, stitch
from .schedule import Schedule, linear_betas


_DEFAULT = {}


def default_schedule() -> Schedule:
    """The official image schedule: linear betas 1e-4..0.02, T = 1000 (spec §5.2); built once."""
    if "linear" not in _DEFAULT:
        _DEFAULT["linear"] = Schedule(linear_betas())
    return _DEFAULT["linear"]


def _per_patch(v: torch.Tensor | None, n: int):
    """Repeat a per-image tensor (B, ...) for the n patches of each image -> (B*n, ...)."""
    return None if v is None else v.repeat_interleave(n, dim=0)


def encode_grid(unet, patches, grid, origin, t, code, pos_keep=None):
    """Encoder half + middle on a padded grid of patches.

    patches (B*rows*cols, 3, p, p) ordered (image, row, col); grid (rows, cols); origin (row0, col0) is the padded-grid
    index of the first patch (integer encoder positions row0+r, col0+c, spec §2.3); t (B,); code (B, D);
    pos_keep (B,) or None. Returns (h, skips, emb, code_patch) of the patches.
    """
    b, n = t.shape[0], grid[0] * grid[1]
    pos = (grid_positions(*grid, device=t.device) + torch.tensor(origin, device=t.device, dtype=torch.float32))
    emb = unet.embed(_per_patch(t, n), pos.repeat(b, 1), _per_patch(pos_keep, n))
    code_p = _per_patch(code, n)
    h, skips = unet.encode(patches, emb, code_p)
    return h, skips, emb, code_p


def decode_collaged(unet, h, skips, grid, origin, t, code, pos_keep=None):
    """Collage the bottleneck and every skip of a padded grid, then decode the (rows-1)x(cols-1) shifted tiles.

    Decoder positions are origin + (i + 0.5, j + 0.5) (spec §2.3). Returns eps (B*(rows-1)*(cols-1), 3, p, p).
    """
    b = t.shape[0]
    inner = (grid[0] - 1, grid[1] - 1)
    n = inner[0] * inner[1]
    pos = grid_positions(*inner, offset=0.5, device=t.device) + torch.tensor(origin, device=t.device,
                                                                            dtype=torch.float32)
    emb = unet.embed(_per_patch(t, n), pos.repeat(b, 1), _per_patch(pos_keep, n))
    return unet.decode(collage(h, grid), [collage(s, grid) for s in skips], emb, _per_patch(code, n))


def check_canvas(h: int, w: int, p: int) -> None:
    if h % p or w % p:
        raise ValueError(f"canvas {h}x{w} (HxW) is not divisible by the patch size {p}: both sides must be "
                         f"multiples of {p}")


def canvas_eps(unet, x_t: torch.Tensor, t: torch.Tensor, code: torch.Tensor, patch_size: int,
               pos_keep: torch.Tensor | None = None, band_rows: int | None = None,
               band_cols: int | None = None) -> torch.Tensor:
    """One denoiser evaluation over whole canvases.

    x_t (B, 3, H, W); t (B,) original integer timesteps; code (B, D); pos_keep (B,) 0/1 (CFG) or None.
    Pad by p/2, encode the (N+1)x(M+1) padded grid at integer positions, collage, decode the N x M tiles at
    half-integer positions, stitch. Returns eps (B, 3, H, W).

    band_rows=None runs every patch at once (the official way); band_rows=k decodes k rows of tiles at a time
    (``canvas_eps_bands``; band_cols=k also k tile columns at a time), the same function with memory bounded
    whatever the canvas size.
    """
    p = patch_size
    b, _, h, w = x_t.shape
    check_canvas(h, w, p)
    rows, cols = h // p + 1, w // p + 1
    if band_cols is not None and band_rows is None:
        band_rows = rows - 1
    if band_rows is None or (band_rows >= rows - 1 and band_cols is None):
        hid, skips, _, _ = encode_grid(unet, split(pad_half(x_t, p), p), (rows, cols), (0, 0), t, code, pos_keep)
        eps = decode_collaged(unet, hid, skips, (rows, cols), (0, 0), t, code, pos_keep)
        return stitch(eps, (rows - 1, cols - 1))
    bands = canvas_eps_bands(unet, x_t, t, code, p, band_rows, pos_keep, band_cols)
    return torch.cat([eps for _, eps in bands], dim=2)


def canvas_eps_bands(unet, x_t, t, code, p: int, band_rows: int, pos_keep=None, band_cols: int | None = None):
    """Yield (pixel_rows, eps) for successive bands of ``band_rows`` tile rows, top to bottom.

    Tile row i only needs padded rows i and i+1, so each band encodes its new padded rows (read from x_t when the
    band is reached, never as a padded copy of the canvas) and reuses the encoder features of the last padded row of
    the band above. A band reads only pixel rows below those of the bands already yielded, so a caller may update
    x_t in place band by band (streamed DDIM). band_cols=k also decodes each band k tile columns at a time (tile
    column j needs padded columns j and j+1), which bounds the decoder's activations on wide canvases.
    """
    if band_rows < 1:
        raise ValueError(f"band_rows must be at least 1, got {band_rows}")
    b, _, h, w = x_t.shape
    check_canvas(h, w, p)
    rows, cols = h // p + 1, w // p + 1
    carry = None  # encoder features (h, skips) of the last padded row encoded so far
    for r0 in range(0, rows - 1, band_rows):
        r1 = min(r0 + band_rows, rows - 1)  # decoder rows r0..r1-1 need padded rows r0..r1
        first = r0 if carry is None else r0 + 1
        new = split(padded_rows(x_t, first, r1 + 1, p), p)
        hid, skips, _, _ = encode_grid(unet, new, (r1 + 1 - first, cols), (first, 0), t, code, pos_keep)
        feats = [hid, *skips]
        if carry is not None:
            feats = [_cat_rows(c, f, b) for c, f in zip(carry, feats)]
        carry = [_last_row(f, b, cols) for f in feats]
        n_rows, step = r1 + 1 - r0, band_cols or cols - 1
        parts = []
        for c0 in range(0, cols - 1, step):
            c1 = min(c0 + step, cols - 1)  # tile columns c0..c1-1 need padded columns c0..c1
            sub = feats if step >= cols - 1 else [_columns(f, b, n_rows, cols, c0, c1 + 1) for f in feats]
            grid = (n_rows, c1 + 1 - c0)
            eps = decode_collaged(unet, sub[0], sub[1:], grid, (r0, c0), t, code, pos_keep)
            parts.append(stitch(eps, (n_rows - 1, c1 - c0)))
        yield slice(r0 * p, r1 * p), torch.cat(parts, dim=3)


def padded_rows(x: torch.Tensor, a: int, b_: int, p: int) -> torch.Tensor:
    """Patch rows a..b-1 of the half-patch-padded canvas, (B, C, (b-a)*p, W+p), without padding the whole canvas."""
    s, h = p // 2, x.shape[-2]
    lo, hi = a * p - s, b_ * p - s  # in un-padded pixel rows
    part = x[..., max(0, lo):min(h, hi), :]
    return F.pad(part, (s, s, max(0, -lo), max(0, hi - h)))


def _cat_rows(a: torch.Tensor, b_: torch.Tensor, batch: int) -> torch.Tensor:
    """Join two row-blocks of patch features (image, row, col order) along the row axis."""
    a = a.reshape(batch, -1, *a.shape[1:])
    b_ = b_.reshape(batch, -1, *b_.shape[1:])
    out = torch.cat([a, b_], dim=1)
    return out.reshape(-1, *out.shape[2:])


def _columns(f: torch.Tensor, batch: int, rows: int, cols: int, c0: int, c1: int) -> torch.Tensor:
    """Columns c0..c1-1 of a (batch*rows*cols, ...) block of patch features, in (image, row, col) order."""
    f = f.reshape(batch, rows, cols, *f.shape[1:])[:, :, c0:c1]
    return f.reshape(-1, *f.shape[3:])


def _last_row(f: torch.Tensor, batch: int, cols: int) -> torch.Tensor:
    """The last row of a row-block of patch features, (batch*cols, ...)."""
    f = f.reshape(batch, -1, cols, *f.shape[1:])[:, -1]
    return f.reshape(-1, *f.shape[2:])


def auto_band(batch: int, rows: int, cols: int, max_tiles: int = 128) -> tuple:
    """(band_rows, band_cols) decoding at most about ``max_tiles`` tiles at a time (None: no split on that axis).

    rows, cols count the tiles of the canvas (H/p, W/p).
    """
    if batch * rows * cols <= max_tiles:
        return None, None
    if batch * cols <= max_tiles:
        return max(1, max_tiles // (batch * cols)), None
    return 1, max(1, max_tiles // batch)


def guided_canvas_eps(unet, x_t, t, code, patch_size, cfg_scale: float = 0.0, band_rows: int | None = None,
                      band_cols: int | None = None):
    """eps with classifier-free guidance: (1 + w) eps(code, pos) - w eps(0, null pos) (spec §6).

    Faithful: the unconditional half drops both the code (zeroed) and the positions (zeroed sinusoids). w = 0 runs
    the conditional model only.
    """
    if cfg_scale == 0:
        return canvas_eps(unet, x_t, t, code, patch_size, band_rows=band_rows, band_cols=band_cols)
    x2, t2, code2, keep = cfg_batch(x_t, t, code)
    eps = canvas_eps(unet, x2, t2, code2, patch_size, pos_keep=keep, band_rows=band_rows, band_cols=band_cols)
    return cfg_combine(eps, cfg_scale)


def cfg_batch(x_t, t, code):
    """The doubled batch of a guided evaluation: (x, t, code, pos_keep), conditional half first; the unconditional
    half has its code zeroed and its positions dropped (Faithful, spec §6)."""
    b = x_t.shape[0]
    keep = torch.cat([torch.ones(b, device=x_t.device), torch.zeros(b, device=x_t.device)])
    return torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([code, torch.zeros_like(code)]), keep


def cfg_combine(eps: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(1 + w) eps_c - w eps_u from the eps of a ``cfg_batch``."""
    b = eps.shape[0] // 2
    return (1 + cfg_scale) * eps[:b] - cfg_scale * eps[b:]


def window_slice(window, p: int):
    """Pixel slices of a 2x2-patch window with top-left padded-grid index window = (row, col)."""
    r, c = window
    return slice(r * p, (r + 2) * p), slice(c * p, (c + 2) * p)


def patch_loss_terms(unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, window, code: torch.Tensor,
                     patch_size: int | None = None, pos_keep: torch.Tensor | None = None,
                     schedule: Schedule | None = None, per_image: bool = False):
    """The official two-term patch loss for one 2x2 window of the padded grid (spec §5.1).

    x0 (B, 3, H, W) in [-1, 1]; t (B,) in 0..T-1; noise (B, 3, H+p, W+p) over the padded canvas; window (row, col)
    with row in 0..H/p-1, col in 0..W/p-1; code (B, D) (already zeroed where CFG drops it); pos_keep (B,) or None.
    patch_size defaults to the padding, noise width minus x0 width. schedule defaults to the linear T=1000 one.
    Returns (shift_term, noshift_term), scalars:
      shift   = mean_b mean_chw (eps_centre - pred_shift)^2, the collaged pass for original patch (row, col);
      noshift = mean_4B mean_chw ((eps - pred)^2 * mask), the plain pass over the 4 window patches, padding masked,
                divided by all 3 p^2 elements.
    per_image=True returns the two terms per image, (B,) each (their batch means are the scalars above).
    """
    p = patch_size or (noise.shape[-1] - x0.shape[-1])
    sched = schedule or default_schedule()
    b, _, h, w = x0.shape
    check_canvas(h, w, p)
    if noise.shape[-2:] != (h + p, w + p):
        raise ValueError(f"noise must cover the padded canvas {(h + p, w + p)}, got {tuple(noise.shape[-2:])}")
    row, col = window
    if not (0 <= row < h // p and 0 <= col < w // p):
        raise ValueError(f"window {window} outside the {h // p}x{w // p} grid of window positions")
    x0_win, mask_win = window_crop(x0, window, p)
    rs, cs = window_slice(window, p)
    return window_loss_terms(unet, x0_win, mask_win, t, noise[..., rs, cs], window, code, p, pos_keep, sched,
                             per_image)


def window_crop(x0: torch.Tensor, window, p: int):
    """The 2p x 2p window (row, col) of the half-patch-padded canvas, and its mask (1 on the image, 0 on padding).

    x0 (B, C, H, W) -> (B, C, 2p, 2p) and (1, 1, 2p, 2p); only the window is materialised, never the padded canvas.
    """
    h, w = x0.shape[-2:]
    s = p // 2
    r0, c0 = window[0] * p - s, window[1] * p - s  # window origin in un-padded image coordinates
    top, left, bottom, right = max(0, -r0), max(0, -c0), max(0, r0 + 2 * p - h), max(0, c0 + 2 * p - w)
    crop = x0[..., max(0, r0):min(h, r0 + 2 * p), max(0, c0):min(w, c0 + 2 * p)]
    mask = torch.ones(1, 1, *crop.shape[-2:], device=x0.device, dtype=x0.dtype)
    pad = (left, right, top, bottom)
    return F.pad(crop, pad), F.pad(mask, pad)


def window_loss_terms(unet, x0_win: torch.Tensor, mask_win: torch.Tensor, t: torch.Tensor, noise_win: torch.Tensor,
                      window, code: torch.Tensor, p: int, pos_keep: torch.Tensor | None = None,
                      schedule: Schedule | None = None, per_image: bool = False):
    """patch_loss_terms on one window only: x0_win, noise_win (B, 3, 2p, 2p) and mask_win (1 or B, 1, 2p, 2p) are
    the window of the padded canvas (``window_crop``). Training draws noise for the window alone."""
    sched = schedule or default_schedule()
    b = x0_win.shape[0]
    # Faithful: x_t = q_sample of the padded canvas with the padding zeroed (as at sampling time), in the window.
    x_win = sched.q_sample(x0_win, t, noise_win) * mask_win
    h_mid, skips, emb, code_p = encode_grid(unet, split(x_win, p), (2, 2), window, t, code, pos_keep)
    pred_shift = decode_collaged(unet, h_mid, skips, (2, 2), window, t, code, pos_keep)
    pred_plain = unet.decode(h_mid, skips, emb, code_p)
    mask_p = split(mask_win.expand(b, -1, -1, -1), p)
    shift_term = ((crop_half(noise_win, p) - pred_shift.float()) ** 2).mean(dim=(1, 2, 3))
    noshift_term = (((split(noise_win, p) - pred_plain.float()) ** 2) * mask_p).reshape(b, -1).mean(dim=1)
    if per_image:
        return shift_term, noshift_term
    return shift_term.mean(), noshift_term.mean()


def sample_window(h: int, w: int, p: int, generator: torch.Generator | None = None) -> tuple:
    """The training window's top-left padded-grid index, uniform over (0..H/p-1) x (0..W/p-1), shared by the batch.

    Deviation: drawn from a torch.Generator instead of Python's ``random`` (same distribution, reproducible).
    """
    row = int(torch.randint(h // p, (1,), generator=generator))
    col = int(torch.randint(w // p, (1,), generator=generator))
    return row, col


def cfg_keep_masks(batch: int, code_drop: float = 0.1, pos_drop: float = 0.5,
                   generator: torch.Generator | None = None, device=None):
    """Per-image CFG dropout masks (spec §6): keep the code if r >= code_drop, the positions if r' >= pos_drop.

    Returns (code_keep, pos_keep), float (B,) of 0/1, drawn independently.
    """
    r = torch.rand(2, batch, generator=generator)
    return (r[0] >= code_drop).float().to(device), (r[1] >= pos_drop).float().to(device)
