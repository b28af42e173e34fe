"""Samplers: DDIM (eta 0) and DDPM ancestral, over canvases of any size and over latent codes (spec §7, §8).

A sampler takes ``eps_fn(x_t, t) -> eps`` (t the original timestep indices, (B,) long) so the same loop serves the
patch canvas and the latent MLP.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .patch import (canvas_eps_bands, cfg_combine, cfg_conditions, check_collage, default_schedule, guided_canvas_eps,
                    guided_shifted_eps, pixel_shift)
from .schedule import Schedule, const_betas


def ddim_step(sched: Schedule, x: torch.Tensor, i: int, eps: torch.Tensor, clip_x0: bool) -> torch.Tensor:
    """One eta = 0 DDIM update from step i to i-1 of a respaced schedule (guided-diffusion arithmetic, fp32).

    Faithful: x0 is predicted, optionally clipped to [-1, 1], and eps re-derived from the clipped x0 (spec §7).
    """
    x0 = sched.predict_x0(x, i, eps)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    eps = sched.eps_from_x0(x, i, x0)
    abar_prev = Schedule.at(sched.alphas_cumprod_prev, i, x)
    return x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev) * eps


def ddim_loop(eps_fn, x_T: torch.Tensor, sched: Schedule, clip_x0: bool, progress: bool = False) -> torch.Tensor:
    """Run DDIM over every step of the (respaced) schedule, from x_T to x_0."""
    x = x_T
    for i in tqdm(range(sched.num_timesteps - 1, -1, -1), disable=not progress, desc="DDIM", leave=False):
        eps = eps_fn(x, sched.model_t(i, x.shape[0], x.device))
        x = ddim_step(sched, x, i, eps.to(x.dtype), clip_x0)
    return x


@torch.no_grad()
def ddim_sample_canvas(unet, x_T: torch.Tensor, code: torch.Tensor, steps: int = 50, patch_size: int = 64,
                       cfg_scale: float = 0.0, schedule: Schedule | None = None, clip_x0: bool = True,
                       progress: bool = False, band_rows: int | None = None, band_cols: int | None = None,
                       wrap: str = "", collage: str = "feature", known=None, resample: int = 1,
                       seed: int = 0, in_place: bool = False) -> torch.Tensor:
    """DDIM (eta 0, x0 clipped) over whole canvases with the stitched patch eps (spec §7).

    x_T (B, 3, H, W) with H, W multiples of patch_size; code (B, D); cfg_scale w as in guided_canvas_eps;
    band_rows / band_cols as in canvas_eps (None, None: all patches at once; otherwise the canvas is updated band
    by band in place, the same result). Returns x0 (B, 3, H, W) in [-1, 1]. in_place=True lets the banded sampler
    overwrite x_T instead of a copy (one canvas less memory; the caller gives x_T up).

    Beyond the official sampler:
      wrap      'x', 'y' or 'xy': circular padding, seamless across that edge (panoramas, tiles).
      collage   the model's collage mode (``window_loss_terms``); the pixel-space ablations sample with
                ``shifted_canvas_eps`` and the grid shifts of ``pixel_shift(collage, k, p, seed)``.
      known     (x_known (B, 3, H, W), mask (B or 1, 1, H, W), 1 = keep) for inpainting / outpainting: before every
                step the kept pixels are replaced by x_known forward-noised to that step (fresh noise from ``seed``),
                and the result holds x_known exactly there. resample = r > 1 repeats each step r times, re-noising
                x_{t-1} to x_t in between (RePaint), which harmonises the boundary at r times the cost.
    """
    sched = (schedule or default_schedule()).respace(steps)
    check_collage(collage)
    banded = band_rows is not None or band_cols is not None
    if banded and collage == "feature":  # streamed: x is updated in place band by band
        step = _streamed_step(unet, code, sched, patch_size, cfg_scale, clip_x0,
                              band_rows or x_T.shape[-2] // patch_size, band_cols, wrap)
        x = x_T if in_place else x_T.clone()
    else:
        max_patches = None if not banded else x_T.shape[0] * (band_rows or x_T.shape[-2] // patch_size + 1) * (
            band_cols or x_T.shape[-1] // patch_size + 1)  # the ablations' patches are independent: plain chunks
        step = _whole_step(unet, code, sched, patch_size, cfg_scale, clip_x0, wrap, collage, seed, max_patches)
        x = x_T
    cond = None if known is None else KnownRegion(*known, sched, seed)
    if resample < 1:
        raise ValueError(f"resample must be at least 1, got {resample}")
    n = sched.num_timesteps
    for k in tqdm(range(n), disable=not progress, desc="DDIM", leave=False):
        i = n - 1 - k
        for r in range(resample if cond is not None else 1):
            if cond is not None:
                x = cond.impose(x, i)
            x = step(x, i, k)
            if r < resample - 1 and i > 0:
                x = cond.renoise(x, i)
    return x if cond is None else cond.finish(x)


def _whole_step(unet, code, sched, p, cfg_scale, clip_x0, wrap, collage, seed, max_patches=None):
    """step(x, i, k) -> x at step i-1, evaluating the whole canvas at once (the official way)."""

    def step(x, i, k):
        t = sched.model_t(i, x.shape[0], x.device)
        if collage == "feature":
            eps = guided_canvas_eps(unet, x, t, code, p, cfg_scale, wrap=wrap)
        else:
            eps = guided_shifted_eps(unet, x, t, code, p, pixel_shift(collage, k, p, seed), cfg_scale, wrap,
                                     max_patches)
        return ddim_step(sched, x, i, eps.to(x.dtype), clip_x0)

    return step


def _streamed_step(unet, code, sched, p, cfg_scale, clip_x0, band_rows, band_cols, wrap):
    """step(x, i, k) updating x in place band by band: the eps of a band depends only on rows that later bands have
    not yet updated (``canvas_eps_bands``), so the result equals the all-at-once sampler while memory holds one
    canvas and one band of features."""

    def step(x, i, k):
        b = x.shape[0]
        t = sched.model_t(i, b, x.device)
        if cfg_scale:  # the guided batch doubles each band's rows only, not the canvas
            t2, code2, keep = cfg_conditions(t, code)
            bands = canvas_eps_bands(unet, x, t2, code2, p, band_rows, keep, band_cols, wrap, repeat=2)
        else:
            bands = canvas_eps_bands(unet, x, t, code, p, band_rows, band_cols=band_cols, wrap=wrap)
        for rows, eps in bands:
            if cfg_scale:
                eps = cfg_combine(eps, cfg_scale)
            x[..., rows, :] = ddim_step(sched, x[..., rows, :], i, eps.to(x.dtype), clip_x0)
        return x

    return step


class KnownRegion:
    """Conditioning on known pixels (inpainting / outpainting) by replacement, optionally with RePaint resampling.

    impose(x, i): the kept pixels of x_t become q_sample(x_known, t_i) with fresh noise; renoise(x, i): x_{i-1} ->
    x_i by the forward step q(x_i | x_{i-1}); finish(x): the kept pixels become x_known exactly.
    """

    def __init__(self, x_known: torch.Tensor, mask: torch.Tensor, sched: Schedule, seed: int = 0):
        self.x, self.sched = x_known, sched
        self.mask = mask.to(x_known.dtype)
        self.g = torch.Generator(x_known.device).manual_seed(seed)

    def _noise(self, like):
        return torch.randn(like.shape, generator=self.g, device=like.device, dtype=like.dtype)

    def _keep(self, x, known):
        return x * (1 - self.mask) + known.to(x.dtype) * self.mask

    def impose(self, x, i: int):
        return self._keep(x, self.sched.q_sample(self.x, i, self._noise(self.x)))

    def renoise(self, x, i: int):
        beta = Schedule.at(self.sched.betas, i, x)
        return torch.sqrt(1 - beta) * x + torch.sqrt(beta) * self._noise(x)

    def finish(self, x):
        return self._keep(x, self.x)


@torch.no_grad()
def ddpm_sample_canvas(unet, x_T: torch.Tensor, code: torch.Tensor, patch_size: int = 64, steps: int = 1000,
                       cfg_scale: float = 0.0, schedule: Schedule | None = None, generator=None,
                       progress: bool = False) -> torch.Tensor:
    """DDPM ancestral sampling with the 'fixed_large' variance and clipped x0 (official in-training previews)."""
    sched = (schedule or default_schedule()).respace(steps)
    x = x_T
    for i in tqdm(range(sched.num_timesteps - 1, -1, -1), disable=not progress, desc="DDPM", leave=False):
        eps = guided_canvas_eps(unet, x, sched.model_t(i, x.shape[0], x.device), code, patch_size, cfg_scale)
        x0 = sched.predict_x0(x, i, eps.to(x.dtype)).clamp(-1, 1)
        mean = Schedule.at(sched.posterior_mean_coef1, i, x) * x0 + Schedule.at(sched.posterior_mean_coef2, i, x) * x
        if i > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + torch.exp(0.5 * Schedule.at(sched.fixed_large_log_variance, i, x)) * noise
        else:
            x = mean
    return x


_LATENT = {}


def latent_schedule(num_timesteps: int = 1000, beta: float = 0.008) -> Schedule:
    """The latent DDPM's constant-beta schedule (spec §8)."""
    key = (num_timesteps, beta)
    if key not in _LATENT:
        _LATENT[key] = Schedule(const_betas(num_timesteps, beta))
    return _LATENT[key]


@torch.no_grad()
def ddim_sample_latent(latent_net, z_T: torch.Tensor, steps: int = 50, schedule: Schedule | None = None,
                       progress: bool = False) -> torch.Tensor:
    """DDIM (eta 0, no clipping) through the latent MLP with its own schedule: z_T (B, D) -> codes (B, D)."""
    sched = (schedule or latent_schedule()).respace(steps)
    return ddim_loop(lambda z, t: latent_net(z, t), z_T, sched, clip_x0=False, progress=progress)


def latent_loss(latent_net, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                schedule: Schedule | None = None) -> torch.Tensor:
    """Latent DDPM loss: L1 between eps and the MLP's prediction, mean over dims then batch (spec §8)."""
    sched = schedule or latent_schedule()
    z_t = sched.q_sample(z0, t, noise)
    return (noise - latent_net(z_t, t).float()).abs().mean()
