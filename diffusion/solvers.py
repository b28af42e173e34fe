"""Fast samplers beyond the paper: fewer network evaluations for the same probability-flow ODE that DDIM solves.

  dpmpp2m, dpmpp3m   DPM-Solver++ multistep, 2nd / 3rd order (Lu et al. 2022, "DPM-Solver++"), in the data
                     prediction form: each step uses the x0 the network predicts now and at the last one or two
                     steps, with x0 clipped to [-1, 1] as thresholding (the model was trained on [-1, 1]) when
                     clip_x0. Lower orders where the history is short: the first steps, and the last ones (the
                     final step lands on the clean image, where a higher order is undefined; diffusers'
                     ``lower_order_final``). For eps, v and flow models alike: every process gives (alpha, sigma)
                     per step (x_t = alpha x0 + sigma eps), which is all the solver needs.
  heun               Heun's 2nd-order method on a flow model's ODE dx/dt = v (EDM's sampler): an Euler step, the
                     velocity at its end, the average of both; Euler for the last step into t = 0. 2N - 1
                     evaluations for N steps.

VP models (eps, v) take steps uniform in log-SNR from t = T - 1 down to t = 0 (spacing "logsnr", DPM-Solver's own
choice, diffusers' ``use_lu_lambdas``): the steps crowd where lambda moves fastest, near the clean end, and the last
evaluation is at t = 0, so the final step to the clean image is negligible. diffusers' default "linspace" spacing
(last evaluation at t ~ (T - 1)/N, then one jump to the clean image) makes that final jump an error that falls only
like 1/N, which on this project's CPU-scale models leaves the solvers no better than DDIM at equal steps
(docs/BENCHMARKS.md, "Fast samplers"). Flow models use their uniform grid. The update rules are this project's
code, written from the papers; a test checks the DPM-Solver++ steps against diffusers' ``DPMSolverMultistepScheduler``
where diffusers is installed.

Every solver is a step factory like ``ddim_update``: ``step(x, i)`` from step i of the schedule to step i - 1, over a
whole-canvas model or (``streamed``) a band model that yields (pixel rows, output) in reading order; the multistep
history is kept as whole canvases written band by band (one canvas per order above 1).
"""

from __future__ import annotations

import math

import torch

from .samplers import ddim_update, streamed_ddim_update

SAMPLERS = ("ddim", "euler", "heun", "dpmpp2m", "dpmpp3m")
ORDERS = {"dpmpp2m": 2, "dpmpp3m": 3}


def supported(sampler: str, objective: str) -> str | None:
    """None when ``sampler`` works with models of ``objective``, else the one-line reason."""
    if sampler not in SAMPLERS:
        return f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}"
    if sampler in ("euler", "heun") and objective != "flow":
        return (f"--sampler {sampler} integrates a flow model's velocity; this is an {objective} model: use ddim, "
                "dpmpp2m or dpmpp3m")
    return None


def spacing(sampler: str) -> str:
    """The timestep spacing a sampler's schedule is respaced with: DDIM keeps the official one (bit-identical to
    the official sampler), the multistep solvers take steps uniform in log-SNR, the last at t = 0."""
    return "logsnr" if sampler in ORDERS else "official"


def _lam(alpha: float, sigma: float) -> float:
    """log(alpha / sigma), +-inf at the ends."""
    if alpha == 0:
        return -math.inf
    if sigma == 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def dpmpp_coefficients(sched, i: int, order: int) -> tuple:
    """(a, c): x_{i-1} = a x_i + sum_k c_k x0_k over x0 at steps i, i + 1, i + 2 (now, last, the one before), for
    DPM-Solver++ of the given order (already lowered where needed)."""
    a_s, s_s = sched.alpha_sigma(i)
    a_t, s_t = sched.alpha_sigma(i - 1)
    lam_s, lam_t = _lam(a_s, s_s), _lam(a_t, s_t)
    h = lam_t - lam_s
    em = -math.expm1(-h) if h != math.inf else 1.0  # 1 - e^{-h}
    a = s_t / s_s if s_s > 0 else 0.0  # sigma_t / sigma_s (exp(-h) alpha_t / alpha_s at the noisy end)
    if order == 1:
        return a, (a_t * em,)
    lam_1 = _lam(*sched.alpha_sigma(i + 1))
    r0 = (lam_s - lam_1) / h
    if order == 2:
        # D = x0 + (x0 - x0_1) / (2 r0)
        return a, (a_t * em * (1 + 1 / (2 * r0)), -a_t * em / (2 * r0))
    lam_2 = _lam(*sched.alpha_sigma(i + 2))
    r1 = (lam_1 - lam_2) / h
    # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0 + r1)
    # x_t = a x - alpha_t (e^{-h} - 1) D0 + alpha_t ((e^{-h} - 1)/h + 1) D1 - alpha_t ((e^{-h} - 1 + h)/h^2 - 1/2) D2
    c0, c1 = a_t * em, a_t * (1 - em / h)
    c2 = -a_t * ((h - em) / h ** 2 - 0.5)
    d10 = (1 / r0, -1 / r0, 0.0)
    d11 = (0.0, 1 / r1, -1 / r1)
    diff = tuple(x - y for x, y in zip(d10, d11))
    d1 = tuple(x + r0 / (r0 + r1) * y for x, y in zip(d10, diff))
    d2 = tuple(y / (r0 + r1) for y in diff)
    return a, tuple(c0 * (k == 0) + c1 * u + c2 * v for k, (u, v) in enumerate(zip(d1, d2)))


