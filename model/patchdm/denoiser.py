"""The Patch-DM denoiser: the network applied to whole canvases (sampling) and to training windows (the loss).

``Denoiser`` is the one object every sampler, trainer and tool calls. For a canvas it owns the network's prediction
(eps, v or the flow velocity, by the objective the model was trained with): classifier-free guidance, bands (bounded
memory) and wrap-around are execution details of that call (``CanvasOptions``); for a training window it owns the two
loss terms. Both go through the model's collage mode (modes.py), so training and sampling cannot drift apart. The
process is not part of the network: the loss is given one (diffusion/process.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .canvas import canvas_prediction_bands, check_canvas
from .grid import window_crop, window_slice
from .modes import collage_mode
from .seamless import Seamless, merge_bands


@dataclass(frozen=True)
class CanvasOptions:
    """How a canvas is sampled. cfg_scale: guidance w ((1 + w) out(code, pos) - w out(0, null pos); 0 = none);
    band_rows / band_cols: decode that many tile rows / columns at a time (None: all at once; bounded memory, the
    same result); wrap: '', 'x', 'y' or 'xy' (circular padding: panoramas, tiles); seed: the random draws of the
    sampling (the pixel-space modes' grid shifts, inpainting's noise, the seamless grid offsets); clip_x0: clip the
    predicted x0 to [-1, 1] (the official sampler does); in_place: a banded sampler may overwrite x_T instead of a
    copy; seamless: move or combine patch grids per step (seamless.py; None: the official grid, feature collage
    only)."""
    cfg_scale: float = 0.0
    band_rows: int | None = None
    band_cols: int | None = None
    wrap: str = ""
    seed: int = 0
    clip_x0: bool = True
    in_place: bool = False
    seamless: Seamless | None = None

    @property
    def banded(self) -> bool:
        return self.band_rows is not None or self.band_cols is not None


PLAIN = CanvasOptions()


def cfg_conditions(t, code):
    """(t, code, pos_keep) of a guided evaluation's doubled batch, conditional half first. Faithful: the
    unconditional half has its code zeroed and its positions dropped (docs/FAITHFULNESS.md, "Guidance")."""
    keep = torch.cat([torch.ones(t.shape[0], device=t.device), torch.zeros(t.shape[0], device=t.device)])
    return torch.cat([t, t]), torch.cat([code, torch.zeros_like(code)]), keep


def cfg_combine(out: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(1 + w) out_c - w out_u from the prediction of a doubled batch (conditional half first)."""
    b = out.shape[0] // 2
    return (1 + cfg_scale) * out[:b] - cfg_scale * out[b:]


