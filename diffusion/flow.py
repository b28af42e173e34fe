"""Rectified flow (Liu et al. 2022) as a process (diffusion/process.py): beyond the Patch-DM paper
(docs/FAITHFULNESS.md, "Beyond the official code").

Straight paths between data and noise, x_t = (1 - t) x0 + t eps with t uniform in [0, 1] (t = 1 is pure noise, the
direction of the diffusion time; the Pyramid Diffusion paper writes the same path with t -> 1 - t), and the network
learns the velocity dx_t/dt = eps - x0 with an MSE. Its time input is t * time_scale (1000 by default), the range
the sinusoidal embedding sees with the diffusion objectives, so every architecture setting carries over unchanged.

Sampling integrates dx/dt = v from t = 1 to 0 on a uniform grid of ``num_timesteps`` steps: step i goes from
t = (i + 1)/N to i/N (i = N-1 .. 0, as the DDIM loop counts). With ``eps`` > 0 (the Pyramid Diffusion paper's
boundary treatment, 1e-3) the loss times are 1 - min(eps + u, 1), u uniform in [0, 1): t in [0, 1 - eps] with a mass
of about eps at exactly t = 0 (the data), and sampling starts at t = 1 - eps: step i goes from (1 - eps)(i + 1)/N to
(1 - eps) i/N. ``step`` is the Euler step; with clip_x0 the
predicted x0 = x_t - t v is clipped to [-1, 1] first and the step taken from the clipped x0 and the eps it implies,
which is exactly the Euler step whenever nothing is clipped (the thresholding DDIM does for eps and v models).
"""

from __future__ import annotations

import math

import torch


class FlowProcess:
    objective = "flow"
    prediction = "flow"
    continuous = True

    def __init__(self, num_timesteps: int = 1000, time_scale: float = 1000.0, eps: float = 0.0):
        if num_timesteps < 1:
            raise ValueError(f"a flow sampler needs at least 1 step, got {num_timesteps}")
        self.num_timesteps, self.time_scale, self.eps = int(num_timesteps), float(time_scale), float(eps)

    def respace(self, steps: int, spacing: str = "uniform") -> "FlowProcess":
        """The uniform grid of ``steps`` steps from t = 1 - eps to 0 (the only spacing; ``spacing`` is accepted so
        every process respaces alike)."""
        return FlowProcess(steps, self.time_scale, self.eps)

    @staticmethod
    def _b(t, x):
        """t (float or (B,) tensor) broadcastable to x."""
        if isinstance(t, torch.Tensor):
            return t.to(device=x.device, dtype=torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
        return t

    # -- the loss: t (B,) float in [0, 1) ------------------------------------------------------------------------
    def draw_t(self, n: int, generator=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator)
        return (1 - self.eps - u).clamp(min=0.0) if self.eps else u

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """The flow time of fractions u of the way to the noise: u itself, at most 1 - eps (float32)."""
        return u.clamp(max=1 - self.eps).float()

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma for the velocity target: the velocity error is the x0 error over t^2, so the weight is
        min(SNR, gamma) t^2 = min((1 - t)^2, gamma t^2) (SNR = ((1 - t) / t)^2; 0 at t = 0, where x0 is given)."""
        t = t.double()
        return torch.minimum((1 - t) ** 2, gamma * t ** 2)

    def corrupt(self, x0, t, noise):
        t = self._b(t, x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0, t, noise):
        return noise - x0

    def net_t(self, t):
        return t * self.time_scale

    # -- the samplers ----------------------------------------------------------------------------------------------
    def time(self, i: int) -> float:
        """The flow time at the start of step i: (1 - eps)(i + 1)/N; i = -1 is the clean end, 0."""
        return (1 - self.eps) * (i + 1) / self.num_timesteps

    def model_t(self, i: int, batch: int, device) -> torch.Tensor:
        return torch.full((batch,), self.time(i) * self.time_scale, dtype=torch.float32, device=device)

    def alpha_sigma(self, i: int) -> tuple:
        """(alpha, sigma) at the start of step i: x_t = alpha x0 + sigma eps, (1 - t, t)."""
        t = self.time(i)
        return 1.0 - t, t

    def to_eps(self, x_t, i, v):
        """eps = x_t + (1 - t) v (from x_t = (1 - t) x0 + t eps and v = eps - x0)."""
        return x_t + (1 - self.time(i)) * v

    def to_x0(self, x_t, i, v):
        return x_t - self.time(i) * v

    def step(self, x, i: int, v, clip_x0: bool = True):
        """Euler from t = (i + 1)/N to i/N."""
        t, s = self.time(i), self.time(i - 1)
        v = v.to(x.dtype)
        if not clip_x0:
            return x + (s - t) * v
        x0 = (x - t * v).clamp(-1, 1)
        eps = (x - (1 - t) * x0) / t
        return (1 - s) * x0 + s * eps

    def q_sample(self, x0, i: int, noise):
        """x at the start of step i from x0 (RePaint's known region)."""
        t = self.time(i)
        return (1 - t) * x0 + t * noise

    def renoise(self, x, i: int, noise):
        """From the end of step i (t = i/N) back to its start ((i + 1)/N) along the forward process: the path's
        marginals are kept, x_t = (1 - t)/(1 - s) x_s + sqrt(t^2 - ((1 - t) s/(1 - s))^2) eps."""
        t, s = self.time(i), self.time(i - 1)
        a = (1 - t) / (1 - s)
        return a * x + math.sqrt(max(t * t - (a * s) ** 2, 0.0)) * noise
