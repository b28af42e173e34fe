"""Semantic codes for images the model never saw: fitting a code to known pixels (inpainting / outpainting).

A code-table model has a code per training image only. For a new image, ``fit_code`` finds the code under which the
denoiser explains the known pixels best: it minimises the model's own training loss (``Denoiser.loss_terms``, in the
model's collage mode) over windows whose centre patch is fully known, with the unknown pixels treated like padding
(zeroed in x_t, masked out of the un-shifted term). Only the code is optimised; the network is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.rng import rng
from .grid import window_crop
from .denoiser import Denoiser, Window


def known_windows(mask: torch.Tensor, p: int) -> list:
    """Training windows (row, col) of a canvas whose centre patch (image patch (row, col)) is entirely known.

    mask (1, 1, H, W) or (H, W), 1 = known."""
    m = mask.reshape(mask.shape[-2], mask.shape[-1])
    rows, cols = m.shape[0] // p, m.shape[1] // p
    full = m[:rows * p, :cols * p].reshape(rows, p, cols, p).amin(dim=(1, 3)) > 0.5
    return [tuple(rc) for rc in full.nonzero().tolist()]


@dataclass(frozen=True)
class FitOptions:
    """steps of Adam with learning rate lr; each step uses ``batch`` loss times and one window; seed fixes every
    draw."""
    steps: int = 200
    lr: float = 1e-2
    batch: int = 8
    seed: int = 0


def fit_code(den: Denoiser, x_known: torch.Tensor, mask: torch.Tensor, code_init: torch.Tensor, process,
             opts: FitOptions = FitOptions(), progress=None) -> torch.Tensor:
    """A code (1, D) for one image: Adam on the code alone, minimising the training loss of the Denoiser ``den`` on
    the image's known windows.

    x_known (1, 3, H, W) in [-1, 1]; mask (1, 1, H, W), 1 = known; code_init (1, D) (e.g. the code table's mean);
    process: the model's (diffusion/process.py). Each step draws one known window, ``opts.batch`` loss times
    (stratified over 0..T-1, or over [0, 1) for a flow) and fresh noise, all from ``opts.seed``. progress(step, loss)
    is called after every step when given. Raises ValueError when no p x p patch of the image grid is fully known.
    """
    p, unet, batch = den.p, den.net, opts.batch
    windows = known_windows(mask, p)
    if not windows:
        raise ValueError(f"no {p}x{p} patch of the canvas grid is fully known: a code cannot be fitted (give a larger "
                         "known region, or pick a code with --code latent / index:N)")
    T = process.num_timesteps
    g = rng(opts.seed, "fit")
    code = code_init.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([code], lr=opts.lr)
    was_training = unet.training
    unet.eval()
    for prm in unet.parameters():
        prm.requires_grad_(False)
    try:
        for step in range(opts.steps):
            r, c = windows[int(torch.randint(len(windows), (1,), generator=g))]
            x_win, pad_mask = window_crop(x_known, (r, c), p)
            known = window_crop(mask.to(x_known.dtype), (r, c), p)[0]
            u = torch.arange(batch) + torch.rand(batch, generator=g)
            t = u / batch if process.continuous else (u * T / batch).long().clamp(max=T - 1)  # flow: t in [0, 1)
            noise = torch.randn(batch, 3, 2 * p, 2 * p, generator=g).to(x_known.device)
            win = Window(x_win.expand(batch, -1, -1, -1), pad_mask * known, noise, (r, c), (p // 2, p // 2))
            shift, noshift = den.loss_terms(win, t.to(x_known.device), code.expand(batch, -1), process)
            loss = shift.mean() + noshift.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(step, loss.item())
    finally:
        for prm in unet.parameters():
            prm.requires_grad_(True)
        unet.train(was_training)
    return code.detach()
