"""Small helpers every model family uses."""

from __future__ import annotations

import math

import torch


def count_params(module) -> int:
    """Number of distinct parameters (a tied Linear counts once)."""
    return sum(p.numel() for p in module.parameters())


class TrainSpec:
    """What train.py needs of a family: ``flags`` {argparse dest: [(config field, value or None for the flag's own
    value)]} (flags outside it are refused for this family), ``free`` the config fields a resumed run may change
    without --allow_change, ``precision`` the field of the autocast precision (fp16 falls back to fp32 on the CPU),
    ``network`` the trained network's name in the checkpoint, and ``task(cfg, run, d, device, resume, args)`` the
    training task. ``prepare(cfg, args)`` runs before the flags are applied, ``check(cfg, args)`` after the config
    is validated: both refuse what the fields cannot say, in one line. ``defaults(cfg)`` gives a new run (never a
    resumed one) the preset's defaults that depend on the flags, after the flags and before --set."""

    def __init__(self, flags: dict, free: tuple, precision: str, network: str, task, prepare=None, check=None,
                 defaults=None):
        self.flags, self.free, self.precision, self.network, self.task = flags, free, precision, network, task
        self.prepare = prepare or (lambda cfg, args: None)
        self.check = check or (lambda cfg, args: None)
        self.defaults = defaults or (lambda cfg: None)


def sinusoid(v: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalars (Patch-DM's time and position inputs, FAITHFULNESS.md: Conditioning; the
    Pyramid NCSN++'s time input)

    v: (n,) any real values (fractional positions are allowed). Returns (n, dim) = [cos(v f), sin(v f)] with
    f_k = exp(-ln(max_period) k / (dim/2)); the cos block comes first, as in the official code.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=v.device) / half)
    args = v[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
