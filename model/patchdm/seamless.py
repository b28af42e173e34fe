"""Seamless sampling: the patch grid moved or several grids combined at the low-noise steps, so that no pixel sits on
the same tile border at every step (docs/EVALUATION.md, "Seamless sampling"; beyond the paper).

A young Patch-DM model gives each decoder tile a slightly different tint (each tile has its own position input), and
a sampler that always uses the same grid writes that tint into the image as a visible grid. Sampling-time levers
that do not touch the network, as tiled-diffusion tools and MultiDiffusion use them:

  shift     one grid per step, moved by a random offset (dy, dx) drawn from (seed, step): the per-tile errors of
            successive steps fall on different borders and average out; no extra evaluations.
  average   ``views`` grids per step (a random offset, then spread by p / views along the diagonal), predictions
            averaged with equal weights: views x the evaluations.
  blend     the same grids, each weighted by a tent that is highest at its tile centres and lowest at its borders,
            so every border of one grid is filled from the middle of another's tiles: views x the evaluations.

The grids move only at the steps whose noise-to-signal ratio sigma / alpha is at most ``below`` (default 0.5): the
high-noise steps lay out the image from the positions the model was trained at, and moving them loses the layout;
the tint seams are written in the low-noise steps.

The grid offset reaches the network through ``canvas_prediction(..., offset=)``; positions follow the image (a tile
at pixel (y, x) is at (y/p + 1/2, x/p + 1/2)). With every offset zero, one view, the result is the plain sampler's
(tested). Banded and streamed sampling stay so: each grid's band stream is merged row by row (``merge_bands``),
holding about a band (and a carried row of encoder features) of each grid.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from configs import SEAMLESS as METHODS
from runtime.rng import seed_for

DEFAULT = "shift"
DEFAULT_VIEWS = {"shift": 1, "average": 2, "blend": 2}
BELOW = 0.5  # the noise-to-signal ratio below which the grids move (docs/EVALUATION.md, "Seamless sampling")


@dataclass(frozen=True)
class Seamless:
    """A seamless sampler: ``method`` (METHODS), ``views`` grids per step, ``jitter``: draw the first grid's offset at
    random per step (False: the official grid first, the others spread from it; the test of exactness uses it),
    ``below``: move the grids only at the steps whose noise-to-signal ratio sigma / alpha is at most this (inf: at
    every step). The high-noise steps keep the official grid: they lay out the image, from the positions the model
    was trained at."""
    method: str = DEFAULT
    views: int = 1
    jitter: bool = True
    below: float = BELOW

    def active(self, process, i: int) -> bool:
        """Whether step i of ``process`` moves the grids (sigma <= below * alpha)."""
        alpha, sigma = process.alpha_sigma(i)
        return self.below == math.inf or sigma <= self.below * alpha  # (inf * 0 would be nan at a flow's t = 1)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"seamless method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.views < 1 or (self.method == "shift" and self.views != 1):
            raise ValueError(f"seamless {self.method} takes {'1 view' if self.method == 'shift' else 'views >= 1'}, "
                             f"got {self.views}")

    def offsets(self, step: int, p: int, seed: int = 0) -> list:
        """The grid offsets (dy, dx) of sampling step ``step`` (k = 0 first): a function of (seed, step) only, so
        image k is the same whatever the batch."""
        draw = random.Random(seed_for(seed, "seamless", step))  # plain Python: no tensor (fake-tensor estimates)
        oy, ox = (draw.randrange(p), draw.randrange(p)) if self.jitter else (0, 0)
        return [((oy + j * p // self.views) % p, (ox + j * p // self.views) % p) for j in range(self.views)]

    def weights(self, offset: tuple, y0: int, y1: int, w: int, p: int, device=None):
        """The weight (1, 1, y1 - y0, w) of the grid at ``offset`` on canvas rows y0..y1-1 (None: equal weights)."""
        if self.method != "blend":
            return None
        return (_tent(y0 + offset[0], y1 + offset[0], p, device)[:, None]
                * _tent(offset[1], w + offset[1], p, device)[None, :])[None, None]


def parse(method: str | None, views: int | None = None, below: float | None = None) -> Seamless | None:
    """--seamless [METHOD] --seamless_views K --seamless_below R -> a Seamless, or None when off ('' / None /
    'off'); ValueError naming the choices otherwise."""
    if not method or method == "off":
        if views is not None or below is not None:
            raise ValueError(f"--seamless_{'views' if views is not None else 'below'} needs --seamless")
        return None
    if method not in METHODS:
        raise ValueError(f"--seamless {method!r}: choose one of {', '.join(METHODS)} (or off)")
    if below is not None and not below >= 0:
        raise ValueError(f"--seamless_below {below}: must be at least 0 (inf: move the grids at every step)")
    return Seamless(method, DEFAULT_VIEWS[method] if views is None else views, below=BELOW if below is None else below)


def configured(sampling, method: str | None = None, views: int | None = None,
               below: float | None = None) -> Seamless | None:
    """The Seamless of a run's sampling config (sampling.seamless, seamless_views, seamless_below), each overridden
    by the value given here (the command line's); None when off."""
    method = sampling.seamless if method is None else method
    if method and method != "off":  # the config's views and threshold belong to its method, not to an "off"
        views = (sampling.seamless_views or None) if views is None else views
        below = sampling.seamless_below if below is None else below
    return parse(method, views, below)


def evaluations(spec: Seamless | None, process, sampler: str) -> int:
    """Network evaluations of a sampler over every step of ``process`` with ``spec``: a step where the grids move
    costs ``views`` times its evaluations (two per step for Heun but its last)."""
    n = 0
    for i in range(process.num_timesteps):
        per = 2 if sampler == "heun" and i > 0 else 1
        n += per * (spec.views if spec is not None and spec.active(process, i) else 1)
    return n


def _tent(a: int, b: int, p: int, device=None) -> torch.Tensor:
    """Distance of pixels a..b-1 (in grid coordinates) to their tile's nearer border, in (0, 1]."""
    u = torch.arange(a, b, device=device) % p + 0.5
    return torch.minimum(u, p - u) / (p / 2)


def combine(preds: list, offsets: list, spec: Seamless, y0: int, p: int) -> torch.Tensor:
    """The weighted mean of the grids' predictions (each (B, C, rows, W), canvas rows y0..)."""
    if len(preds) == 1:
        return preds[0]
    rows, w = preds[0].shape[-2:]
    ws = [spec.weights(o, y0, y0 + rows, w, p, preds[0].device) for o in offsets]
    if ws[0] is None:
        return sum(preds) / len(preds)
    return sum(wk * pk for wk, pk in zip(ws, preds)) / sum(ws)


def merge_bands(streams: list, offsets: list, spec: Seamless, p: int):
    """Yield (pixel rows, prediction) of the combined grids from one band stream per grid (each yielding contiguous
    canvas rows from the top): a row is yielded once every grid has covered it. A stream reads only rows below those
    it has yielded, and nothing is yielded before every stream has passed it, so a caller may still update the canvas
    in place. Holds at most about one band of each grid."""
    pending = [[] for _ in streams]  # per grid: the (first row, prediction) bands not yet yielded
    reach = [0] * len(streams)  # the canvas row each grid has covered up to
    done = 0
    live = list(range(len(streams)))
    while live:
        k = min(live, key=lambda j: reach[j])
        band = next(streams[k], None)
        if band is None:
            live.remove(k)
            continue
        rows, out = band
        pending[k].append((rows.start, out))
        reach[k] = rows.stop
        upto = min(reach)
        if upto > done:
            parts = [_take_rows(pending[j], done, upto) for j in range(len(streams))]
            yield slice(done, upto), combine(parts, offsets, spec, done, p)
            done = upto


def _take_rows(pending: list, a: int, b: int) -> torch.Tensor:
    """Rows a..b-1 out of a grid's pending bands (first row, tensor), dropping what is no longer needed."""
    parts = [out[..., max(a, s) - s:min(b, s + out.shape[-2]) - s, :] for s, out in pending
             if s < b and s + out.shape[-2] > a]
    pending[:] = [(s, out) for s, out in pending if s + out.shape[-2] > b]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
