"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3): choose the EMA's length after training.

A run with ``ema_posthoc`` (e.g. [0.05, 0.10]) tracks one power-function EMA per relative width beside its own EMA
(training/recipe.py) and keeps them in every snapshot (``--snapshot_every``). The weights a power-function EMA of
exponent g holds at step t are a profile over the steps before it, p(tau) = (g + 1) tau^g / t^(g + 1) on (0, t];
profiles of stored averages (any step, either width) are combined linearly, so the least-squares combination of
the stored profiles closest to a wanted profile (any width, at any step up to the last snapshot) gives, by
linearity, weights close to those an EMA of that profile would have held. Profiles are continuous in the step
count, as in EDM2; the discrete power EMA follows them up to a few steps at the start.
"""

from __future__ import annotations

import math

import numpy as np

from .recipe import power_gamma


def profile_inner(t_a: float, g_a: float, t_b: float, g_b: float) -> float:
    """The L2 inner product of the power-function profiles (t_a, g_a) and (t_b, g_b)."""
    m, s = min(t_a, t_b), g_a + g_b + 1
    log = s * math.log(m) - (g_a + 1) * math.log(t_a) - (g_b + 1) * math.log(t_b)
    return (g_a + 1) * (g_b + 1) / s * math.exp(log)


def _system(stored: list, step: float, std: float) -> tuple:
    """(A, b, c): A the inner products of the stored profiles [(step, std), ...], b theirs with the wanted profile,
    c the wanted profile's own."""
    profiles = [(float(t), power_gamma(s)) for t, s in stored]
    want = (float(step), power_gamma(std))
    a = np.array([[profile_inner(*pi, *pj) for pj in profiles] for pi in profiles])
    b = np.array([profile_inner(*pi, *want) for pi in profiles])
    return a, b, profile_inner(*want, *want)


def coefficients(stored: list, step: float, std: float) -> np.ndarray:
    """Least-squares weights x of the stored averages ``stored`` [(step, std), ...] whose combined profile is closest
    to the power-function profile of width ``std`` at ``step``."""
    a, b, _ = _system(stored, step, std)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def profile_error(stored: list, x: np.ndarray, step: float, std: float) -> float:
    """The relative L2 distance between the profile the weights x combine and the wanted one (0: exact)."""
    a, b, c = _system(stored, step, std)
    return float(math.sqrt(max(x @ a @ x - 2 * x @ b + c, 0.0) / c))


def combine(states: list, weights, buffers=frozenset()) -> dict:
    """sum_i weights[i] * states[i] over the floating-point entries (float64 accumulation, cast back); the others
    and the ``buffers`` (statistics a network keeps of itself, copied as the EMA copies them) are the last state's."""
    out = {}
    for k, last in states[-1].items():
        if last.dtype.is_floating_point and k not in buffers:
            acc = sum(float(w) * s[k].double() for w, s in zip(weights, states))
            out[k] = acc.to(last.dtype)
        else:
            out[k] = last.clone()
    return out


def reconstruct(snapshots: list, step: float, std: float, buffers=frozenset()) -> tuple:
    """(state dict, coefficients) of the power-function EMA of width ``std`` at ``step`` from snapshots
    [(step, {std: state dict}), ...] of the tracked averages (``buffers``: as in ``combine``)."""
    stored, states = [], []
    for t, averages in snapshots:
        for s, sd in averages.items():
            stored.append((float(t), float(s)))
            states.append(sd)
    x = coefficients(stored, step, std)
    return combine(states, x, buffers), x

