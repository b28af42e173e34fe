"""The documented functional API of Patch-DM (README, "Python API"): thin wrappers over the Denoiser, the canvas
driver and the code DDPM's sampler, with the paper's process as default. Their signatures and results are kept
across versions."""

from __future__ import annotations

import torch

from diffusion import constant_beta_process, make_process
from .canvas import canvas_prediction
from .denoiser import CanvasOptions, Denoiser
from .sampling import sample_canvas, sample_codes
from .training import code_loss

canvas_eps = canvas_prediction  # one evaluation over whole canvases (eps for the paper's objective)
ddim_sample_latent = sample_codes  # the code DDPM's DDIM (or a multistep solver)


def guided_canvas_eps(unet, x_t, t, code, patch_size, cfg_scale: float = 0.0, band_rows: int | None = None,
                      band_cols: int | None = None, wrap: str = ""):
    """The prediction with classifier-free guidance: (1 + w) out(code, pos) - w out(0, null pos); w = 0 is
    canvas_eps."""
    return Denoiser(unet, patch_size).predict(x_t, t, code, CanvasOptions(cfg_scale, band_rows, band_cols, wrap))


def patch_loss_terms(unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, window, code: torch.Tensor,
                     patch_size: int | None = None, *, pos_keep: torch.Tensor | None = None, process=None,
                     per_image: bool = False, collage: str = "feature", offset: tuple | None = None):
    """The official two-term patch loss for one 2x2 window of the padded grid.

    x0 (B, 3, H, W) in [-1, 1]; t (B,) in 0..T-1; noise (B, 3, H+p, W+p) over the padded canvas; window (row, col)
    with row in 0..H/p-1, col in 0..W/p-1; code (B, D) (already zeroed where CFG drops it); pos_keep (B,) or None.
    patch_size defaults to the padding, noise width minus x0 width; the process to the paper's (linear, T = 1000,
    eps). Returns (shift_term, noshift_term), scalars (the official loss is their sum):
      shift   = mean_b mean_chw (eps_centre - pred_shift)^2, the collaged pass for original patch (row, col);
      noshift = mean_4B mean_chw ((eps - pred)^2 * mask), the plain pass over the 4 window patches, padding masked,
                divided by all 3 p^2 elements.
    per_image=True returns the two terms per image, (B,) each. collage / offset select the ablations.
    """
    p = patch_size or (noise.shape[-1] - x0.shape[-1])
    terms = Denoiser(unet, p, collage).canvas_loss_terms(x0, t, noise, window, code, process or make_process(),
                                                         pos_keep, offset)
    return terms if per_image else (terms[0].mean(), terms[1].mean())


@torch.no_grad()
def ddim_sample_canvas(unet, x_T: torch.Tensor, code: torch.Tensor, steps: int = 50, patch_size: int = 64,
                       cfg_scale: float = 0.0, *, process=None, collage: str = "feature", known=None,
                       resample: int = 1, progress: bool = False, **options) -> torch.Tensor:
    """DDIM (eta 0, x0 clipped) over whole canvases with the stitched patch prediction.

    x_T (B, 3, H, W) with H, W multiples of patch_size; code (B, D); cfg_scale w as in guided_canvas_eps. Returns x0
    (B, 3, H, W) in [-1, 1]. ``options`` are those of CanvasOptions: band_rows / band_cols (None, None for all
    patches at once; otherwise the canvas is updated band by band in place, the same result), clip_x0, wrap ('x',
    'y', 'xy'), seed (the random draws of the ablations and of inpainting), in_place (the banded sampler may overwrite
    x_T instead of a copy), seamless (a Seamless: moved or combined patch grids, seamless.py). Beyond the official
    sampler: wrap, seamless, collage (the ablations), known = (x_known, mask) with resample (inpainting,
    diffusion/inpaint.py).
    """
    den = Denoiser(unet, patch_size, collage)
    return sample_canvas(den, x_T, code, (process or make_process()).respace(steps), "ddim",
                         CanvasOptions(cfg_scale, **options), known, resample, progress)


def latent_loss(latent_net, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, process=None) -> torch.Tensor:
    """The code DDPM's L1 loss (eps target by default, the paper's)."""
    return code_loss(latent_net, z0, t, noise, process or constant_beta_process())
