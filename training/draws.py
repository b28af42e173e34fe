"""The random draws of a training step, each a function of (run seed, step, sample index) only (runtime/rng.py):
the same draws whatever the number of processes, and a resumed run draws what the uninterrupted one would have."""

from __future__ import annotations

import torch

from diffusion.schedule import schedule_from
from model.collages import collage_mode
from runtime.rng import rng, seed_for


def sample_window(h: int, w: int, p: int, generator: torch.Generator | None = None) -> tuple:
    """The training window's top-left padded-grid index, uniform over (0..H/p-1) x (0..W/p-1), shared by the batch.

    Deviation: drawn from a torch.Generator instead of Python's ``random`` (same distribution, reproducible).
    """
    row = int(torch.randint(h // p, (1,), generator=generator))
    col = int(torch.randint(w // p, (1,), generator=generator))
    return row, col


def cfg_keep_masks(batch: int, code_drop: float = 0.1, pos_drop: float = 0.5,
                   generator: torch.Generator | None = None, device=None):
    """Per-image CFG dropout masks: keep the code if r >= code_drop, the positions if r' >= pos_drop (drawn
    independently). Returns (code_keep, pos_keep), float (B,) of 0/1."""
    r = torch.rand(2, batch, generator=generator)
    return (r[0] >= code_drop).float().to(device), (r[1] >= pos_drop).float().to(device)


def window_at(cfg, step: int) -> tuple:
    """The training window of a step (shared by every rank and sample; the data loader asks for it too)."""
    h, w = cfg.data.image_size
    return sample_window(h, w, cfg.model.patch_size, rng(cfg.training.seed, "window", step))


def draw(cfg, step: int, rank: int, b: int, world: int, device):
    """Window, timesteps, noise, CFG masks and pixel offset (the pixel_random ablation; else None) of this rank's
    slice of the global batch at ``step``. Also seeds dropout for the step (per rank: the only draw that differs
    with the number of processes)."""
    seed, p = cfg.training.seed, cfg.model.patch_size
    window = window_at(cfg, step)
    g = rng(seed, "timesteps", step)
    mine = slice(rank * b, (rank + 1) * b)
    t = schedule_from(cfg.diffusion).draw_t(b * world, g)[mine]  # step indices, or flow times in [0, 1)
    masks = (None, None)
    if cfg.training.cfg:
        code_keep, pos_keep = cfg_keep_masks(b * world, cfg.training.cfg_code_drop, cfg.training.cfg_pos_drop, g)
        masks = (code_keep[mine].to(device), pos_keep[mine].to(device))
    # Deviation: only the window's noise is drawn (the official code draws the whole padded canvas); the loss never
    # sees the rest, so it is the same function.
    noise = torch.empty(b, 3, 2 * p, 2 * p, device=device)
    for i, j in enumerate(range(rank * b, (rank + 1) * b)):
        noise[i] = torch.randn(3, 2 * p, 2 * p, generator=rng(seed, "noise", step, j, device=device), device=device)
    offset = None
    if collage_mode(cfg.model.collage).random_offset:  # the shifted crop's offset in the window, shared by the batch
        offset = tuple(torch.randint(p, (2,), generator=rng(seed, "offset", step)).tolist())
    torch.manual_seed(seed_for(seed, "dropout", step, rank))
    return window, t.to(device), noise, masks, offset
