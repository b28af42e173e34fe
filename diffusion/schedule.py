"""Noise schedules, timestep respacing and the closed-form diffusion quantities
(FAITHFULNESS.md: Training loss, Sampling, Latent DDPM).

Faithful: constants are computed in float64 (as the official numpy arrays) and cast to float32 when gathered at a
timestep, exactly where the official ``_extract_into_tensor`` casts them.
"""

from __future__ import annotations

import numpy as np
import torch


def linear_betas(num_timesteps: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """Linear betas of the image model (FAITHFULNESS.md: Training settings), float64."""
    return torch.from_numpy(np.linspace(start, end, num_timesteps, dtype=np.float64))


def const_betas(num_timesteps: int = 1000, beta: float = 0.008) -> torch.Tensor:
    """Constant betas of the latent DDPM ('const0.008', FAITHFULNESS.md: Latent DDPM), float64."""
    return torch.full((num_timesteps,), beta, dtype=torch.float64)


def space_timesteps(num_timesteps: int, steps: int) -> list:
    """Faithful 'ddim{steps}' respacing: the integer stride that gives exactly ``steps`` timesteps.

    space_timesteps(1000, 50) == [0, 20, ..., 980].
    """
    if steps == num_timesteps:
        return list(range(num_timesteps))
    for stride in range(1, num_timesteps + 1):  # (+1 admits steps=1, which the official loop cannot make)
        if len(range(0, num_timesteps, stride)) == steps:
            return list(range(0, num_timesteps, stride))
    raise ValueError(f"cannot make exactly {steps} DDIM steps out of {num_timesteps} with an integer stride")


class Schedule:
    """Diffusion constants for a beta sequence; ``timestep_map[i]`` is the original index of step i."""

    def __init__(self, betas: torch.Tensor, timestep_map: list | None = None):
        self.betas = betas.to(torch.float64)
        self.num_timesteps = len(betas)
        self.timestep_map = list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

    def respace(self, steps: int) -> "Schedule":
        """The schedule over ``space_timesteps(T, steps)`` with the same alphas_cumprod at kept timesteps."""
        keep = space_timesteps(self.num_timesteps, steps)
        betas, last = [], 1.0
        for i in keep:
            betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        return Schedule(torch.stack(betas), [self.timestep_map[i] for i in keep])

    def model_t(self, i: int, batch: int, device) -> torch.Tensor:
        """Original timestep index fed to the network for step i, shape (batch,), long."""
        return torch.full((batch,), self.timestep_map[i], dtype=torch.long, device=device)

    @staticmethod
    def at(arr: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """arr[t] as float32, broadcastable to x. t is an int or a (B,) long tensor of step indices."""
        if isinstance(t, int):
            return arr[t].float().to(x.device)
        return arr.to(t.device)[t].float().reshape(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        a, b = self.at(self.sqrt_alphas_cumprod, t, x0), self.at(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return a * x0 + b * noise

    def predict_x0(self, x_t, t, eps):
        a, b = self.at(self.sqrt_recip_alphas_cumprod, t, x_t), self.at(self.sqrt_recipm1_alphas_cumprod, t, x_t)
        return a * x_t - b * eps

    def eps_from_x0(self, x_t, t, x0):
        a, b = self.at(self.sqrt_recip_alphas_cumprod, t, x_t), self.at(self.sqrt_recipm1_alphas_cumprod, t, x_t)
        return (a * x_t - x0) / b


_CACHE: dict = {}


def schedule_from(d) -> Schedule:
    """The image model's schedule from a DiffusionConfig (linear betas beta_start..beta_end over num_timesteps);
    built once per setting."""
    key = ("linear", d.num_timesteps, d.beta_start, d.beta_end)
    if key not in _CACHE:
        _CACHE[key] = Schedule(linear_betas(d.num_timesteps, d.beta_start, d.beta_end))
    return _CACHE[key]


def default_schedule() -> Schedule:
    """The official image schedule: linear betas 1e-4..0.02, T = 1000 (the DiffusionConfig defaults)."""
    from configs import DiffusionConfig
    return schedule_from(DiffusionConfig())


def latent_schedule(num_timesteps: int = 1000, beta: float = 0.008) -> Schedule:
    """The latent DDPM's constant-beta schedule."""
    key = ("const", num_timesteps, beta)
    if key not in _CACHE:
        _CACHE[key] = Schedule(const_betas(num_timesteps, beta))
    return _CACHE[key]
