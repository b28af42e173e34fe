"""A black-box adaptive ODE solver for flow models: scipy's RK45 (Dormand-Prince) on the probability-flow ODE
dx/dt = v(x, t) from t = 1 - eps to 0, the Pyramid Diffusion paper's "RK45" (after RectifiedFlow's sampler,
rtol = atol = 1e-5). The state, one tensor or a tuple of tensors, is flattened into one float64 vector for scipy and
back; the model is evaluated in the state's dtype and device. Returns the end state and the evaluations used."""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .process import first


def _flatten(x) -> np.ndarray:
    parts = x if isinstance(x, tuple) else (x,)
    return np.concatenate([p.detach().double().cpu().reshape(-1).numpy() for p in parts])


def _unflatten(vec: np.ndarray, like):
    parts, out, k = like if isinstance(like, tuple) else (like,), [], 0
    for p in parts:
        out.append(torch.from_numpy(vec[k:k + p.numel()].copy()).reshape(p.shape).to(p.device, p.dtype))
        k += p.numel()
    return tuple(out) if isinstance(like, tuple) else out[0]


@torch.no_grad()
def rk45(model_fn, x_T, process, rtol: float = 1e-5, atol: float = 1e-5) -> tuple:
    """x_T (at t = 1 - process.eps) -> (x at t = 0, number of model evaluations). model_fn(x, t, i) as the samplers
    call it (diffusion/samplers.py), with t the network's time input and i None (no step grid)."""
    batch = first(x_T).shape[0]

    def velocity(t: float, vec: np.ndarray) -> np.ndarray:
        x = _unflatten(vec, x_T)
        tt = torch.full((batch,), t * process.time_scale, dtype=torch.float32, device=first(x_T).device)
        return _flatten(model_fn(x, tt, None))

    t_start = 1.0 - process.eps
    sol = solve_ivp(velocity, (t_start, 0.0), _flatten(x_T), method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"RK45 did not reach t = 0: {sol.message}")
    return _unflatten(sol.y[:, -1], x_T), int(sol.nfev)
