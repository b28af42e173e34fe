"""How Patch-DM samples: its processes from the config, the canvas driver that runs a generic sampler
(diffusion/samplers.py) over the Denoiser, and the code DDPM's sampler over semantic codes.

``sample_canvas`` is what the scripts call: a Denoiser, noise, codes, the process and a sampler in, images out.
Banded with the feature collage, the canvas is updated in place band by band (streamed); otherwise the whole canvas
per step. The pixel-space collage modes shift their grid by the sampling step, which reaches them through the model
function's step argument.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from diffusion import ONE_STEP, constant_beta_process, make_process, make_step, repaint, respaced, run_steps, supported
from runtime.rng import rng
from .denoiser import PLAIN, CanvasOptions


def image_process(d):
    """The image model's process from a DiffusionConfig (linear betas with the eps or v target, or rectified flow)."""
    return make_process(d.objective, d.num_timesteps, d.beta_start, d.beta_end)


def code_process(lc):
    """The code DDPM's process from a LatentConfig (constant betas, eps or v)."""
    return constant_beta_process(lc.objective, lc.num_timesteps, lc.beta)


def sampling_process(d, sampler: str, steps: int, timestep_spacing: str | None = None):
    """The respaced image process a sampler runs on (the sampler's spacing, or ``timestep_spacing``)."""
    return respaced(image_process(d), sampler, steps, timestep_spacing)


@torch.no_grad()
def sample_canvas(den, x_T: torch.Tensor, code: torch.Tensor, process, sampler: str = "ddim",
                  opts: CanvasOptions = PLAIN, known=None, resample: int = 1, progress: bool = False) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] from noise x_T and codes (B, D) with a Denoiser and a respaced process (the
    model's objective: ``sampling_process(cfg.diffusion, sampler, steps)``).

    sampler: one of diffusion.SAMPLERS ("ddim", the paper's, is Euler on a flow model). opts: guidance, bands, wrap,
    seed, clipping, in place (CanvasOptions). known = (x_known, mask) conditions on known pixels (replacement, RePaint
    with resample > 1; one-step samplers only)."""
    if known is not None and sampler not in ONE_STEP:
        raise ValueError(f"known pixels (inpainting) need a one-step sampler (ddim), not {sampler}: RePaint "
                         "re-noises x between steps, which a multistep history cannot follow")
    if opts.seamless is not None and not den.streams:
        raise ValueError(f"seamless sampling moves the feature collage's grid; the {den.mode.name} collage shifts "
                         "its own")
    last = process.num_timesteps - 1  # steps are counted from the first (k = 0): the grid shifts and offsets
    plain = replace(opts, seamless=None)

    def at(i):  # the options of step i: the seamless grids only where they act
        return opts if opts.seamless is not None and opts.seamless.active(process, i) else plain

    if opts.banded and den.streams and sampler != "heun":
        step = make_step(sampler, process, bands_fn=lambda x, t, i: den.predict_bands(x, t, code, at(i), last - i),
                         clip_x0=opts.clip_x0)
        x = x_T if opts.in_place else x_T.clone()
    else:
        step = make_step(sampler, process, lambda x, t, i: den.predict(x, t, code, at(i), step=last - i),
                         clip_x0=opts.clip_x0)
        x = x_T
    if known is not None:
        return repaint(step, x, process, *known, resample=resample, seed=opts.seed, progress=progress, desc=sampler)
    return run_steps(step, x, process, progress, desc=sampler)


@torch.no_grad()
def sample_codes(latent_net, z_T: torch.Tensor, steps: int = 50, process=None, progress: bool = False,
                 sampler: str = "ddim") -> torch.Tensor:
    """The code DDPM's sampler (DDIM, eta 0, no clipping; or a multistep solver) through the latent MLP with its own
    process (default: the paper's constant-0.008 eps one): z_T (B, D) -> codes (B, D)."""
    process = process or constant_beta_process()
    why = supported(sampler, process.objective)
    if why:
        raise ValueError(why)
    process = respaced(process, sampler, steps)
    step = make_step(sampler, process, lambda z, t, i: latent_net(z, t), clip_x0=False)
    return run_steps(step, z_T, process, progress, desc=sampler)


def bundle_codes(bundle, z_T: torch.Tensor, steps: int, sampler: str = "ddim") -> torch.Tensor:
    """Codes from a full checkpoint's code DDPM (Bundle), z-normalisation undone where it was trained so."""
    code = sample_codes(bundle.latent, z_T, steps, code_process(bundle.cfg.latent), sampler=sampler)
    if bundle.z_mean is not None:
        code = code * bundle.z_std.to(code.device) + bundle.z_mean.to(code.device)
    return code


def per_image_noise(seed: int, k: int, code_dim: int, hw: tuple):
    """z_T (code_dim,) and x_T (3, H, W) of image k, from its own generator (independent of the batch)."""
    g = rng(seed, "image", k)
    return torch.randn(code_dim, generator=g), torch.randn(3, *hw, generator=g)
