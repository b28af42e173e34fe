"""Samplers as functions of a model function and a process: their step functions and their registry, in one place
(docs/FAITHFULNESS.md, "Sampling").

A model function is ``model_fn(x, t, i) -> output``: x the state (one tensor, or a tuple of tensors for a model of
several latents), t the network's time input (``process.model_t``), i the index of the process step being taken (a
model that changes with the step, such as Patch-DM's pixel-space collage, reads it; others ignore it). Its output has
the state's structure. A *band* model ``bands_fn(x, t, i)`` yields (pixel rows, output) of a canvas in reading order,
each band reading only rows not yet updated, so a sampler may update the canvas in place band by band (the same
result with one canvas and one band of features in memory).

A sampler is a *step* ``step(x, i) -> x`` from step i of a respaced process to step i - 1, made by ``make_step``, and
``run_steps`` over the steps; wrappers (inpainting: diffusion/inpaint.py) act on the steps of any sampler.

  ddim      the process's own one-evaluation update: DDIM (eta 0) for eps and v models, the paper's
  euler     the same step on a flow model (Euler); ``ddim`` is accepted for flow models as its old name
  heun      Heun's 2nd-order method on a flow model's ODE (EDM's sampler): 2N - 1 evaluations for N steps
  dpmpp2m   DPM-Solver++(2M), dpmpp3m: (3M), for every objective (diffusion/dpm_solver.py), beyond the paper

VP models take the official DDIM spacing with ``ddim`` (bit-identical to the official sampler) and steps uniform in
log-SNR with the multistep solvers (DPM-Solver's own choice; diffusers' "linspace" leaves a final jump whose error
falls only like 1/N, docs/BENCHMARKS.md, "Fast samplers"); flow models use their uniform grid.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from .dpm_solver import History, step_order
from .process import each, first

SAMPLERS = ("ddim", "euler", "heun", "dpmpp2m", "dpmpp3m")
ONE_STEP = ("ddim", "euler")  # one network evaluation from t to t - 1: what inpainting (RePaint) can wrap
ORDERS = {"dpmpp2m": 2, "dpmpp3m": 3}


def supported(sampler: str, objective: str) -> str | None:
    """None when ``sampler`` works with models of ``objective``, else the one-line reason."""
    if sampler not in SAMPLERS:
        return f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}"
    if sampler in ("euler", "heun") and objective != "flow":
        return (f"--sampler {sampler} integrates a flow model's velocity; this is an {objective} model: use ddim, "
                "dpmpp2m or dpmpp3m")
    return None


def default_sampler(objective: str) -> str:
    """The paper's sampler for VP models (DDIM), Euler for flow models."""
    return "euler" if objective == "flow" else "ddim"


def canonical(sampler: str | None, objective: str) -> str:
    """The sampler's own name: None means the default; ``ddim`` on a flow model is Euler."""
    if sampler is None:
        return default_sampler(objective)
    return "euler" if sampler == "ddim" and objective == "flow" else sampler


def spacing(sampler: str) -> str:
    """The timestep spacing a VP process is respaced with for ``sampler``: the official one for the one-step update
    (bit-identical to the official sampler), uniform in log-SNR (the last step at t = 0) for the multistep solvers."""
    return "logsnr" if sampler in ORDERS else "official"


def respaced(process, sampler: str, steps: int, timestep_spacing: str | None = None):
    """``process`` over ``steps`` steps with the sampler's spacing (or ``timestep_spacing``, one of vp.SPACINGS; a
    flow process has only its uniform grid)."""
    return process.respace(steps, timestep_spacing or spacing(sampler))


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations of a sampler over ``steps`` steps."""
    return 2 * steps - 1 if sampler == "heun" else steps


def _times(process, i: int, x):
    b = first(x)
    return process.model_t(i, b.shape[0], b.device)


def _cast(out, x):
    return each(lambda o, xe: o.to(xe.dtype), out, x)


def one_step(model_fn, process, clip_x0: bool = True):
    """step(x, i) of the process's own update (DDIM; Euler for a flow) with the model evaluated on the whole of x."""

    def step(x, i):
        out = model_fn(x, _times(process, i, x), i)
        return each(lambda xe, oe: process.step(xe, i, oe, clip_x0), x, out)

    return step


def streamed_one_step(bands_fn, process, clip_x0: bool = True):
    """``one_step`` updating a canvas x in place band by band: a band's output depends only on rows that later bands
    have not yet updated, so the result equals ``one_step``'s."""

    def step(x, i):
        for rows, out in bands_fn(x, _times(process, i, x), i):
            x[..., rows, :] = process.step(x[..., rows, :], i, out, clip_x0)
        return x

    return step


