"""Conditioning a sampler on known pixels (inpainting / outpainting): replacement, and RePaint resampling.

``repaint`` wraps the steps of any one-step sampler ``step(x, i)`` (diffusion/samplers.py): before every step the
kept pixels of x_t are replaced by the known image forward-noised to that step, and the result holds the known image
exactly there. With resample = r > 1 each step is repeated r times, re-noising x_{t-1} to x_t in between (RePaint,
Lugmayr et al. 2022), which lets the generated side react to the kept side at r times the cost. RePaint is defined
for samplers that take one model step from t to t-1 (DDIM, ancestral); a multistep solver keeps a history that the
re-noising would invalidate.
"""

from __future__ import annotations

import torch

from runtime.rng import rng
from .samplers import run_steps


class KnownRegion:
    """impose(x, i): the kept pixels of x_t become q_sample(x_known, t_i) with fresh noise; renoise(x, i): x_{i-1} ->
    x_i by the forward step q(x_i | x_{i-1}); finish(x): the kept pixels become x_known exactly."""

    def __init__(self, x_known: torch.Tensor, mask: torch.Tensor, process, seed: int = 0):
        self.x, self.process = x_known, process
        self.mask = mask.to(x_known.dtype)
        self.g = rng(seed, "known", device=x_known.device)

    def _noise(self, like):
        return torch.randn(like.shape, generator=self.g, device=like.device, dtype=like.dtype)

    def _keep(self, x, known):
        return x * (1 - self.mask) + known.to(x.dtype) * self.mask

    def impose(self, x, i: int):
        return self._keep(x, self.process.q_sample(self.x, i, self._noise(self.x)))

    def renoise(self, x, i: int):
        return self.process.renoise(x, i, self._noise(x))

    def finish(self, x):
        return self._keep(x, self.x)


def repaint(step, x: torch.Tensor, process, x_known: torch.Tensor, mask: torch.Tensor, resample: int = 1,
            seed: int = 0, progress: bool = False, desc: str = "sample") -> torch.Tensor:
    """Run ``step`` over the process's steps conditioned on the known pixels (mask 1 = keep; (B or 1, 1, H, W)); the
    result equals x_known exactly where the mask is 1."""
    if resample < 1:
        raise ValueError(f"resample must be at least 1, got {resample}")
    cond = KnownRegion(x_known, mask, process, seed)

    def conditioned(x, i):
        for r in range(resample):
            x = step(cond.impose(x, i), i)
            if r < resample - 1 and i > 0:
                x = cond.renoise(x, i)
        return x

    return cond.finish(run_steps(conditioned, x, process, progress, desc))
