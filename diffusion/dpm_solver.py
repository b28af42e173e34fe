"""DPM-Solver++ (Lu et al. 2022) in the data-prediction form, beyond the paper: the coefficients of a multistep
update, the order of each step, and the history of predicted x0 (diffusion/samplers.py builds the samplers on them).

Each step uses the x0 the network predicts now and at the last one or two steps. Lower orders where the history is
short: the first steps, and the last ones (the final step lands on the clean image, where a higher order is undefined;
diffusers' ``lower_order_final``). For eps, v and flow models alike: every process gives (alpha, sigma) per step
(x_t = alpha x0 + sigma eps), which is all the solver needs. The update rules are this project's code, written from
the paper; a test checks them against diffusers' ``DPMSolverMultistepScheduler``.
"""

from __future__ import annotations

import math

import torch

from .process import each

def _lam(alpha: float, sigma: float) -> float:
    """log(alpha / sigma), +-inf at the ends."""
    if alpha == 0:
        return -math.inf
    if sigma == 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def dpmpp_coefficients(process, i: int, order: int) -> tuple:
    """(a, c): x_{i-1} = a x_i + sum_k c_k x0_k over x0 at steps i, i + 1, i + 2 (now, last, the one before), for
    DPM-Solver++ of the given order (already lowered where needed)."""
    a_s, s_s = process.alpha_sigma(i)
    a_t, s_t = process.alpha_sigma(i - 1)
    lam_s, lam_t = _lam(a_s, s_s), _lam(a_t, s_t)
    h = lam_t - lam_s
    em = -math.expm1(-h) if h != math.inf else 1.0  # 1 - e^{-h}
    a = s_t / s_s if s_s > 0 else 0.0  # sigma_t / sigma_s (exp(-h) alpha_t / alpha_s at the noisy end)
    if order == 1:
        return a, (a_t * em,)
    lam_1 = _lam(*process.alpha_sigma(i + 1))
    r0 = (lam_s - lam_1) / h
    if order == 2:
        # D = x0 + (x0 - x0_1) / (2 r0)
        return a, (a_t * em * (1 + 1 / (2 * r0)), -a_t * em / (2 * r0))
    lam_2 = _lam(*process.alpha_sigma(i + 2))
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


def step_order(max_order: int, done: int, i: int, steps: int) -> int:
    """The order of step i (i = 0 is the last): at most the history (``done`` earlier steps) + 1; 1 for the last
    step, into the clean image; at most 2 for the one before when there are fewer than 15 steps (diffusers'
    ``lower_order_final``, which stabilises few-step sampling)."""
    if i == 0:
        return 1
    cap = 2 if (i == 1 and steps < 15) else max_order
    return max(1, min(max_order, cap, done + 1))


class History:
    """The x0 of the last steps as whole canvases (written band by band by the streamed variant)."""

    def __init__(self, keep: int):
        self.keep, self.items, self.done = keep, [], 0

    def update(self, x, i, x0_now, process, order, rows=None):
        """x_{i-1} from x_i and the x0 history (over pixel ``rows`` of the stored canvases when given: the streamed
        variant); x, x0_now and the history are states (a tensor or a tuple of tensors)."""
        a, c = dpmpp_coefficients(process, i, order)

        def one(x, x0, *history):
            new = a * x + c[0] * x0
            for k in range(1, order):
                new = new + c[k] * (history[k - 1] if rows is None else history[k - 1][..., rows, :])
            return new

        return each(one, x, x0_now, *self.items[:order - 1])

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
