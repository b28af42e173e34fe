"""The discrete variance-preserving process (DDPM/DDIM): noise schedules, timestep respacing, the closed-form
quantities, and its own sampler step (FAITHFULNESS.md: Training loss, Sampling, Latent DDPM).

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


def logsnr_timesteps(alphas_cumprod: torch.Tensor, steps: int) -> list:
    """``steps`` distinct timesteps, ascending, uniform in lambda = log(alpha / sigma) from the last timestep to the
    first: lambda(t) is interpolated linearly between integer timesteps and each grid point rounded to the nearest
    one; a point that lands on a timestep already taken (near t = 0, where lambda falls fastest) moves to the next
    free one above it."""
    num = len(alphas_cumprod)
    abar = alphas_cumprod.double().numpy()
    lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
    grid = np.linspace(lam[0], lam[-1], steps)  # clean end first: ascending t (one step: set to T - 1 below)
    t = np.interp(-grid, -lam, np.arange(num, dtype=np.float64)).round().astype(int).tolist()
    for j in range(1, steps):  # distinct, ascending
        t[j] = max(t[j], t[j - 1] + 1)
    t[-1] = num - 1
    for j in range(steps - 2, -1, -1):  # and within range at the top
        t[j] = min(t[j], t[j + 1] - 1)
    return t


PREDICTIONS = ("eps", "v")
SPACINGS = ("official", "linspace", "linspace0", "logsnr")  # VPProcess.respace


class VPProcess:
    """A discrete variance-preserving diffusion: constants for a beta sequence (``timestep_map[i]`` is the original
    index of step i) and what the network predicts, ``prediction`` "eps" (the paper's) or "v" (Salimans & Ho 2022,
    beyond the paper: v = sqrt(abar) eps - sqrt(1 - abar) x0; docs/FAITHFULNESS.md, "Beyond the official code").

    It is a *process* (diffusion/process.py): ``draw_t``, ``corrupt``, ``target`` and ``net_t`` for the loss;
    ``model_t``, ``to_x0``, ``alpha_sigma`` and ``step`` (the DDIM update) for the samplers.
    """

    objective = "eps"
    continuous = False

    def __init__(self, betas: torch.Tensor, timestep_map: list | None = None, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        self.prediction = self.objective = prediction
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

    def respace(self, steps: int, spacing: str = "official") -> "VPProcess":
        """The schedule over ``steps`` kept timesteps with the same alphas_cumprod there: ``space_timesteps(T, steps)``
        (spacing "official", DDIM's); "linspace": round(linspace(0, T - 1, steps + 1)) without its 0, so the first
        step is at T - 1 and the last at about (T - 1)/steps, from where one step jumps to the clean image (the
        spacing of diffusers' multistep solvers); "linspace0": round(linspace(0, T - 1, steps)), the first step
        at T - 1 and the last at t = 0, as in the official respacing, so the final jump is from the least noise; or
        "logsnr": steps uniform in lambda = log(alpha / sigma) from t = T - 1 down to t = 0 (DPM-Solver's
        "logSNR" steps, diffusers' ``use_lu_lambdas``), each rounded to the nearest timestep and, where two round to
        the same one near t = 0, moved up to the next free timestep, so there are always ``steps`` distinct steps."""
        if spacing not in SPACINGS:
            raise ValueError(f"spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
        if spacing != "official" and not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_timesteps}, got {steps}")
        if spacing == "official":
            keep = space_timesteps(self.num_timesteps, steps)
        elif spacing in ("linspace", "linspace0"):
            if spacing == "linspace":
                grid = np.linspace(0, self.num_timesteps - 1, steps + 1)[1:]
            else:
                t_max = self.num_timesteps - 1
                grid = np.linspace(0, t_max, steps) if steps > 1 else np.array([t_max])
            keep = sorted(set(grid.round().astype(int).tolist()))
        else:
            keep = logsnr_timesteps(self.alphas_cumprod, steps)
        betas, last = [], 1.0
        for i in keep:
            betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        return VPProcess(torch.stack(betas), [self.timestep_map[i] for i in keep], self.prediction)

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

    # -- the loss: t are step indices (B,) long, drawn uniformly over 0..T-1 ----------------------------------------
    def draw_t(self, n: int, generator=None) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (n,), generator=generator)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """The step index floor(u T) of fractions u in [0, 1] of the way to the noise (diffusion/weighting.py)."""
        return (u * self.num_timesteps).long().clamp(0, self.num_timesteps - 1)

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma: min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v (SNR = abar / (1 - abar)
        at step indices t), float64."""
        abar = self.alphas_cumprod.to(t.device)[t]
        snr = abar / (1 - abar)
        return snr.clamp(max=gamma) / (snr if self.prediction == "eps" else snr + 1)

    def corrupt(self, x0, t, noise):
        return self.q_sample(x0, t, noise)

    def target(self, x0, t, noise):
        """What the network learns to output: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        if self.prediction == "eps":
            return noise
        a, s = self.at(self.sqrt_alphas_cumprod, t, x0), self.at(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return a * noise - s * x0

    def net_t(self, t):
        """The network's time input for loss times t (the original timestep index)."""
        return t

    # -- the samplers: i indexes the steps of this (respaced) schedule -------------------------------------------
    def to_eps(self, x_t, i, out):
        """eps from the network output at step i: itself, or sqrt(1 - abar) x_t + sqrt(abar) v."""
        if self.prediction == "eps":
            return out
        a, s = self.at(self.sqrt_alphas_cumprod, i, x_t), self.at(self.sqrt_one_minus_alphas_cumprod, i, x_t)
        return s * x_t + a * out

    def v_from_eps(self, x_t, i, eps):
        """The inverse of ``to_eps`` for a v model: v = (eps - sqrt(1 - abar) x_t) / sqrt(abar)."""
        a, s = self.at(self.sqrt_alphas_cumprod, i, x_t), self.at(self.sqrt_one_minus_alphas_cumprod, i, x_t)
        return (eps - s * x_t) / a

    def to_x0(self, x_t, i, out):
        """The predicted x0 at step i from the network output."""
        return self.predict_x0(x_t, i, self.to_eps(x_t, i, out))

    def alpha_sigma(self, i: int) -> tuple:
        """(alpha, sigma) of step i as floats (x_t = alpha x0 + sigma eps); i = -1 is the clean end (1, 0)."""
        if i < 0:
            return 1.0, 0.0
        if not hasattr(self, "_alpha_sigma"):  # plain floats, read once (no tensor op per step)
            self._alpha_sigma = list(zip(self.sqrt_alphas_cumprod.tolist(),
                                         self.sqrt_one_minus_alphas_cumprod.tolist()))
        return self._alpha_sigma[i]

    def step(self, x, i: int, out, clip_x0: bool = True):
        """The deterministic DDIM update (eta 0) from step i to i - 1 given the network output there
        (guided-diffusion arithmetic, fp32).

        Faithful: x0 is predicted, optionally clipped to [-1, 1], and eps re-derived from the clipped x0.
        """
        eps = self.to_eps(x, i, out).to(x.dtype)
        x0 = self.predict_x0(x, i, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        eps = self.eps_from_x0(x, i, x0)
        abar_prev = self.at(self.alphas_cumprod_prev, i, x)
        return x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev) * eps

    def renoise(self, x, i: int, noise):
        """x_{i-1} -> x_i by the forward step q(x_i | x_{i-1}) (RePaint)."""
        beta = self.at(self.betas, i, x)
        return torch.sqrt(1 - beta) * x + torch.sqrt(beta) * noise
