"""The denoiser over patch grids: one canvas evaluation (sampling) and the two-term window loss (training).

Both go through ``encode_grid`` and ``decode_collaged`` so training and sampling cannot drift apart (spec §4, §5.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.collage import collage, crop_half, grid_positions, pad, pad_half, split, stitch, wrap_axes
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
               band_cols: int | None = None, wrap: str = "") -> torch.Tensor:
    """One denoiser evaluation over whole canvases.

    x_t (B, 3, H, W); t (B,) original integer timesteps; code (B, D); pos_keep (B,) 0/1 (CFG) or None.
    Pad by p/2, encode the (N+1)x(M+1) padded grid at integer positions, collage, decode the N x M tiles at
    half-integer positions, stitch. Returns eps (B, 3, H, W).

    band_rows=None runs every patch at once (the official way); band_rows=k decodes k rows of tiles at a time
    (``canvas_eps_bands``; band_cols=k also k tile columns at a time), the same function with memory bounded
    whatever the canvas size.

    wrap ('x', 'y', 'xy'): pad those axes circularly instead of with zeros, so the decoder tiles at one edge see the
    encoder features of the opposite edge and the result tiles seamlessly across the wrap (not in the official code).
    """
    p = patch_size
    b, _, h, w = x_t.shape
    check_canvas(h, w, p)
    rows, cols = h // p + 1, w // p + 1
    if band_cols is not None and band_rows is None:
        band_rows = rows - 1
    if band_rows is None or (band_rows >= rows - 1 and band_cols is None):
        hid, skips, _, _ = encode_grid(unet, split(pad_half(x_t, p, wrap), p), (rows, cols), (0, 0), t, code,
                                       pos_keep)
        eps = decode_collaged(unet, hid, skips, (rows, cols), (0, 0), t, code, pos_keep)
        return stitch(eps, (rows - 1, cols - 1))
    bands = canvas_eps_bands(unet, x_t, t, code, p, band_rows, pos_keep, band_cols, wrap)
    return torch.cat([eps for _, eps in bands], dim=2)


def canvas_eps_bands(unet, x_t, t, code, p: int, band_rows: int, pos_keep=None, band_cols: int | None = None,
                     wrap: str = "", repeat: int = 1):
    """Yield (pixel_rows, eps) for successive bands of ``band_rows`` tile rows, top to bottom.

    Tile row i only needs padded rows i and i+1, so each band encodes its new padded rows (read from x_t when the
    band is reached, never as a padded copy of the canvas) and reuses the encoder features of the last padded row of
    the band above. A band reads only pixel rows below those of the bands already yielded, so a caller may update
    x_t in place band by band (streamed DDIM). band_cols=k also decodes each band k tile columns at a time (tile
    column j needs padded columns j and j+1), which bounds the decoder's activations on wide canvases.
    With a vertical wrap the last padded row reads the canvas's first rows, so they are copied when the first band is
    computed, before a streaming caller updates them. repeat=k evaluates k copies of the batch (t, code, pos_keep
    have k*B rows, copy-major: the guided batch of ``cfg_conditions``) while only each band's rows are copied.
    """
    if band_rows < 1:
        raise ValueError(f"band_rows must be at least 1, got {band_rows}")
    _, _, h, w = x_t.shape
    b = x_t.shape[0] * repeat
    check_canvas(h, w, p)
    rows, cols = h // p + 1, w // p + 1
    head = x_t[..., :p // 2, :].clone() if wrap_axes(wrap)[0] else None
    carry = None  # encoder features [h, *skips] of the last padded row encoded so far (one row of patches)
    for r0 in range(0, rows - 1, band_rows):
        r1 = min(r0 + band_rows, rows - 1)  # decoder rows r0..r1-1 need padded rows r0..r1
        first = r0 if carry is None else r0 + 1
        rows_in = padded_rows(x_t, first, r1 + 1, p, wrap, head)
        if repeat > 1:
            rows_in = rows_in.repeat(repeat, 1, 1, 1)
        hid, skips, _, _ = encode_grid(unet, split(rows_in, p), (r1 + 1 - first, cols), (first, 0), t, code,
                                       pos_keep)
        rows_in = None
        new, hid, skips = [hid, *skips], None, None
        n_rows, step = r1 + 1 - r0, band_cols or cols - 1
        parts = []
        for c0 in range(0, cols - 1, step):
            c1 = min(c0 + step, cols - 1)  # tile columns c0..c1-1 need padded columns c0..c1
            sub = _band_features(carry, new, b, cols, c0, c1 + 1)
            eps = decode_collaged(unet, sub[0], sub[1:], (n_rows, c1 + 1 - c0), (r0, c0), t, code, pos_keep)
            sub = None
            parts.append(stitch(eps, (n_rows - 1, c1 - c0)))
        # Only the last padded row is kept for the next band (a copy when the band encoded several rows), so that
        # the features of this band are released before the next one is encoded.
        carry = new if r1 + 1 - first == 1 else [_last_row(f, b, cols).clone() for f in new]
        new = None
        eps, parts = torch.cat(parts, dim=3), None
        yield slice(r0 * p, r1 * p), eps


def padded_rows(x: torch.Tensor, a: int, b_: int, p: int, wrap: str = "", head: torch.Tensor | None = None):
    """Patch rows a..b-1 of the half-patch-padded canvas, (B, C, (b-a)*p, W+p), without padding the whole canvas.

    With a vertical wrap the rows above the canvas come from its bottom and those below from ``head`` (the first
    p/2 rows, default: read from x now)."""
    s, h = p // 2, x.shape[-2]
    lo, hi = a * p - s, b_ * p - s  # in un-padded pixel rows
    top, bottom = max(0, -lo), max(0, hi - h)
    part = x[..., max(0, lo):min(h, hi), :]
    wy, wx = wrap_axes(wrap)
    if wy and (top or bottom):
        head = x[..., :s, :] if head is None else head
        part = torch.cat([x[..., h - top:, :], part, head[..., :bottom, :]], dim=-2)
        top = bottom = 0
    if wx:
        part = F.pad(part, (s, s, 0, 0), mode="circular")
        s = 0
    return F.pad(part, (s, s, top, bottom))


def _band_features(carry, new, batch: int, cols: int, c0: int, c1: int) -> list:
    """Padded columns c0..c1-1 of a band's encoder features: the carried row above (or none) and the new rows, as
    one (batch*rows*(c1-c0), ...) block in (image, row, col) order. No copy when nothing is joined or cut."""
    out = []
    for i, f in enumerate(new):
        f = f.reshape(batch, -1, cols, *f.shape[1:])
        if carry is not None:
            f = torch.cat([carry[i].reshape(batch, 1, cols, *f.shape[3:])[:, :, c0:c1], f[:, :, c0:c1]], dim=1)
        elif (c0, c1) != (0, cols):
            f = f[:, :, c0:c1]
        out.append(f.reshape(-1, *f.shape[3:]))
    return out


def _last_row(f: torch.Tensor, batch: int, cols: int) -> torch.Tensor:
    """The last row of a row-block of patch features, (batch*cols, ...)."""
    f = f.reshape(batch, -1, cols, *f.shape[1:])[:, -1]
    return f.reshape(-1, *f.shape[2:])


def auto_band(batch: int, rows: int, cols: int, all_at_once: int = 512, band_tiles: int = 64) -> tuple:
    """The automatic --bands: (band_rows, band_cols), None meaning no split on that axis.

    Up to ``all_at_once`` tiles (512 = 512x1024 at batch 4, patch 64) everything is decoded at once, the fastest;
    beyond, bands of at most ``band_tiles`` tiles, which bounds the decoder's memory (the estimate at 4096x8192 is
    ~2.3 GiB in bf16, benchmarks/memory_estimate.py). rows, cols count the tiles of the canvas (H/p, W/p).
    """
    if batch * rows * cols <= all_at_once:
        return None, None
    if batch * cols <= band_tiles:
        return max(1, band_tiles // (batch * cols)), None
    return 1, max(1, band_tiles // batch)


def guided_canvas_eps(unet, x_t, t, code, patch_size, cfg_scale: float = 0.0, band_rows: int | None = None,
                      band_cols: int | None = None, wrap: str = ""):
    """eps with classifier-free guidance: (1 + w) eps(code, pos) - w eps(0, null pos) (spec §6).

    Faithful: the unconditional half drops both the code (zeroed) and the positions (zeroed sinusoids). w = 0 runs
    the conditional model only.
    """
    if cfg_scale == 0:
        return canvas_eps(unet, x_t, t, code, patch_size, band_rows=band_rows, band_cols=band_cols, wrap=wrap)
    x2, t2, code2, keep = cfg_batch(x_t, t, code)
    eps = canvas_eps(unet, x2, t2, code2, patch_size, pos_keep=keep, band_rows=band_rows, band_cols=band_cols,
                     wrap=wrap)
    return cfg_combine(eps, cfg_scale)


def cfg_batch(x_t, t, code):
    """The doubled batch of a guided evaluation: (x, t, code, pos_keep), conditional half first; the unconditional
    half has its code zeroed and its positions dropped (Faithful, spec §6)."""
    return (torch.cat([x_t, x_t]), *cfg_conditions(t, code))


def cfg_conditions(t, code):
    """(t, code, pos_keep) of ``cfg_batch`` without the doubled images."""
    keep = torch.cat([torch.ones(t.shape[0], device=t.device), torch.zeros(t.shape[0], device=t.device)])
    return torch.cat([t, t]), torch.cat([code, torch.zeros_like(code)]), keep


def cfg_combine(eps: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(1 + w) eps_c - w eps_u from the eps of a ``cfg_batch``."""
    b = eps.shape[0] // 2
    return (1 + cfg_scale) * eps[:b] - cfg_scale * eps[b:]


