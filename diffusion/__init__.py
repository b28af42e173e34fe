"""Diffusion processes and samplers: noise schedules (schedule), samplers over any model function (samplers),
known-pixel conditioning (inpaint), the latent DDPM (latent), and the documented functional API (wrappers)."""

from .latent import ddim_sample_latent, latent_loss
from .samplers import ddim, ddim_loop, ddim_step, ddim_streamed, run_steps, sample_canvas
from .schedule import (Schedule, const_betas, default_schedule, latent_schedule, latent_schedule_from, linear_betas,
                       schedule_from, space_timesteps)
from .wrappers import canvas_eps, ddim_sample_canvas, guided_canvas_eps, patch_loss_terms

__all__ = ["ddim_sample_latent", "latent_loss", "ddim", "ddim_loop", "ddim_step", "ddim_streamed", "run_steps",
           "sample_canvas", "Schedule", "const_betas", "default_schedule", "latent_schedule", "latent_schedule_from",
           "linear_betas",
           "schedule_from", "space_timesteps", "canvas_eps", "ddim_sample_canvas", "guided_canvas_eps",
           "patch_loss_terms"]
