"""Latent rectified flow on the pyramid latents (the paper's Eq. 7): the latent scaler, the flow model (network +
scaler, what a full checkpoint's ``flow`` entry holds) and its loss.

Time runs as everywhere in this project (diffusion/flow.py): t = 1 is noise, t = 0 the data, x_t = (1 - t) z +
t noise, and the network learns the velocity noise - z; the paper writes the same path with t -> 1 - t. One t per
sample is shared by all its latents, the loss is the sum over the latents of each one's mean squared error, and
the loss times follow the paper's boundary treatment (FlowProcess with eps).

The latents are rescaled to unit standard deviation as the paper does: each latent's std is estimated by an
exponential moving average over the first ``iterations`` training steps, then frozen; a latent whose std is below 1
is left as it is. The estimate is a buffer of the model, so it is saved, resumed and copied into the EMA with it.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion.weighting import TimeRecipe
from .ncsnpp import PyramidNCSNpp


class LatentScaler(nn.Module):
    def __init__(self, latents: int, iterations: int = 100, momentum: float = 0.9):
        super().__init__()
        self.iterations, self.momentum = int(iterations), float(momentum)
        self.register_buffer("std", torch.ones(latents))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @property
    def frozen(self) -> bool:
        return int(self.seen) >= self.iterations

    @torch.no_grad()
    def observe(self, zs) -> None:
        """One training batch's latents (unscaled): the first sets the estimate, the next move it by the moving
        average, and after ``iterations`` batches nothing changes."""
        if self.frozen:
            return
        s = torch.stack([z.float().std() for z in zs])
        self.std.copy_(s if int(self.seen) == 0 else self.momentum * self.std + (1 - self.momentum) * s)
        self.seen += 1

    def factors(self) -> torch.Tensor:
        """What each latent is multiplied by: 1/std where std > 1, else 1."""
        return torch.where(self.std > 1, 1 / self.std, torch.ones_like(self.std))

    def scale(self, zs) -> tuple:
        return tuple(z * f.to(z.dtype) for z, f in zip(zs, self.factors()))

    def unscale(self, zs) -> tuple:
        return tuple(z / f.to(z.dtype) for z, f in zip(zs, self.factors()))


class LatentFlow(nn.Module):
    """The flow network on the scaled latents (a tuple, finest first) and the scaler that maps the autoencoder's
    latents to them."""

    def __init__(self, network: PyramidNCSNpp, scaler: LatentScaler):
        super().__init__()
        self.network, self.scaler = network, scaler

    def forward(self, zs: tuple, t: torch.Tensor) -> tuple:
        out = self.network(tuple(zs), t)
        return out if isinstance(out, tuple) else (out,)


def flow_terms(v: tuple, target: tuple) -> dict:
    """Per-sample loss terms {'z0': (B,), 'z1': ...}: each latent's mean squared error; their sum is the loss."""
    return {f"z{i}": (a.float() - b.float()).square().flatten(1).mean(dim=1) for i, (a, b) in enumerate(zip(v, target))}


class FlowLoss(nn.Module):
    """The flow model plus its loss as one forward (DDP sees every parameter use): latents z (a tuple of posterior
    samples, unscaled), loss times t (B,) and noise (a tuple like z) -> the per-latent terms, weighted by the
    recipe's loss weight of each time (1 for the paper's)."""

    def __init__(self, flow: LatentFlow, process, weighting: TimeRecipe = TimeRecipe()):
        super().__init__()
        self.flow, self.process, self.weighting = flow, process, weighting

    def forward(self, z: tuple, t: torch.Tensor, noise: tuple) -> dict:
        if self.training:
            self.flow.scaler.observe(z)
        z = self.flow.scaler.scale(z)
        x_t = tuple(self.process.corrupt(a, t, n) for a, n in zip(z, noise))
        v = self.flow(x_t, self.process.net_t(t).to(z[0].device))
        terms = flow_terms(v, tuple(self.process.target(a, t, n) for a, n in zip(z, noise)))
        return self.weighting.weigh(terms, self.process, t)