def _order(max_order: int, done: int, i: int, steps: int) -> int:
    """The order of step i (i = 0 is the last): at most the history (``done`` earlier steps) + 1; 1 for the last
    step, into the clean image; at most 2 for the one before when there are fewer than 15 steps (diffusers'
    ``lower_order_final``, which stabilises few-step sampling)."""
    if i == 0:
        return 1
    cap = 2 if (i == 1 and steps < 15) else max_order
    return max(1, min(max_order, cap, done + 1))


class _History:
    """The x0 of the last steps as whole canvases (written band by band by the streamed variant)."""

    def __init__(self, keep: int):
        self.keep, self.items, self.done = keep, [], 0

    def update(self, x, i, x0_now, rows, sched, order):
        """x_{i-1} over ``rows`` from x_i and the x0 history; stores x0_now there."""
        a, c = dpmpp_coefficients(sched, i, order)
        new = a * x + c[0] * x0_now
        for k in range(1, order):
            new = new + c[k] * self.items[k - 1][..., rows, :]
        return new

    def buffer(self, like):
        """Where the streamed variant writes this step's x0: the oldest canvas once the history is full (each band
        reads its own rows of it before writing them), so the history never holds more than ``keep`` canvases."""
        if not self.keep:
            return None
        return self.items[-1] if len(self.items) == self.keep else torch.empty_like(like)

    def push(self, x0_full):
        if self.keep:
            self.items = [x0_full, *[t for t in self.items if t is not x0_full]][:self.keep]
        self.done += 1


def dpmpp_update(model_fn, sched, order: int = 2, clip_x0: bool = True):
    """step(x, i) of DPM-Solver++(order M) with the model evaluated on the whole of x."""
    hist = _History(order - 1)

    def step(x, i):
        out = model_fn(x, sched.model_t(i, x.shape[0], x.device))
        x0 = sched.to_x0(x, i, out.to(x.dtype))
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        new = hist.update(x, i, x0, slice(None), sched, _order(order, hist.done, i, sched.num_timesteps))
        hist.push(x0)
        return new

    return step


def streamed_dpmpp_update(bands_fn, sched, order: int = 2, clip_x0: bool = True):
    """``dpmpp_update`` updating x in place band by band (a band's output depends only on rows not yet updated);
    the x0 history is kept as canvases, each band writing its rows."""
    hist = _History(order - 1)

    def step(x, i):
        t = sched.model_t(i, x.shape[0], x.device)
        o = _order(order, hist.done, i, sched.num_timesteps)
        x0_full = hist.buffer(x)
        for rows, out in bands_fn(x, t):
            xr = x[..., rows, :]
            x0 = sched.to_x0(xr, i, out.to(x.dtype))
            if clip_x0:
                x0 = x0.clamp(-1, 1)
            x[..., rows, :] = hist.update(xr, i, x0, rows, sched, o)
            if x0_full is not None:
                x0_full[..., rows, :] = x0
        hist.push(x0_full)
        return x

    return step


def heun_update(model_fn, sched, clip_x0: bool = True):
    """step(x, i) of Heun on a flow model from t = (i + 1)/N to i/N; Euler for the last step (i = 0)."""
    euler = ddim_update(model_fn, sched, clip_x0)

    def step(x, i):
        if i == 0:
            return euler(x, i)
        b = x.shape[0]
        t, s = sched.time(i), sched.time(i - 1)
        v1 = model_fn(x, sched.model_t(i, b, x.device)).to(x.dtype)
        x1 = sched.step(x, i, v1, clip_x0)
        v2 = model_fn(x1, sched.model_t(i - 1, b, x.device)).to(x.dtype)
        return sched.step(x, i, (v1 + v2) / 2, clip_x0) if clip_x0 else x + (s - t) * (v1 + v2) / 2

    return step


def make_update(sampler: str, model_fn=None, bands_fn=None, sched=None, clip_x0: bool = True):
    """The step factory of a sampler over a whole-canvas model_fn, or over a band model bands_fn (streamed in place;
    Heun needs two evaluations of the same x per step and has no streamed form)."""
    if sampler in ("ddim", "euler"):
        return streamed_ddim_update(bands_fn, sched, clip_x0) if bands_fn else ddim_update(model_fn, sched, clip_x0)
    if sampler in ORDERS:
        if bands_fn:
            return streamed_dpmpp_update(bands_fn, sched, ORDERS[sampler], clip_x0)
        return dpmpp_update(model_fn, sched, ORDERS[sampler], clip_x0)
    if sampler == "heun":
        if bands_fn:
            raise ValueError("heun has no streamed form")
        return heun_update(model_fn, sched, clip_x0)
    raise ValueError(supported(sampler, "eps") or sampler)


def sampling_schedule(diffusion_cfg, sampler: str, steps: int, timestep_spacing: str | None = None):
    """The respaced process a sampler runs on: the model's objective (``schedule_from``) over ``steps`` steps with
    the sampler's spacing (or ``timestep_spacing``, one of schedule.SPACINGS; a flow model has only
    its uniform grid)."""
    from .schedule import schedule_from
    return schedule_from(diffusion_cfg).respace(steps, timestep_spacing or spacing(sampler))


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations of a sampler over ``steps`` steps."""
    return 2 * steps - 1 if sampler == "heun" else steps
