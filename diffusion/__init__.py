"""Patch-DM diffusion: schedules, the patch-grid denoiser evaluation and loss, samplers, latent DDPM."""

from .patch import (auto_band, canvas_eps, cfg_keep_masks, check_canvas, decode_collaged,
                    default_schedule, encode_grid, guided_canvas_eps, patch_loss_terms, sample_window)
from .samplers import (ddim_loop, ddim_sample_canvas, ddim_sample_latent, ddim_step, ddpm_sample_canvas,
                       latent_loss, latent_schedule)
from .schedule import Schedule, const_betas, linear_betas, space_timesteps

__all__ = ["auto_band", "canvas_eps", "cfg_keep_masks", "check_canvas", "decode_collaged",
           "default_schedule", "encode_grid", "guided_canvas_eps", "patch_loss_terms", "sample_window", "ddim_loop",
           "ddim_sample_canvas", "ddim_sample_latent", "ddim_step", "ddpm_sample_canvas", "latent_loss",
           "latent_schedule", "Schedule", "const_betas", "linear_betas", "space_timesteps"]
