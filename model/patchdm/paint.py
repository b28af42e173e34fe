"""In- and outpainting with Patch-DM (paper Fig. 7, 8; not in the official code), as paint.py and
``model.generator.Generator.paint`` use it: the known image on a canvas with a mask, a semantic code chosen for it
(fitted to the kept pixels, the image encoder's, sampled, or a training image's), then the one-step sampler with
the known pixels re-imposed at every step (RePaint with ``resample`` > 1)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffusion import ONE_STEP
from runtime.cli import parse_hw
from runtime.device import autocast
from runtime.errors import CLIError
from runtime.images import pixels, read_image
from runtime.rng import rng
from .cli import check_sampler, parse_bands, seamless_option
from .denoiser import CanvasOptions, Denoiser
from .fit_code import FitOptions, fit_code
from .sampling import bundle_codes, image_process, sample_canvas

MODES = ("inpaint", "outpaint")


def read_mask(path, hw: tuple) -> torch.Tensor:
    """(1, 1, H, W) float, 1 = keep, from a mask image (white = generate)."""
    m = pixels(path, lambda img: img.convert("L"), "mask image")
    if m.shape != tuple(hw):
        raise CLIError(f"mask {path} is {m.shape[0]}x{m.shape[1]} but the image is {hw[0]}x{hw[1]} (HxW)")
    return torch.from_numpy((m < 128).astype(np.float32))[None, None]


def round_up(v: int, p: int) -> int:
    return -(-v // p) * p


def inpaint_canvas(image, mask, p):
    """Canvas (image padded to multiples of p; the margin is generated and cropped off) and crop box."""
    h, w = image.shape[-2:]
    H, W = round_up(h, p), round_up(w, p)
    x = F.pad(image, (0, W - w, 0, H - h))
    m = F.pad(mask, (0, W - w, 0, H - h))
    return x, m, (0, 0, h, w)


def outpaint_canvas(image, canvas_hw, place, p):
    """Canvas with the image at place=(top, left); mask 1 on the image."""
    H, W = canvas_hw
    if H % p or W % p:
        raise CLIError(f"--canvas {H}x{W} is not divisible by the patch size {p}")
    h, w = image.shape[-2:]
    if place == "center":
        top, left = (H - h) // 2, (W - w) // 2
    else:
        try:
            top, left = (int(v) for v in place.split(","))
        except ValueError:
            raise CLIError(f"--place {place!r}: use TOP,LEFT (pixels) or center") from None
    if top < 0 or left < 0 or top + h > H or left + w > W:
        raise CLIError(f"the {h}x{w} image at {top},{left} does not fit the {H}x{W} canvas "
                       "(shrink the image or enlarge --canvas)")
    x = torch.zeros(1, 3, H, W)
    m = torch.zeros(1, 1, H, W)
    x[..., top:top + h, left:left + w] = image
    m[..., top:top + h, left:left + w] = 1
    return x, m, (0, 0, H, W)


def choose_code(code: str, gen, x, m, k: int, seed: int, fit_steps: int, fit_lr: float, progress: bool = True):
    """The semantic code (1, D) of result k, as --code asks (``gen`` a PatchDMGenerator)."""
    bundle, device = gen.bundle, gen.device
    net, cfg = gen.unet, gen.cfg
    kind = code
    if kind == "auto":
        kind = {"table": "fit", "encoder": "encoder", "none": "none"}[cfg.model.code_source]
    if cfg.model.code_source == "none":
        return torch.zeros(1, cfg.model.code_dim, device=device)
    if kind.startswith("index:"):
        if not net.uses_table:
            raise CLIError("--code index:N needs a code-table model")
        try:
            i = int(kind.split(":", 1)[1])
        except ValueError:
            raise CLIError(f"--code {kind!r}: N must be an integer") from None
        if not 0 <= i < net.code_source.weight.shape[0]:
            raise CLIError(f"--code {kind}: the table has {net.code_source.weight.shape[0]} rows")
        return net.code_source.weight[i:i + 1].detach()
    if kind == "latent":
        if bundle.latent is None:
            raise CLIError("--code latent needs a checkpoint with a latent model (from train_latent.py)")
        g = rng(seed, "latent", k)
        return bundle_codes(bundle, torch.randn(1, cfg.model.code_dim, generator=g).to(device),
                            cfg.sampling.latent_steps)
    if kind == "encoder":
        if not net.needs_image:
            raise CLIError("--code encoder needs a model trained with the image encoder (--semantic_enc)")
        # the encoder saw whole training images: give it the known image at the training size
        h, w = cfg.data.image_size
        with torch.no_grad():
            return net.code_source(F.interpolate(x * m, size=(h, w), mode="bilinear", antialias=True,
                                             align_corners=False))
    if kind == "fit":
        if net.uses_table:
            init = net.code_source.weight.detach().mean(dim=0, keepdim=True)
        elif net.needs_image:
            init = choose_code("encoder", gen, x, m, k, seed, fit_steps, fit_lr, progress)
        else:
            init = torch.zeros(1, cfg.model.code_dim, device=device)
        bar = tqdm(total=fit_steps, desc="fit code", leave=False, dynamic_ncols=True, disable=not progress)

        def progress(step, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        try:
            code = fit_code(Denoiser(net, cfg.model.patch_size, cfg.model.collage), x, m, init.to(device),
                            image_process(cfg.diffusion), FitOptions(fit_steps, fit_lr, seed=seed + k),
                            progress)
        except ValueError as e:
            raise CLIError(str(e)) from None
        bar.close()
        return code
    raise CLIError(f"--code {code!r}: use auto, fit, encoder, latent or index:N")


def paint(gen, mode: str, image, mask=None, canvas=None, place="center", num: int = 1, seed: int = 0,
          code: str = "auto", fit_steps: int = 200, fit_lr: float = 1e-2, resample: int = 5, sampler: str | None = None,
          steps: int | None = None, cfg_scale: float | None = None, wrap: str = "", bands: str = "auto",
          seamless: str | None = None, seamless_views: int | None = None, seamless_below: float | None = None,
          progress: bool = True):
    """Yield results k = 0..num-1 of a PatchDMGenerator ``gen``, (3, h, w) in [-1, 1] on the CPU, each once made.

    inpaint: ``image`` (a file, or a (1, 3, H, W) tensor in [-1, 1]) with ``mask`` (a file of the same size, white
    = generate) on a canvas of the next multiples of the patch; the result has the image's size. outpaint: the image
    at ``place`` ('TOP,LEFT' or 'center') on a ``canvas`` ('HxW' or (H, W)), which is the result's size. Result k
    starts from the noise of (seed, k); the kept pixels come back unchanged. Settings are checked (one-line errors)
    before the first result is made."""
    if sampler is not None and sampler not in ONE_STEP:
        raise CLIError(f"--sampler {sampler}: paint.py needs a one-step sampler (ddim; euler for flow models): "
                       "replacement and RePaint re-impose the known pixels at every step, which a multistep "
                       "solver's history cannot follow")
    if mode not in MODES:
        raise CLIError(f"mode {mode!r}: choose inpaint or outpaint")
    cfg, device = gen.cfg, gen.device
    p = cfg.model.patch_size
    image = image if isinstance(image, torch.Tensor) else read_image(image)
    if mode == "inpaint":
        if mask is None:
            raise CLIError("inpaint needs --mask (white = generate, black = keep)")
        x, m, box = inpaint_canvas(image, read_mask(mask, image.shape[-2:]), p)
    else:
        if canvas is None:
            raise CLIError("outpaint needs --canvas HxW (larger than the image, multiples of the patch size)")
        x, m, box = outpaint_canvas(image, parse_hw(canvas) if isinstance(canvas, str) else tuple(canvas), place, p)
    if m.min() == 1:
        raise CLIError("nothing to generate: the mask keeps every pixel")
    steps = steps if steps is not None else cfg.sampling.steps
    sampler = check_sampler(sampler, cfg.diffusion.objective, steps, cfg.diffusion.num_timesteps)
    w = cfg.sampling.cfg_scale if cfg_scale is None else cfg_scale
    band_rows, band_cols = parse_bands(bands, 2 if w else 1, x.shape[-2:], p)
    spec = seamless_option(cfg.sampling, cfg.model.collage, seamless, seamless_views, seamless_below)
    x, m = x.to(device), m.to(device)
    den, process = Denoiser(gen.unet, p, cfg.model.collage), image_process(cfg.diffusion).respace(steps)
    top, left, h, wd = box
    for k in range(num):
        # weights stored in half precision (Generator(cast_weights=True)) fit under the same autocast
        fitting = autocast(device, gen.precision) if gen.cast else contextlib.nullcontext()
        with fitting:
            z = choose_code(code, gen, x, m, k, seed, fit_steps, fit_lr, progress)
        x_T = torch.randn(x.shape, generator=rng(seed, "image", k)).to(device)
        opts = CanvasOptions(w, band_rows, band_cols, wrap, seed + k, cfg.sampling.clip_x0, in_place=True,
                             seamless=spec)
        with torch.no_grad(), autocast(device, gen.precision):
            img = sample_canvas(den, x_T, z, process, sampler, opts, known=(x, m), resample=resample,
                                progress=progress)
        yield img[0, :, top:top + h, left:left + wd].float().cpu()
