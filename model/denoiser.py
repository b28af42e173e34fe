"""The Patch-DM denoiser: the network applied to whole canvases (sampling) and to training windows (the loss).

``Denoiser`` is the one object every sampler, trainer and tool calls. For a canvas it owns the eps: classifier-free
guidance, bands (bounded memory) and wrap-around are execution details of that call; for a training window it owns
the two loss terms. Both go through the model's collage mode (model/collages.py), so training and sampling cannot
drift apart. The noise schedule is not part of the network: the loss is given one (diffusion/schedule.py).
"""

from __future__ import annotations

import torch

from .canvas import canvas_eps_bands, check_canvas
from .collage import window_crop, window_slice
from .collages import collage_mode


def cfg_conditions(t, code):
    """(t, code, pos_keep) of a guided evaluation's doubled batch, conditional half first. Faithful: the
    unconditional half has its code zeroed and its positions dropped (docs/FAITHFULNESS.md, "Guidance")."""
    keep = torch.cat([torch.ones(t.shape[0], device=t.device), torch.zeros(t.shape[0], device=t.device)])
    return torch.cat([t, t]), torch.cat([code, torch.zeros_like(code)]), keep


def cfg_combine(eps: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(1 + w) eps_c - w eps_u from the eps of a doubled batch (conditional half first)."""
    b = eps.shape[0] // 2
    return (1 + cfg_scale) * eps[:b] - cfg_scale * eps[b:]


class Denoiser:
    """net: a PatchUNet (or PatchDM); patch_size p; collage: the mode name the model was trained with."""

    def __init__(self, net, patch_size: int, collage: str = "feature"):
        self.net, self.p, self.mode = net, patch_size, collage_mode(collage)

    @property
    def streams(self) -> bool:
        """True when the canvas eps can be computed band by band in reading order (``eps_bands``), so a sampler may
        update the canvas in place: the feature collage."""
        return self.mode.streams

    def eps(self, x_t, t, code, cfg_scale: float = 0.0, pos_keep=None, band_rows=None, band_cols=None,
            wrap: str = "", step: int = 0, seed: int = 0) -> torch.Tensor:
        """The network output over canvases x_t (B, 3, H, W) at network times t (B,) with codes (B, D): eps for the
        paper's objective (hence the name), v or the flow velocity for the others (the process converts it,
        diffusion/schedule.py); guided as (1 + w) out(code, pos) - w out(0, null pos) when cfg_scale = w != 0 (the
        same guidance whatever the objective: each conversion is affine in the output with x_t fixed). band_rows /
        band_cols bound memory (same result); wrap pads those axes circularly; step / seed choose the pixel-space
        modes' grid shift."""
        kw = dict(wrap=wrap, band_rows=band_rows, band_cols=band_cols, step=step, seed=seed)
        if not cfg_scale:
            return self.mode.eps(self.net, x_t, t, code, self.p, pos_keep=pos_keep, **kw)
        t2, code2, keep = cfg_conditions(t, code)
        return cfg_combine(self.mode.eps(self.net, torch.cat([x_t, x_t]), t2, code2, self.p, pos_keep=keep, **kw),
                           cfg_scale)

    def eps_bands(self, x_t, t, code, band_rows: int, band_cols=None, cfg_scale: float = 0.0, wrap: str = ""):
        """Yield (pixel rows, eps) band by band, top to bottom (feature collage only). A band reads only rows below
        those already yielded, so the caller may update x_t in place between bands; with guidance only each band's
        rows are doubled, never the canvas (model/canvas.py, ``canvas_eps_bands``)."""
        if not self.streams:
            raise ValueError(f"the {self.mode.name} collage cannot be evaluated in streamed bands")
        if not cfg_scale:
            yield from canvas_eps_bands(self.net, x_t, t, code, self.p, band_rows, band_cols=band_cols, wrap=wrap)
            return
        t2, code2, keep = cfg_conditions(t, code)
        for rows, eps in canvas_eps_bands(self.net, x_t, t2, code2, self.p, band_rows, keep, band_cols, wrap,
                                          repeat=2):
            yield rows, cfg_combine(eps, cfg_scale)

    def loss_terms(self, x0_win, mask_win, t, noise_win, window, code, schedule, pos_keep=None, offset=None):
        """The two-term window loss per image, (shift, noshift) each (B,) (docs/FAITHFULNESS.md, "Training loss").

        x0_win, noise_win (B, 3, 2p, 2p): the window (row, col) of the half-patch-padded images and of the noise;
        mask_win (1 or B, 1, 2p, 2p): 1 on the image, 0 on the padding; t (B,) loss times of ``schedule`` (the process:
        timestep indices of a ``Schedule``, flow times in [0, 1] of a ``FlowSchedule``, as its ``draw_t`` gives);
        code (B, D) (already zeroed where CFG drops it); pos_keep (B,) or None; offset: the pixel_random crop.
        Faithful: x_t is q_sample of the padded canvas with the padding zeroed, as at sampling time, and the target
        is the noise (eps objective); the v and flow objectives change only x_t's path and the target.
        """
        x_t = schedule.corrupt(x0_win, t, noise_win) * mask_win
        target = schedule.target(x0_win, t, noise_win)
        return self.mode.loss_terms(self.net, x_t, target, mask_win, schedule.net_t(t), window, code, self.p,
                                    pos_keep, offset)

    def canvas_loss_terms(self, x0, t, noise, window, code, schedule, pos_keep=None, offset=None):
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
        return self.loss_terms(x0_win, mask_win, t, noise[..., rs, cs], window, code, schedule, pos_keep, offset)
