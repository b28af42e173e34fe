"""The documented functional API (README, "Python API") as thin wrappers over ``model.Denoiser`` and the samplers,
with the official schedule as default. Their signatures and results are kept across versions."""

from __future__ import annotations

import torch

from model.canvas import canvas_eps  # noqa: F401  (re-exported: one evaluation over whole canvases)
from model.denoiser import Denoiser
from .samplers import sample_canvas
from .schedule import Schedule, default_schedule


def guided_canvas_eps(unet, x_t, t, code, patch_size, cfg_scale: float = 0.0, band_rows: int | None = None,
                      band_cols: int | None = None, wrap: str = ""):
    """eps with classifier-free guidance: (1 + w) eps(code, pos) - w eps(0, null pos); w = 0 is canvas_eps."""
    return Denoiser(unet, patch_size).eps(x_t, t, code, cfg_scale, band_rows=band_rows, band_cols=band_cols,
                                          wrap=wrap)


def patch_loss_terms(unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, window, code: torch.Tensor,
                     patch_size: int | None = None, pos_keep: torch.Tensor | None = None,
                     schedule: Schedule | None = None, per_image: bool = False, collage: str = "feature",
                     offset: tuple | None = None):
    """The official two-term patch loss for one 2x2 window of the padded grid.

    x0 (B, 3, H, W) in [-1, 1]; t (B,) in 0..T-1; noise (B, 3, H+p, W+p) over the padded canvas; window (row, col)
    with row in 0..H/p-1, col in 0..W/p-1; code (B, D) (already zeroed where CFG drops it); pos_keep (B,) or None.
    patch_size defaults to the padding, noise width minus x0 width; schedule to the linear T=1000 one.
    Returns (shift_term, noshift_term), scalars (the official loss is their sum):
      shift   = mean_b mean_chw (eps_centre - pred_shift)^2, the collaged pass for original patch (row, col);
      noshift = mean_4B mean_chw ((eps - pred)^2 * mask), the plain pass over the 4 window patches, padding masked,
                divided by all 3 p^2 elements.
    per_image=True returns the two terms per image, (B,) each. collage / offset select the ablations.
    """
    p = patch_size or (noise.shape[-1] - x0.shape[-1])
    terms = Denoiser(unet, p, collage).canvas_loss_terms(x0, t, noise, window, code, schedule or default_schedule(),
                                                         pos_keep, offset)
    return terms if per_image else (terms[0].mean(), terms[1].mean())


@torch.no_grad()
def ddim_sample_canvas(unet, x_T: torch.Tensor, code: torch.Tensor, steps: int = 50, patch_size: int = 64,
                       cfg_scale: float = 0.0, schedule: Schedule | None = None, clip_x0: bool = True,
                       progress: bool = False, band_rows: int | None = None, band_cols: int | None = None,
                       wrap: str = "", collage: str = "feature", known=None, resample: int = 1,
                       seed: int = 0, in_place: bool = False) -> torch.Tensor:
    """DDIM (eta 0, x0 clipped) over whole canvases with the stitched patch eps.

    x_T (B, 3, H, W) with H, W multiples of patch_size; code (B, D); cfg_scale w as in guided_canvas_eps;
    band_rows / band_cols: None, None for all patches at once, otherwise the canvas is updated band by band in
    place, the same result. Returns x0 (B, 3, H, W) in [-1, 1]. in_place=True lets the banded sampler overwrite x_T
    instead of a copy. Beyond the official sampler: wrap ('x', 'y', 'xy'), collage (the ablations), known =
    (x_known, mask) with resample (inpainting, diffusion/inpaint.py), seed (the random draws of those).
    """
    sched = (schedule or default_schedule()).respace(steps)
    return sample_canvas(Denoiser(unet, patch_size, collage), x_T, code, sched, cfg_scale, band_rows, band_cols, wrap,
                         seed, clip_x0, progress, in_place, known, resample)
