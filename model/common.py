"""Small helpers every model family uses."""

from __future__ import annotations


def count_params(module) -> int:
    """Number of distinct parameters (a tied Linear counts once)."""
    return sum(p.numel() for p in module.parameters())
