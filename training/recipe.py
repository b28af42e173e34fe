"""How fast a network learns, beyond the paper: the learning-rate and EMA schedules and Adam's constants of a training
section that mixes in ``configs.common.Recipe`` (docs/EVALUATION.md, "Faster training"). Every value is a function
of the step only, so a resumed run continues exactly.

The loss-time side of the recipe (which times a batch trains on, how each is weighted) belongs to the diffusion
process: diffusion/weighting.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


# An EMA that still holds more than this share of the initial weights samples noise (test.py warns, the quick start
# takes the raw weights instead).
YOUNG_EMA = 0.05


@lru_cache(maxsize=None)
def power_gamma(std: float) -> float:
    """EDM2's power-function exponent gamma of an EMA whose profile has relative standard deviation ``std``: the root
    of std^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)) (Karras et al. 2024, Eq. 3), e.g. 0.05 -> 16.97,
    0.10 -> 6.94."""
    inv = std ** -2
    return float(np.roots([1, 7, 16 - inv, 12 - inv]).real.max())


@dataclass(frozen=True)
class EMASchedule:
    """The EMA's decay at each update. ``constant``: ``decay`` from the first update (the paper's); ``warmup``:
    min(decay, (1 + n) / (10 + n)) at update n = 1, 2, ... (the warm-up of TensorFlow's ExponentialMovingAverage
    with num_updates, as latent-diffusion's LitEma); ``power``: (1 - 1/n) ** (gamma + 1), EDM2's power-function
    EMA, whose average covers a fixed fraction of the run however long it is (``std``, the relative width)."""
    kind: str = "constant"
    decay: float = 0.9999
    std: float = 0.05

    def decay_at(self, n: int) -> float:
        """The decay of update ``n`` (1 for the first optimizer step): ema <- d ema + (1 - d) weights."""
        if self.kind == "constant":
            return self.decay
        if self.kind == "warmup":
            return min(self.decay, (1 + n) / (10 + n))
        if self.kind == "power":
            return (1 - 1 / n) ** (power_gamma(self.std) + 1)
        raise ValueError(f"EMA schedule {self.kind!r}: choose constant, warmup or power")

    def initial_share(self, steps: int) -> float:
        """The weight the initial network keeps in the EMA after ``steps`` updates: the product of the decays."""
        if self.kind == "constant":
            return self.decay ** steps
        share = 1.0
        for n in range(1, steps + 1):
            share *= self.decay_at(n)
            if share < 1e-12:  # nothing of the initial weights is left to speak of (power: 0 after the first update)
                break
        return share

    @classmethod
    def of(cls, section) -> "EMASchedule":
        """The schedule of a config section (``ema_decay``, and the Recipe's ``ema_schedule`` / ``ema_std`` where it
        has them)."""
        return cls(getattr(section, "ema_schedule", "constant"), section.ema_decay, getattr(section, "ema_std", 0.05))


def lr_scale(step: int, warmup: int = 0, decay_start: int = 0) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a multiple of the configured one: a linear warm-up
    over the first ``warmup`` steps ((step + 1) / warmup), then, with ``decay_start``, EDM2's inverse square root
    decay 1 / sqrt(max(step / decay_start, 1))."""
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay_start:
        scale /= math.sqrt(max(step / decay_start, 1.0))
    return scale


def adam(params, section, weight_decay: float = 0.0, cls=torch.optim.Adam) -> torch.optim.Optimizer:
    """``cls`` (Adam or AdamW) with the section's lr, adam_betas and adam_eps."""
    return cls(params, lr=section.lr, betas=tuple(section.adam_betas), eps=section.adam_eps,
               weight_decay=weight_decay)


def loop_recipe(section) -> dict:
    """The LoopSettings fields of a Recipe section: its EMA schedule, the post-hoc averages it tracks and its
    learning-rate schedule."""
    return dict(ema=EMASchedule.of(section), lr_warmup=section.lr_warmup, lr_decay_start=section.lr_decay_start,
                posthoc=tuple(section.ema_posthoc))
