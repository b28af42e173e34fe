"""Samplers as functions of a model function and a schedule (docs/FAITHFULNESS.md, "Sampling").

Every sampler takes ``model_fn(x_t, t) -> output`` (t: the network's time input, ``sched.model_t``) and a
respaced process (``Schedule`` for eps and v models, ``FlowSchedule`` for rectified flow), so one loop serves the
patch canvas and the latent MLP, and every objective: the process turns the network output into its update
(``sched.step``: DDIM for eps and v, Euler for flow, the same first-order step). The streamed variant takes
``bands_fn(x_t, t)``, which yields (pixel rows, output) in reading order (``Denoiser.eps_bands``), and updates the
canvas in place band by band: the same result with one canvas and one band of features in memory. A sampler is
built from a *step* ``step(x, i) -> x`` (from step i of the schedule to step i - 1) and a loop over the steps, so
wrappers (inpainting: diffusion/inpaint.py) act on the steps of any sampler.

``sample_canvas`` is what the scripts call: a Denoiser, codes and the sampler's settings in, images out.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .schedule import Schedule


def ddim_step(sched: Schedule, x: torch.Tensor, i: int, eps: torch.Tensor, clip_x0: bool) -> torch.Tensor:
    """One eta = 0 DDIM update from step i to i-1 of a respaced schedule (guided-diffusion arithmetic, fp32).

    Faithful: x0 is predicted, optionally clipped to [-1, 1], and eps re-derived from the clipped x0.
    """
    x0 = sched.predict_x0(x, i, eps)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    eps = sched.eps_from_x0(x, i, x0)
    abar_prev = Schedule.at(sched.alphas_cumprod_prev, i, x)
    return x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev) * eps


def ddim_update(model_fn, sched, clip_x0: bool = True):
    """step(x, i) of DDIM (Euler for a flow) with the model evaluated on the whole of x."""

    def step(x, i):
        return sched.step(x, i, model_fn(x, sched.model_t(i, x.shape[0], x.device)), clip_x0)

    return step


def streamed_ddim_update(bands_fn, sched, clip_x0: bool = True):
    """step(x, i) of DDIM (Euler for a flow) updating x in place band by band: a band's output depends only on rows
    that later bands have not yet updated, so the result equals ``ddim_update``'s."""

    def step(x, i):
        t = sched.model_t(i, x.shape[0], x.device)
        for rows, out in bands_fn(x, t):
            x[..., rows, :] = sched.step(x[..., rows, :], i, out, clip_x0)
        return x

    return step


def run_steps(step, x: torch.Tensor, sched: Schedule, progress: bool = False, desc: str = "DDIM") -> torch.Tensor:
    """Apply step(x, i) for i = T'-1 .. 0 of the respaced schedule."""
    for i in tqdm(range(sched.num_timesteps - 1, -1, -1), disable=not progress, desc=desc, leave=False):
        x = step(x, i)
    return x


def ddim(model_fn, x_T: torch.Tensor, sched, clip_x0: bool = True, progress: bool = False) -> torch.Tensor:
    """DDIM (eta 0; Euler for a flow) from x_T to x_0 over every step of the (respaced) schedule."""
    return run_steps(ddim_update(model_fn, sched, clip_x0), x_T, sched, progress)


def ddim_streamed(bands_fn, x_T: torch.Tensor, sched, clip_x0: bool = True,
                  progress: bool = False) -> torch.Tensor:
    """``ddim`` with a band model, updating x_T in place (the caller gives x_T up; copy it to keep it)."""
    return run_steps(streamed_ddim_update(bands_fn, sched, clip_x0), x_T, sched, progress)


ddim_loop = ddim  # the name of earlier versions


@torch.no_grad()
def sample_canvas(den, x_T: torch.Tensor, code: torch.Tensor, sched, cfg_scale: float = 0.0,
                  band_rows=None, band_cols=None, wrap: str = "", seed: int = 0, clip_x0: bool = True,
                  progress: bool = False, in_place: bool = False, known=None, resample: int = 1,
                  sampler: str = "ddim") -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] from noise x_T and codes (B, D) with a Denoiser and a respaced process (the
    model's objective: ``sampling_schedule(cfg.diffusion, sampler, steps)``).

    sampler: "ddim" (the paper's; Euler for a flow model, also called "euler"), or a fast solver of
    diffusion/solvers.py ("dpmpp2m", "dpmpp3m"; "heun" for flow models). Banded with the feature collage: streamed
    in place (x_T is overwritten when in_place, else a copy is); otherwise the whole canvas per step (the ablations
    chunk their independent patches by the same bands). known = (x_known, mask) conditions on known pixels
    (diffusion/inpaint.py: replacement, RePaint with resample > 1; one-step samplers only)."""
    from .solvers import make_update
    if known is not None and sampler not in ("ddim", "euler"):
        raise ValueError(f"known pixels (inpainting) need a one-step sampler (ddim), not {sampler}: RePaint "
                         "re-noises x between steps, which a multistep history cannot follow")
    if (band_rows is not None or band_cols is not None) and den.streams and sampler != "heun":
        rows = band_rows or x_T.shape[-2] // den.p
        step = make_update(sampler, bands_fn=lambda x, t: den.eps_bands(x, t, code, rows, band_cols, cfg_scale,
                                                                        wrap), sched=sched, clip_x0=clip_x0)
        x = x_T if in_place else x_T.clone()
    else:
        at = {}  # the sampling step k of the current update (the pixel-space modes shift their grid by it)
        inner = make_update(sampler, lambda x, t: den.eps(x, t, code, cfg_scale, band_rows=band_rows,
                                                          band_cols=band_cols, wrap=wrap, step=at["k"], seed=seed),
                            sched=sched, clip_x0=clip_x0)

        def step(x, i):
            at["k"] = sched.num_timesteps - 1 - i
            return inner(x, i)

        x = x_T
    if known is not None:
        from .inpaint import repaint
        return repaint(step, x, sched, *known, resample=resample, seed=seed, progress=progress)
    return run_steps(step, x, sched, progress, desc=sampler)