def _x0(process, x, i, out, clip_x0):
    x0 = each(lambda xe, oe: process.to_x0(xe, i, oe.to(xe.dtype)), x, out)
    return each(lambda e: e.clamp(-1, 1), x0) if clip_x0 else x0


def dpmpp(model_fn, process, order: int = 2, clip_x0: bool = True):
    """step(x, i) of DPM-Solver++(order M) with the model evaluated on the whole of x; x0 is clipped to [-1, 1] as
    thresholding (the model was trained on [-1, 1]) when clip_x0."""
    hist = History(order - 1)

    def step(x, i):
        x0 = _x0(process, x, i, model_fn(x, _times(process, i, x), i), clip_x0)
        new = hist.update(x, i, x0, process, step_order(order, hist.done, i, process.num_timesteps))
        hist.push(x0)
        return new

    return step


def streamed_dpmpp(bands_fn, process, order: int = 2, clip_x0: bool = True):
    """``dpmpp`` updating a canvas x in place band by band (a band's output depends only on rows not yet updated);
    the x0 history is kept as canvases, each band writing its rows (one canvas per order above 1)."""
    hist = History(order - 1)

    def step(x, i):
        o = step_order(order, hist.done, i, process.num_timesteps)
        x0_full = hist.buffer(x)
        for rows, out in bands_fn(x, _times(process, i, x), i):
            xr = x[..., rows, :]
            x0 = _x0(process, xr, i, out, clip_x0)
            x[..., rows, :] = hist.update(xr, i, x0, process, o, rows)
            if x0_full is not None:
                x0_full[..., rows, :] = x0
        hist.push(x0_full)
        return x

    return step


def heun(model_fn, process, clip_x0: bool = True):
    """step(x, i) of Heun on a flow model from t = (i + 1)/N to i/N: an Euler step, the velocity at its end, the
    average of both; Euler for the last step into t = 0 (i = 0). Both evaluations of step i are told i."""
    euler = one_step(model_fn, process, clip_x0)

    def step(x, i):
        if i == 0:
            return euler(x, i)
        t, s = process.time(i), process.time(i - 1)
        v1 = _cast(model_fn(x, _times(process, i, x), i), x)
        x1 = each(lambda xe, ve: process.step(xe, i, ve, clip_x0), x, v1)
        v2 = _cast(model_fn(x1, _times(process, i - 1, x), i), x)
        if clip_x0:
            return each(lambda xe, a, b: process.step(xe, i, (a + b) / 2, clip_x0), x, v1, v2)
        return each(lambda xe, a, b: xe + (s - t) * (a + b) / 2, x, v1, v2)

    return step


def make_step(sampler: str, process, model_fn=None, bands_fn=None, clip_x0: bool = True):
    """The step function of ``sampler`` over a whole-state model_fn, or over a band model bands_fn (a canvas updated
    in place; Heun evaluates the same x twice per step and has no streamed form)."""
    if sampler in ONE_STEP:
        return streamed_one_step(bands_fn, process, clip_x0) if bands_fn else one_step(model_fn, process, clip_x0)
    if sampler in ORDERS:
        if bands_fn:
            return streamed_dpmpp(bands_fn, process, ORDERS[sampler], clip_x0)
        return dpmpp(model_fn, process, ORDERS[sampler], clip_x0)
    if sampler == "heun":
        if bands_fn:
            raise ValueError("heun has no streamed form")
        return heun(model_fn, process, clip_x0)
    raise ValueError(supported(sampler, "eps") or sampler)


def run_steps(step, x, process, progress: bool | float = False, desc: str = "sample"):
    """Apply step(x, i) for i = N-1 .. 0 of the respaced process. ``progress``: a bar of the steps (True), none
    (False), or a number of seconds: the bar appears only once the steps have taken that long (a large canvas)."""
    delay = 0.0 if progress is True else float(progress or 0)
    for i in tqdm(range(process.num_timesteps - 1, -1, -1), disable=not progress, desc=desc, leave=False,
                  delay=delay, dynamic_ncols=True):
        x = step(x, i)
    return x


def sample(sampler: str, model_fn, x_T, process, clip_x0: bool = True, progress: bool = False):
    """x_T -> x_0 with ``sampler`` over every step of the (respaced) process."""
    return run_steps(make_step(sampler, process, model_fn, clip_x0=clip_x0), x_T, process, progress, sampler)


def ddim(model_fn, x_T, process, clip_x0: bool = True, progress: bool = False):
    """DDIM (eta 0; Euler for a flow) from x_T to x_0 over every step of the (respaced) process."""
    return sample("ddim", model_fn, x_T, process, clip_x0, progress)
