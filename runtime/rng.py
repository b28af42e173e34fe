"""One seed derivation for every random draw: ``rng(seed, purpose, *keys)``.

Every draw in training and sampling is a function of the run (or generation) seed, what the draw is for, and the
integers that locate it (step, sample index, image number, ...), never of how many draws came before. That is what
makes resumed runs equal uninterrupted ones, torchrun runs equal one-process runs, and image k the same whatever
the batch size. Deviation: the official code draws from Python's and NumPy's global generators.
"""

from __future__ import annotations

import torch

PURPOSES = ("image", "window", "timesteps", "noise", "dropout", "offset", "order", "latent", "shift", "fit",
            "known", "preview", "crop", "seamless")
_MULT, _MOD = 1_000_003, 2 ** 63


def seed_for(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for (seed, purpose, keys): a polynomial hash, distinct for distinct purposes and keys."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random purpose {purpose!r}; add it to runtime.rng.PURPOSES")
    h = int(seed) % _MOD
    for k in (PURPOSES.index(purpose) + 1, *keys):
        h = (h * _MULT + int(k) + 1) % _MOD
    return h


def rng(seed: int, purpose: str, *keys: int, device="cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded by ``seed_for(seed, purpose, *keys)``."""
    return torch.Generator(device).manual_seed(seed_for(seed, purpose, *keys))