class Denoiser:
    """net: a PatchUNet (or PatchDM); patch_size p; collage: the mode name the model was trained with."""

    def __init__(self, net, patch_size: int, collage: str = "feature"):
        self.net, self.p, self.mode = net, patch_size, collage_mode(collage)

    @property
    def streams(self) -> bool:
        """True when the canvas prediction can be computed band by band in reading order (``predict_bands``), so a
        sampler may update the canvas in place: the feature collage."""
        return self.mode.streams

    def predict(self, x_t, t, code, opts: CanvasOptions = PLAIN, pos_keep=None, step: int = 0) -> torch.Tensor:
        """The network's prediction over canvases x_t (B, 3, H, W) at network times t (B,) with codes (B, D): eps for
        the paper's objective, v or the flow velocity for the others (the process converts it, diffusion/process.py);
        guided as (1 + w) out(code, pos) - w out(0, null pos) when opts.cfg_scale = w != 0 (the same guidance
        whatever the objective: each conversion is affine in the output with x_t fixed). Bands bound memory (same
        result); wrap pads those axes circularly; step (k = 0 first) and opts.seed choose the pixel-space modes' grid
        shift."""
        if not opts.cfg_scale:
            return self.mode.predict(self.net, self.p, x_t, t, code, opts, pos_keep, step)
        t2, code2, keep = cfg_conditions(t, code)
        return cfg_combine(self.mode.predict(self.net, self.p, torch.cat([x_t, x_t]), t2, code2, opts, keep, step),
                           opts.cfg_scale)

    def predict_bands(self, x_t, t, code, opts: CanvasOptions, step: int = 0):
        """Yield (pixel rows, prediction) band by band of opts.band_rows tile rows (default: all), top to bottom
        (feature collage only). A band reads only rows below those already yielded, so the caller may update x_t in
        place between bands; with guidance only each band's rows are doubled, never the canvas
        (``canvas_prediction_bands``). With opts.seamless the grids of sampling step ``step`` are merged row by
        row."""
        if not self.streams:
            raise ValueError(f"the {self.mode.name} collage cannot be evaluated in streamed bands")
        if opts.seamless is None:
            yield from self._bands(x_t, t, code, opts, (0, 0))
            return
        offsets = opts.seamless.offsets(step, self.p, opts.seed)
        yield from merge_bands([self._bands(x_t, t, code, opts, o) for o in offsets], offsets, opts.seamless, self.p)

    def _bands(self, x_t, t, code, opts: CanvasOptions, offset: tuple):
        rows = opts.band_rows or x_t.shape[-2] // self.p + 1
        if not opts.cfg_scale:
            yield from canvas_prediction_bands(self.net, x_t, t, code, self.p, rows, band_cols=opts.band_cols,
                                               wrap=opts.wrap, offset=offset)
            return
        t2, code2, keep = cfg_conditions(t, code)
        for r, out in canvas_prediction_bands(self.net, x_t, t2, code2, self.p, rows, keep, opts.band_cols, opts.wrap,
                                              repeat=2, offset=offset):
            yield r, cfg_combine(out, opts.cfg_scale)

    def loss_terms(self, win: "Window", t, code, process, pos_keep=None):
        """The two-term window loss per image, (shift, noshift) each (B,) (docs/FAITHFULNESS.md, "Training loss").

        t (B,) loss times of ``process`` (timestep indices of a VPProcess, flow times in [0, 1) of a FlowProcess, as
        its ``draw_t`` gives); code (B, D) (already zeroed where CFG drops it); pos_keep (B,) or None.
        Faithful: x_t is q_sample of the padded canvas with the padding zeroed, as at sampling time, and the target
        is the noise (eps objective); the v and flow objectives change only x_t's path and the target.
        """
        x_t = process.corrupt(win.x0, t, win.noise) * win.mask
        target = process.target(win.x0, t, win.noise)
        return self.mode.loss_terms(self.net, x_t, target, win.mask, process.net_t(t), win.index, code, self.p,
                                    pos_keep, win.offset)

    def canvas_loss_terms(self, x0, t, noise, window, code, process, pos_keep=None, offset=None):
        """``loss_terms`` for whole images x0 (B, 3, H, W) and noise over the padded canvas (B, 3, H+p, W+p): the
        window is cut out of both (the official computation draws the noise of the whole padded canvas)."""
        p = self.p
        b, _, h, w = x0.shape
        check_canvas(h, w, p)
        if noise.shape[-2:] != (h + p, w + p):
            raise ValueError(f"noise must cover the padded canvas {(h + p, w + p)}, got {tuple(noise.shape[-2:])}")
        if not (0 <= window[0] < h // p and 0 <= window[1] < w // p):
            raise ValueError(f"window {window} outside the {h // p}x{w // p} grid of window positions")
        x0_win, mask_win = window_crop(x0, window, p)
        rs, cs = window_slice(window, p)
        return self.loss_terms(Window(x0_win, mask_win, noise[..., rs, cs], window, offset), t, code, process,
                               pos_keep)


@dataclass
class Window:
    """One training window of a batch: x0 and noise (B, 3, 2p, 2p) of the 2x2-patch window ``index`` = (row, col) of
    the half-patch-padded images, mask (1 or B, 1, 2p, 2p) 1 on the image and 0 on the padding, and offset the
    pixel_random ablation's crop inside the window (else None)."""
    x0: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor
    index: tuple
    offset: tuple | None = None
