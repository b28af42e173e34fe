"""The Patch-DM network over whole canvases: the padded grid, the feature collage between the encoder and decoder
halves, and the band engine that bounds memory at any canvas size (docs/FAITHFULNESS.md, "Feature collage").

Training windows and sampling canvases both go through ``encode_grid`` and ``decode_collaged``, so the two cannot
drift apart. ``shifted_canvas_prediction`` is the pixel-space counterpart of the ablations (independent patches).

The network's output is its *prediction*, named by the objective the model was trained with: eps (the paper's), v, or
the flow velocity; nothing here depends on which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grid import collage, grid_positions, pad, pad_half, split, stitch, wrap_axes


def _per_patch(v: torch.Tensor | None, n: int):
    """Repeat a per-image tensor (B, ...) for the n patches of each image -> (B*n, ...)."""
    return None if v is None else v.repeat_interleave(n, dim=0)


def grid_origins(grid, origin, b: int, offset: float, device) -> torch.Tensor:
    """(b*rows*cols, 2) positions of a grid of patches for b images: ``grid_positions`` + ``offset`` + the origin,
    one (row0, col0) for every image, or a (b, 2) tensor of one origin per image (random-offset training windows,
    whose origins are fractional: docs/EVALUATION.md, "Training windows")."""
    pos = grid_positions(*grid, offset=offset, device=device)
    if torch.is_tensor(origin):
        return (pos[None] + origin.to(device=device, dtype=torch.float32)[:, None]).reshape(-1, 2)
    return (pos + torch.tensor(origin, device=device, dtype=torch.float32)).repeat(b, 1)


def encode_grid(unet, patches, grid, origin, t, code, pos_keep=None):
    """Encoder half + middle on a padded grid of patches.

    patches (B*rows*cols, 3, p, p) ordered (image, row, col); grid (rows, cols); origin (row0, col0) is the padded-grid
    index of the first patch (encoder positions row0+r, col0+c), or a (B, 2) tensor of one origin per image; t (B,);
    code (B, D);
    pos_keep (B,) or None. Returns (h, skips, emb, code_patch) of the patches.
    """
    b, n = t.shape[0], grid[0] * grid[1]
    emb = unet.embed(_per_patch(t, n), grid_origins(grid, origin, b, 0.0, t.device), _per_patch(pos_keep, n))
    code_p = _per_patch(code, n)
    h, skips = unet.encode(patches, emb, code_p)
    return h, skips, emb, code_p


def decode_collaged(unet, h, skips, grid, origin, t, code, pos_keep=None):
    """Collage the bottleneck and every skip of a padded grid, then decode the (rows-1)x(cols-1) shifted tiles.

    Decoder positions are origin + (i + 0.5, j + 0.5) (FAITHFULNESS.md: Conditioning).
    Returns the prediction (B*(rows-1)*(cols-1), 3, p, p).
    """
    b = t.shape[0]
    inner = (grid[0] - 1, grid[1] - 1)
    n = inner[0] * inner[1]
    emb = unet.embed(_per_patch(t, n), grid_origins(inner, origin, b, 0.5, t.device), _per_patch(pos_keep, n))
    return unet.decode(collage(h, grid), [collage(s, grid) for s in skips], emb, _per_patch(code, n))


def check_canvas(h: int, w: int, p: int) -> None:
    if h % p or w % p:
        raise ValueError(f"canvas {h}x{w} (HxW) is not divisible by the patch size {p}: both sides must be "
                         f"multiples of {p}")


def canvas_prediction(unet, x_t: torch.Tensor, t: torch.Tensor, code: torch.Tensor, patch_size: int,
                      pos_keep: torch.Tensor | None = None, band_rows: int | None = None,
                      band_cols: int | None = None, wrap: str = "", offset: tuple = (0, 0)) -> torch.Tensor:
    """One denoiser evaluation over whole canvases.

    x_t (B, 3, H, W); t (B,) original integer timesteps; code (B, D); pos_keep (B,) or None.
    Pad by p/2, encode the (N+1)x(M+1) padded grid at integer positions, collage, decode the N x M tiles at
    half-integer positions, stitch. Returns the prediction (B, 3, H, W) (eps for the paper's objective).

    band_rows=None runs every patch at once (the official way); band_rows=k decodes k rows of tiles at a time
    (``canvas_prediction_bands``; band_cols=k also k tile columns at a time), the same function with memory bounded
    whatever the canvas size.

    wrap ('x', 'y', 'xy'): pad those axes circularly instead of with zeros, so the decoder tiles at one edge see the
    encoder features of the opposite edge and the result tiles seamlessly across the wrap (not in the official code).

    offset (dy, dx), 0 <= d < p: the patch grid moved dy pixels up and dx left (``canvas_prediction_bands``; the
    seamless samplers, seamless.py). (0, 0) is the official grid.
    """
    p = patch_size
    b, _, h, w = x_t.shape
    check_canvas(h, w, p)
    rows, cols = h // p + 1, w // p + 1
    if band_cols is not None and band_rows is None:
        band_rows = rows - 1
    if tuple(offset) == (0, 0) and (band_rows is None or (band_rows >= rows - 1 and band_cols is None)):
        hid, skips, _, _ = encode_grid(unet, split(pad_half(x_t, p, wrap), p), (rows, cols), (0, 0), t, code,
                                       pos_keep)
        out = decode_collaged(unet, hid, skips, (rows, cols), (0, 0), t, code, pos_keep)
        return stitch(out, (rows - 1, cols - 1))
    bands = canvas_prediction_bands(unet, x_t, t, code, p, band_rows or rows, pos_keep, band_cols, wrap,
                                    offset=offset)
    return torch.cat([out for _, out in bands], dim=2)


def canvas_prediction_bands(unet, x_t, t, code, p: int, band_rows: int, pos_keep=None, band_cols: int | None = None,
                            wrap: str = "", repeat: int = 1, offset: tuple = (0, 0)):
    """Yield (pixel_rows, prediction) for successive bands of ``band_rows`` tile rows, top to bottom.

    Tile row i only needs padded rows i and i+1, so each band encodes its new padded rows (read from x_t when the
    band is reached, never as a padded copy of the canvas) and reuses the encoder features of the last padded row of
    the band above. A band reads only pixel rows below those of the bands already yielded, so a caller may update
    x_t in place band by band (a streamed sampler). band_cols=k also decodes each band k tile columns at a time (tile
    column j needs padded columns j and j+1), which bounds the decoder's activations on wide canvases.
    With a vertical wrap the last padded row reads the canvas's first rows, so they are copied when the first band is
    computed, before a streaming caller updates them. repeat=k evaluates k copies of the batch (t, code, pos_keep
    have k*B rows, copy-major: the guided batch of ``cfg_conditions``) while only each band's rows are copied.

    offset (dy, dx), 0 <= d < p, moves the patch grid dy pixels up and dx left: tile (i, j) covers canvas pixels
    (i p - dy .., j p - dx ..), so ceil((H + dy) / p) x ceil((W + dx) / p) tiles cover the canvas and what falls
    outside it is cropped off (read as zeros, or circularly along ``wrap``). Positions follow the image: a tile at
    pixel (y, x) is at position (y / p + 1/2, x / p + 1/2) whatever the offset, the fractional positions between
    the grid's that the sinusoidal embedding interpolates (docs/EVALUATION.md, "Seamless sampling").
    """
    if band_rows < 1:
        raise ValueError(f"band_rows must be at least 1, got {band_rows}")
    _, _, h, w = x_t.shape
    dy, dx = offset
    b = x_t.shape[0] * repeat
    check_canvas(h, w, p)
    if not (0 <= dy < p and 0 <= dx < p):
        raise ValueError(f"grid offset {tuple(offset)} outside 0..{p - 1}")
    rows, cols = -(-(h + dy) // p) + 1, -(-(w + dx) // p) + 1
    head = x_t[..., :min(h, p // 2 + p), :].clone() if wrap_axes(wrap)[0] else None
    carry = None  # encoder features [h, *skips] of the last padded row encoded so far (one row of patches)
    for r0 in range(0, rows - 1, band_rows):
        r1 = min(r0 + band_rows, rows - 1)  # decoder rows r0..r1-1 need padded rows r0..r1
        first = r0 if carry is None else r0 + 1
        rows_in = padded_rows(x_t, first, r1 + 1, p, wrap, head, offset, cols)
        if repeat > 1:
            rows_in = rows_in.repeat(repeat, 1, 1, 1)
        hid, skips, _, _ = encode_grid(unet, split(rows_in, p), (r1 + 1 - first, cols), (first - dy / p, -dx / p),
                                       t, code, pos_keep)
        rows_in = None
        new, hid, skips = [hid, *skips], None, None
        n_rows, step = r1 + 1 - r0, band_cols or cols - 1
        parts = []
        for c0 in range(0, cols - 1, step):
            c1 = min(c0 + step, cols - 1)  # tile columns c0..c1-1 need padded columns c0..c1
            sub = _band_features(carry, new, b, cols, c0, c1 + 1)
            out = decode_collaged(unet, sub[0], sub[1:], (n_rows, c1 + 1 - c0), (r0 - dy / p, c0 - dx / p), t,
                                  code, pos_keep)
            sub = None
            parts.append(stitch(out, (n_rows - 1, c1 - c0)))
        # Only the last padded row is kept for the next band (a copy when the band encoded several rows), so that
        # the features of this band are released before the next one is encoded.
        carry = new if r1 + 1 - first == 1 else [_last_row(f, b, cols).clone() for f in new]
        new = None
        out, parts = torch.cat(parts, dim=3), None
        y0, y1 = max(0, r0 * p - dy), min(h, r1 * p - dy)  # the canvas rows of the band
        if (dy, dx) != (0, 0):
            out = out[..., y0 - (r0 * p - dy):y1 - (r0 * p - dy), dx:dx + w]
        yield slice(y0, y1), out


def _read(x: torch.Tensor, lo: int, hi: int, dim: int, circular: bool, tail: torch.Tensor | None = None):
    """Indices lo..hi-1 of x along ``dim``, those outside 0..n-1 as zeros, or circularly (modulo n) when
    ``circular``; indices from n on are then read from ``tail`` (default x; a copy of x's first entries taken before
    a streaming caller updated them)."""
    n = x.shape[dim]
    if circular:
        tail = x if tail is None else tail
        cut = min(max(lo, n), hi)  # indices from here on are read from the tail
        ahead = torch.arange(lo, cut, device=x.device) % n
        after = torch.arange(cut, hi, device=x.device) % n
        if not len(after):
            return x.index_select(dim, ahead)
        return torch.cat([x.index_select(dim, ahead), tail.index_select(dim, after)], dim=dim)
    before, inside = max(0, min(hi, 0) - lo), max(0, min(hi, n) - max(lo, 0))
    pads = [0, 0] * (x.dim() - dim % x.dim())
    pads[-2:] = [before, hi - lo - before - inside]
    return F.pad(x.narrow(dim, min(max(lo, 0), n), inside), pads)


def padded_rows(x: torch.Tensor, a: int, b_: int, p: int, wrap: str = "", head: torch.Tensor | None = None,
                offset: tuple = (0, 0), cols: int | None = None):
    """Patch rows a..b-1 of the half-patch-padded canvas, (B, C, (b-a)*p, cols*p), without padding the whole canvas.

    With a vertical wrap the rows above the canvas come from its bottom and those below from ``head`` (the first
    rows, default: read from x now). offset (dy, dx) moves the grid dy pixels up and dx left; ``cols`` padded
    columns are read (default W/p + 1)."""
    s, (dy, dx) = p // 2, offset
    wy, wx = wrap_axes(wrap)
    part = _read(x, a * p - s - dy, b_ * p - s - dy, -2, wy, head)
    cols = cols or x.shape[-1] // p + 1
    return _read(part, -s - dx, cols * p - s - dx, -1, wx)


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


def shifted_canvas_prediction(unet, x_t, t, code, patch_size: int, shift=(0, 0), pos_keep=None, wrap: str = "",
                              max_patches: int | None = None) -> torch.Tensor:
    """The prediction over whole canvases from independent patches, without feature collage: the ablations.

    The patch grid starts ``shift`` = (sy, sx) pixels above and left of the canvas (0 <= s < p): patch (k, l) covers
    rows k p - sy .. (k+1) p - sy and sits at position (k + 1/2 - sy/p, l + 1/2 - sx/p), the positions the ablations
    train at (shift (0, 0) is the image grid at half-integer positions, (p/2, p/2) the padded grid at integers).
    The overhang is zero-padded (circular along ``wrap``) and cropped off the stitched prediction. max_patches
    bounds how many patches one forward sees (same result).
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
    out = [unet(patches[i:i + step], tt[i:i + step], pos[i:i + step], cc[i:i + step],
                None if kk is None else kk[i:i + step]) for i in range(0, len(patches), step)]
    return stitch(torch.cat(out), (rows, cols))[..., sy:sy + h, sx:sx + w]
