"""A second, independent expression of the official Patch-DM computations, used only by tests.

It reads raw state-dict tensors by their official names and follows the official code's structure
(docs/FAITHFULNESS.md):
per-level skip lists popped LIFO, ``apply_conditions`` order, ``QKVAttentionLegacy`` reshapes, collage applied to a
skip when its batch differs from h's, patchify of the whole padded canvas, and the DDIM update done per padded
patch before stitching and cropping. The project's modules are checked against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def timestep_embedding(v, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = v[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _gn(x, sd, key):
    c = x.shape[1]
    return F.group_norm(x.float(), min(32, c), sd[key + ".weight"], sd[key + ".bias"], 1e-5).type(x.dtype)


def _lin(x, sd, key):
    return F.linear(x, sd[key + ".weight"], sd[key + ".bias"])


def resblock(sd, pre, x, emb=None, cond=None, lateral=None, updown=None):
    if lateral is not None:
        x = torch.cat([x, lateral], dim=1)
    h = F.silu(_gn(x, sd, pre + ".in_layers.0"))
    if updown == "down":
        h, x = F.avg_pool2d(h, 2, 2), F.avg_pool2d(x, 2, 2)
    elif updown == "up":
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    h = F.conv2d(h, sd[pre + ".in_layers.2.weight"], sd[pre + ".in_layers.2.bias"], padding=1)
    if pre + ".emb_layers.1.weight" in sd:
        emb_out = _lin(F.silu(emb), sd, pre + ".emb_layers.1")[..., None, None]
        cond_out = _lin(F.silu(cond), sd, pre + ".cond_emb_layers.1")[..., None, None]
        # apply_conditions: [(scale, shift) of emb, (scale, None) of cond], biases 1, after the group norm.
        a, b = torch.chunk(emb_out, 2, dim=1)
        h = _gn(h, sd, pre + ".out_layers.0")
        for scale, shift in [(a, b), (cond_out, None)]:
            h = h * (1 + scale)
            if shift is not None:
                h = h + shift
        h = F.conv2d(F.silu(h), sd[pre + ".out_layers.3.weight"], sd[pre + ".out_layers.3.bias"], padding=1)
    if pre + ".skip_connection.weight" in sd:
        x = F.conv2d(x, sd[pre + ".skip_connection.weight"], sd[pre + ".skip_connection.bias"])
    return x + h


def attention(sd, pre, x):
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    qkv = F.conv1d(_gn(x, sd, pre + ".norm"), sd[pre + ".qkv.weight"], sd[pre + ".qkv.bias"])
    bs, width, length = qkv.shape
    ch = width // 3
    q, k, v = qkv.reshape(bs, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
    h = F.conv1d(a, sd[pre + ".proj_out.weight"], sd[pre + ".proj_out.bias"])
    return (x + h).reshape(b, c, *spatial)


def run_block(sd, pre, x, emb, cond, lateral=None):
    """A TimestepEmbedSequential: members pre.0, pre.1, ... recognised by their parameter names."""
    j = 0
    while any(k.startswith(f"{pre}.{j}.") for k in sd):
        sub = f"{pre}.{j}"
        if sub + ".qkv.weight" in sd:
            x = attention(sd, sub, x)
        elif sub + ".in_layers.0.weight" in sd:
            updown = None
            if sd.get("_updown", {}).get(sub):
                updown = sd["_updown"][sub]
            x = resblock(sd, sub, x, emb, cond, lateral if j == 0 else None, updown)
        else:
            x = F.conv2d(x, sd[sub + ".weight"], sd[sub + ".bias"], padding=1)
        j += 1
    return x


def annotate_updown(sd, levels, blocks_per_level=2):
    """Mark which ResBlocks resample, by the official construction order (FAITHFULNESS.md: Architecture)."""
    ud = {}
    k = 1 + blocks_per_level
    for _ in range(levels - 1):
        ud[f"input_blocks.{k}.0"] = "down"
        k += 1 + blocks_per_level
    k = 0
    for level in reversed(range(levels)):
        k += blocks_per_level + 1
        if level:
            last = max(int(key.split(".")[2]) for key in sd if key.startswith(f"output_blocks.{k - 1}."))
            ud[f"output_blocks.{k - 1}.{last}"] = "up"
    sd = dict(sd)
    sd["_updown"] = ud
    return sd


def collage(x, rows, cols):
    """Official-style reshape: (B*rows*cols, c, s, s) -> mosaic -> crop s/2 -> (B*(rows-1)*(cols-1), c, s, s)."""
    n, c, s, _ = x.shape
    b = n // (rows * cols)
    mosaic = torch.zeros(b, c, rows * s, cols * s, dtype=x.dtype)
    for i in range(b):
        for r in range(rows):
            for q in range(cols):
                mosaic[i, :, r * s:(r + 1) * s, q * s:(q + 1) * s] = x[i * rows * cols + r * cols + q]
    mosaic = mosaic[:, :, s // 2: -(s // 2), s // 2: -(s // 2)]
    out = []
    for i in range(b):
        for r in range(rows - 1):
            for q in range(cols - 1):
                out.append(mosaic[i, :, r * s:(r + 1) * s, q * s:(q + 1) * s])
    return torch.stack(out)


def embed(sd, t, pos, time_dim, pos_dim, pos_keep=None):
    p = torch.cat([timestep_embedding(pos[:, 0], pos_dim), timestep_embedding(pos[:, 1], pos_dim)], dim=1)
    if pos_keep is not None:
        p = p * pos_keep[:, None]
    te = _lin(F.silu(_lin(timestep_embedding(t, time_dim), sd, "time_embed.time_embed.0")), sd,
              "time_embed.time_embed.2")
    pe = _lin(F.silu(_lin(p, sd, "time_embed.pos_embed.0")), sd, "time_embed.pos_embed.2")
    return torch.cat([te, pe], dim=1)


def unet_forward(sd, x, t, code, enc_pos, dec_pos, grid, levels, time_dim, pos_dim, shift=True, pos_keep=None):
    """The official patch forward: x (B*R*C, 3, p, p) padded patches; returns eps for shifted (or plain) patches."""
    enc_emb = embed(sd, t, enc_pos, time_dim, pos_dim, pos_keep)
    n_in = sum(1 for k in sd if k.startswith("input_blocks.") and k.endswith(".0.in_layers.0.weight")) + 1
    per_level = n_in // levels
    hs = [[] for _ in range(levels)]
    h, k = x, 0
    for lvl in range(levels):
        for _ in range(per_level):
            h = run_block(sd, f"input_blocks.{k}", h, enc_emb, code)
            hs[lvl].append(h)
            k += 1
    h = run_block(sd, "middle_block", h, enc_emb, code)
    rows, cols = grid
    if shift:
        h = collage(h, rows, cols)
        n_dec = h.shape[0]
        b = x.shape[0] // (rows * cols)
        dec_emb = embed(sd, t[::rows * cols].repeat_interleave(n_dec // b), dec_pos, time_dim, pos_dim,
                        None if pos_keep is None else pos_keep[::rows * cols].repeat_interleave(n_dec // b))
        dec_code = code[::rows * cols].repeat_interleave(n_dec // b, dim=0)
    else:
        dec_emb, dec_code = enc_emb, code
    k = 0
    for i in range(levels):
        for _ in range(per_level):
            lateral = hs[-i - 1].pop()
            if lateral.shape[0] != h.shape[0]:
                lateral = collage(lateral, rows, cols)
            h = run_block(sd, f"output_blocks.{k}", h, dec_emb, dec_code, lateral)
            k += 1
    h = F.silu(_gn(h, sd, "out.0"))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)


def patchify(x, p):
    b, c, hh, ww = x.shape
    out = []
    for i in range(b):
        for r in range(hh // p):
            for q in range(ww // p):
                out.append(x[i, :, r * p:(r + 1) * p, q * p:(q + 1) * p])
    return torch.stack(out)


def unpatchify(x, b, rows, cols):
    p = x.shape[-1]
    out = torch.zeros(b, x.shape[1], rows * p, cols * p, dtype=x.dtype)
    for i in range(b):
        for r in range(rows):
            for q in range(cols):
                out[i, :, r * p:(r + 1) * p, q * p:(q + 1) * p] = x[i * rows * cols + r * cols + q]
    return out


def canvas_eps(sd, x_t, t, code, p, levels, time_dim, pos_dim, pos_keep=None):
    b, _, hh, ww = x_t.shape
    rows, cols = hh // p + 1, ww // p + 1
    patches = patchify(F.pad(x_t, (p // 2,) * 4), p)
    r, q = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    enc_pos = torch.stack([r.flatten(), q.flatten()], 1).float().repeat(b, 1)
    r, q = torch.meshgrid(torch.arange(rows - 1), torch.arange(cols - 1), indexing="ij")
    dec_pos = (torch.stack([r.flatten(), q.flatten()], 1).float() + 0.5).repeat(b, 1)
    n = rows * cols
    keep = None if pos_keep is None else pos_keep.repeat_interleave(n)
    eps = unet_forward(sd, patches, t.repeat_interleave(n), code.repeat_interleave(n, 0), enc_pos, dec_pos,
                       (rows, cols), levels, time_dim, pos_dim, pos_keep=keep)
    return unpatchify(eps, b, rows - 1, cols - 1)


def ddim_canvas(sd, x, code, p, levels, time_dim, pos_dim, alphas_cumprod, use_t, cfg_w=0.0):
    """Official DDIM: numpy-style float64 constants gathered to float32; update per padded patch; crop."""
    import numpy as np
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    spaced, last = [], 1.0
    for i, a in enumerate(ac):
        if i in use_t:
            spaced.append(1 - a / last)
            last = a
    acs = np.cumprod(1.0 - np.array(spaced))
    acs_prev = np.append(1.0, acs[:-1])
    s = p // 2
    b, _, hh, ww = x.shape
    for i in reversed(range(len(use_t))):
        t = torch.full((b,), sorted(use_t)[i], dtype=torch.long)
        if cfg_w:
            e = canvas_eps(sd, torch.cat([x, x]), torch.cat([t, t]), torch.cat([code, code * 0]), p, levels,
                           time_dim, pos_dim, pos_keep=torch.cat([torch.ones(b), torch.zeros(b)]))
            eps = (1 + cfg_w) * e[:b] - cfg_w * e[b:]
        else:
            eps = canvas_eps(sd, x, t, code, p, levels, time_dim, pos_dim)
        xp, ep = patchify(F.pad(x, (s,) * 4), p), patchify(F.pad(eps, (s,) * 4), p)
        f32 = lambda v: torch.tensor(v).float()  # noqa: E731
        sr, srm1 = f32(np.sqrt(1.0 / acs[i])), f32(np.sqrt(1.0 / acs[i] - 1))
        x0 = (sr * xp - srm1 * ep).clamp(-1, 1)
        e2 = (sr * xp - x0) / srm1
        ap = f32(acs_prev[i])
        xp = x0 * torch.sqrt(ap) + torch.sqrt(1 - ap) * e2
        x = unpatchify(xp, b, hh // p + 1, ww // p + 1)[:, :, s:-s, s:-s]
    return x


def training_terms(sd, x0, t, noise, window, code, p, levels, time_dim, pos_dim, alphas_cumprod):
    """Official training_losses: patchify the full padded x_t, pick the 2x2 window patches by index."""
    b, _, hh, ww = x0.shape
    rows, cols = hh // p + 1, ww // p + 1
    mask = F.pad(torch.ones(b, 1, hh, ww), (p // 2,) * 4)
    sa = torch.tensor(alphas_cumprod, dtype=torch.float64)[t].float()[:, None, None, None]
    x_t = (sa.sqrt() * F.pad(x0, (p // 2,) * 4) + (1 - sa).sqrt() * noise) * mask
    ix, iy = window
    idx = [ix * cols + iy, ix * cols + iy + 1, (ix + 1) * cols + iy, (ix + 1) * cols + iy + 1]
    sel = lambda z: patchify(z, p).reshape(b, rows * cols, *z.shape[1:2], p, p)[:, idx].reshape(-1, z.shape[1], p, p)  # noqa
    xw, ew, mw = sel(x_t), sel(noise), sel(mask)
    enc_pos = torch.tensor([[ix, iy], [ix, iy + 1], [ix + 1, iy], [ix + 1, iy + 1]]).float().repeat(b, 1)
    dec_pos = torch.tensor([[ix + 0.5, iy + 0.5]]).repeat(b, 1)
    t4, c4 = t.repeat_interleave(4), code.repeat_interleave(4, 0)
    pred1 = unet_forward(sd, xw, t4, c4, enc_pos, dec_pos, (2, 2), levels, time_dim, pos_dim, shift=True)
    pred2 = unet_forward(sd, xw, t4, c4, enc_pos, dec_pos, (2, 2), levels, time_dim, pos_dim, shift=False)
    target1 = noise[:, :, ix * p + p // 2: ix * p + 3 * p // 2, iy * p + p // 2: iy * p + 3 * p // 2]
    term1 = ((target1 - pred1) ** 2).mean(dim=(1, 2, 3)).mean()
    term2 = (((ew - pred2) ** 2) * mw).mean(dim=(1, 2, 3)).mean()
    return term1, term2
