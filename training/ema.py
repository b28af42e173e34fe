"""Exponential moving average of a module's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """ema <- decay * ema + (1 - decay) * weight after every optimizer step (official: constant 0.9999 from step 0;
    the loop passes each update's decay from its schedule, training/recipe.py).

    Every floating-point entry of the state dict is averaged, buffers excepted: they are statistics the network keeps
    of itself (batch-norm running statistics, spectral norm's power-iteration vectors), copied as they are (as
    k-diffusion does): an averaged power-iteration vector is no longer a unit vector, and the norm the average
    network would divide by would be wrong. Faithful: a tied Linear (the latent MLP's, under two names) is averaged
    once per name, as the official state-dict EMA does.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.buffers = {name for name, _ in self.model.named_buffers()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One update with ``decay`` (default: the constant one given at construction)."""
        decay = self.decay if decay is None else decay
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point and k not in self.buffers:
                v.lerp_(src[k].to(v.dtype), 1.0 - decay)
            else:
                v.copy_(src[k])

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd)
