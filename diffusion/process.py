"""Processes: what a diffusion objective means for the loss and for the samplers, in one object.

A process answers the trainers and the samplers alike, so the two cannot drift apart:

  loss       draw_t(n, generator) -> t      the loss times of a batch (step indices, or flow times in [0, 1))
             corrupt(x0, t, noise) -> x_t   the noisy input
             target(x0, t, noise)           what the network learns to output (its prediction: eps, v, velocity)
             net_t(t)                       the network's time input for loss times t
  sampling   respace(steps, spacing)        the process over ``steps`` sampler steps; step i goes to step i - 1
             num_timesteps                  the number of steps (i = num_timesteps - 1 .. 0)
             model_t(i, batch, device)      the network's time input at step i
             alpha_sigma(i)                 (alpha, sigma) of x_i = alpha x0 + sigma eps; i = -1 is the clean end
             to_x0(x, i, out)               the x0 the network output implies
             step(x, i, out, clip_x0)       the process's own one-network-evaluation update (DDIM, Euler)
             q_sample(x0, i, noise), renoise(x, i, noise)   forward noising (inpainting)

``VPProcess`` (diffusion/vp.py) is the discrete variance-preserving process with the eps (the paper's) or v target;
``FlowProcess`` (diffusion/flow.py) is rectified flow. A sampler's state may be one tensor or a tuple of tensors
(several latents at several resolutions): ``each`` applies tensor arithmetic element by element.
"""

from __future__ import annotations

from functools import lru_cache

from .flow import FlowProcess
from .vp import PREDICTIONS, VPProcess, const_betas, linear_betas

OBJECTIVES = (*PREDICTIONS, "flow")


def each(f, x, *others):
    """f(x, *others) for a tensor state; a tuple of f over the elements for a tuple state (``others`` are states of
    the same structure, or values passed to every element)."""
    if isinstance(x, tuple):
        return tuple(f(xi, *(o[k] if isinstance(o, tuple) else o for o in others)) for k, xi in enumerate(x))
    return f(x, *others)


def first(x):
    """The first tensor of a state (its batch size, device and dtype are the state's)."""
    return x[0] if isinstance(x, tuple) else x


def make_process(objective: str = "eps", num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02):
    """The process of an objective: linear betas beta_start..beta_end over num_timesteps with the eps or v target,
    or rectified flow with its time input scaled to num_timesteps (the betas unused); built once per setting."""
    return _linear(objective, int(num_timesteps), float(beta_start), float(beta_end))


@lru_cache(maxsize=None)
def _linear(objective: str, num_timesteps: int, beta_start: float, beta_end: float):
    if objective == "flow":
        return FlowProcess(time_scale=num_timesteps)
    if objective not in PREDICTIONS:
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    return VPProcess(linear_betas(num_timesteps, beta_start, beta_end), prediction=objective)


def constant_beta_process(prediction: str = "eps", num_timesteps: int = 1000, beta: float = 0.008) -> VPProcess:
    """A VP process with constant betas (the latent DDPM's 'const0.008'), eps or v target; built once per setting."""
    return _constant(prediction, int(num_timesteps), float(beta))


@lru_cache(maxsize=None)
def _constant(prediction: str, num_timesteps: int, beta: float) -> VPProcess:
    return VPProcess(const_betas(num_timesteps, beta), prediction=prediction)