def shifted_canvas_eps(unet, x_t, t, code, patch_size: int, shift=(0, 0), pos_keep=None, wrap: str = "",
                       max_patches: int | None = None) -> torch.Tensor:
    """eps of whole canvases from independent patches, without feature collage: the sampler of the ablations.

    The patch grid starts ``shift`` = (sy, sx) pixels above and left of the canvas (0 <= s < p): patch (k, l) covers
    rows k p - sy .. (k+1) p - sy and sits at position (k + 1/2 - sy/p, l + 1/2 - sx/p), the positions the ablations
    train at (shift (0, 0) is the image grid at half-integer positions, (p/2, p/2) the padded grid at integers).
    The overhang is zero-padded (circular along ``wrap``) and cropped off the stitched eps. max_patches bounds how
    many patches one forward sees (same result).
    """
    p, (sy, sx) = patch_size, shift
    b, _, h, w = x_t.shape
    check_canvas(h, w, p)
    if not (0 <= sy < p and 0 <= sx < p):
        raise ValueError(f"shift {shift} outside 0..{p - 1}")
    rows, cols = -(-(h + sy) // p), -(-(w + sx) // p)
    patches = split(pad(x_t, sx, cols * p - w - sx, sy, rows * p - h - sy, wrap), p)
    n = rows * cols
    pos = grid_positions(rows, cols, device=x_t.device) + torch.tensor([0.5 - sy / p, 0.5 - sx / p],
                                                                       device=x_t.device)
    pos, tt, cc, kk = pos.repeat(b, 1), _per_patch(t, n), _per_patch(code, n), _per_patch(pos_keep, n)
    step = max_patches or len(patches)
    eps = [unet(patches[i:i + step], tt[i:i + step], pos[i:i + step], cc[i:i + step],
                None if kk is None else kk[i:i + step]) for i in range(0, len(patches), step)]
    return stitch(torch.cat(eps), (rows, cols))[..., sy:sy + h, sx:sx + w]


def pixel_shift(collage: str, k: int, p: int, seed: int = 0) -> tuple:
    """The grid shift of sampling step k (k = 0 first) for the patch-space ablations (``shifted_canvas_eps``).

    none: always the image grid (0, 0). pixel_fixed: the image grid at even steps, the half-patch shift (p/2, p/2)
    at odd steps (Fig. 2b). pixel_random: the image grid at even steps, a shift uniform in 0..p-1 per axis at odd
    steps, a function of (seed, k) only.
    """
    check_collage(collage)
    if collage == "none" or k % 2 == 0:
        return 0, 0
    if collage == "pixel_fixed":
        return p // 2, p // 2
    if collage == "pixel_random":
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        sy, sx = torch.randint(p, (2,), generator=g).tolist()
        return sy, sx
    raise ValueError("the feature collage has no pixel shift")


def guided_shifted_eps(unet, x_t, t, code, patch_size, shift, cfg_scale: float = 0.0, wrap: str = "",
                       max_patches: int | None = None):
    """``shifted_canvas_eps`` with classifier-free guidance, as guided_canvas_eps."""
    if cfg_scale == 0:
        return shifted_canvas_eps(unet, x_t, t, code, patch_size, shift, wrap=wrap, max_patches=max_patches)
    x2, t2, code2, keep = cfg_batch(x_t, t, code)
    return cfg_combine(shifted_canvas_eps(unet, x2, t2, code2, patch_size, shift, keep, wrap, max_patches), cfg_scale)


def window_slice(window, p: int):
    """Pixel slices of a 2x2-patch window with top-left padded-grid index window = (row, col)."""
    r, c = window
    return slice(r * p, (r + 2) * p), slice(c * p, (c + 2) * p)


def patch_loss_terms(unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, window, code: torch.Tensor,
                     patch_size: int | None = None, pos_keep: torch.Tensor | None = None,
                     schedule: Schedule | None = None, per_image: bool = False, collage: str = "feature",
                     offset: tuple | None = None):
    """The official two-term patch loss for one 2x2 window of the padded grid (spec §5.1).

    x0 (B, 3, H, W) in [-1, 1]; t (B,) in 0..T-1; noise (B, 3, H+p, W+p) over the padded canvas; window (row, col)
    with row in 0..H/p-1, col in 0..W/p-1; code (B, D) (already zeroed where CFG drops it); pos_keep (B,) or None.
    patch_size defaults to the padding, noise width minus x0 width. schedule defaults to the linear T=1000 one.
    Returns (shift_term, noshift_term), scalars:
      shift   = mean_b mean_chw (eps_centre - pred_shift)^2, the collaged pass for original patch (row, col);
      noshift = mean_4B mean_chw ((eps - pred)^2 * mask), the plain pass over the 4 window patches, padding masked,
                divided by all 3 p^2 elements.
    per_image=True returns the two terms per image, (B,) each (their batch means are the scalars above).
    collage / offset select the ablations (``window_loss_terms``).
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
                             per_image, collage, offset)


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


COLLAGES = ("feature", "pixel_fixed", "pixel_random", "none")


def check_collage(collage: str) -> str:
    if collage not in COLLAGES:
        raise ValueError(f"collage {collage!r}: choose one of {', '.join(COLLAGES)}")
    return collage


def window_loss_terms(unet, x0_win: torch.Tensor, mask_win: torch.Tensor, t: torch.Tensor, noise_win: torch.Tensor,
                      window, code: torch.Tensor, p: int, pos_keep: torch.Tensor | None = None,
                      schedule: Schedule | None = None, per_image: bool = False, collage: str = "feature",
                      offset: tuple | None = None):
    """patch_loss_terms on one window only: x0_win, noise_win (B, 3, 2p, 2p) and mask_win (1 or B, 1, 2p, 2p) are
    the window of the padded canvas (``window_crop``). Training draws noise for the window alone.

    collage selects the ablations of Fig. 2 / Table 4 (the noshift term is the same in all but ``none``):
      feature       the official loss: the shift term decodes the collaged features of the four window patches.
      pixel_fixed   pixel-space collage, fixed shift: the shift term is the plain network on the pixels of the
                    window's centre patch (the image patch (row, col), position row+0.5, col+0.5).
      pixel_random  pixel-space collage, random shift: the plain network on the p x p crop at ``offset`` = (dy, dx)
                    (0 <= d < p) pixels inside the window, position (row + dy/p, col + dx/p), padding masked.
      none          independent patches on the image grid (Fig. 2a): the pixel_fixed shift term only; noshift is 0.
    """
    sched = schedule or default_schedule()
    check_collage(collage)
    b = x0_win.shape[0]
    # Faithful: x_t = q_sample of the padded canvas with the padding zeroed (as at sampling time), in the window.
    x_win = sched.q_sample(x0_win, t, noise_win) * mask_win
    if collage == "none":
        noshift_term = torch.zeros(b, device=x0_win.device)
    else:
        h_mid, skips, emb, code_p = encode_grid(unet, split(x_win, p), (2, 2), window, t, code, pos_keep)
        pred_plain = unet.decode(h_mid, skips, emb, code_p)
        mask_p = split(mask_win.expand(b, -1, -1, -1), p)
        noshift_term = (((split(noise_win, p) - pred_plain.float()) ** 2) * mask_p).reshape(b, -1).mean(dim=1)
    if collage == "feature":
        pred_shift = decode_collaged(unet, h_mid, skips, (2, 2), window, t, code, pos_keep)
        shift_term = ((crop_half(noise_win, p) - pred_shift.float()) ** 2).mean(dim=(1, 2, 3))
    else:
        dy, dx = offset if collage == "pixel_random" else (p // 2, p // 2)
        if not (0 <= dy < p and 0 <= dx < p):
            raise ValueError(f"pixel shift offset {(dy, dx)} outside 0..{p - 1}")
        rs, cs = slice(dy, dy + p), slice(dx, dx + p)
        pos = torch.tensor([[window[0] + dy / p, window[1] + dx / p]], device=t.device).repeat(b, 1)
        pred_shift = unet(x_win[..., rs, cs], t, pos, code, pos_keep)
        err = (noise_win[..., rs, cs] - pred_shift.float()) ** 2
        shift_term = (err * mask_win[..., rs, cs]).reshape(b, -1).mean(dim=1)
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
