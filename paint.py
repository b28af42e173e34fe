r"""Inpainting and outpainting with a trained Patch-DM (paper Fig. 7, 8; not in the official code).

    python paint.py inpaint  -f runs/exp/checkpoints/last.pt --image photo.png --mask hole.png -o filled.png
    python paint.py outpaint -f runs/exp/checkpoints/last.pt --image photo.png --canvas 512x2048 -o wide.png
    python paint.py outpaint -f runs/exp/checkpoints/last.pt --image photo.png --canvas 512x2048 --place 0,0 \
        --wrap x -o pano.png   # extend to the right into a 360-degree panorama

Inpainting: --mask is an image of the same size, white (>= 128) where pixels are to be generated, black where they
are kept. Outpainting: the image is placed on a larger --canvas at --place TOP,LEFT (default: centred) and the rest
is generated. The kept pixels come back unchanged (bit for bit in the PNG). Each DDIM step replaces the kept pixels
by the image forward-noised to that step; --resample R repeats every step R times with re-noising in between
(RePaint), which blends the boundary (R times the cost). The semantic code (--code) is fitted to the kept pixels by
default (code-table models), computed by the image encoder (encoder models), or sampled from the latent DDPM.
An existing output file is never replaced unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffusion import ONE_STEP, SAMPLERS
from model import bundle_of, read
from model.patchdm import CanvasOptions, Denoiser
from model.patchdm.cli import add_seamless_args, check_sampler, parse_bands, seamless_option
from model.patchdm.fit_code import FitOptions, fit_code
from model.patchdm.grid import WRAPS
from model.patchdm.sampling import bundle_codes, image_process, sample_canvas
from runtime.cli import ArgumentParser, parse_hw, positive_int
from runtime.device import autocast, check_precision, pick_device, sampling_precision
from runtime.errors import CLIError, run_cli
from runtime.files import check_new_file, make_parents, save_png
from runtime.images import pixels, read_image
from runtime.rng import rng


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("mode", choices=["inpaint", "outpaint"])
    ap.add_argument("--full_path", "-f", required=True,
                    help="train.py checkpoint, train_latent.py full checkpoint, or an official one")
    ap.add_argument("--image", "-i", required=True, help="the known image (any format PIL reads)")
    ap.add_argument("--mask", "-m", default=None, help="inpaint: white = generate, black = keep (same size)")
    ap.add_argument("--canvas", default=None, help="outpaint: HxW of the result, multiples of the patch size")
    ap.add_argument("--place", default="center", help="outpaint: TOP,LEFT pixel of the image on the canvas, or center")
    ap.add_argument("--output", "-o", required=True, help="output PNG (with --num N: NAME_k.png)")
    ap.add_argument("--num", type=positive_int, default=1, help="number of results (seeds seed..seed+N-1)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ap.add_argument("--code", default="auto",
                    help="auto (fit for code-table models, the image encoder for encoder models), fit, encoder, "
                         "latent (sampled from the latent DDPM: a full checkpoint), or index:N (training image N)")
    ap.add_argument("--fit_steps", type=positive_int, default=200, help="Adam steps of --code fit")
    ap.add_argument("--fit_lr", type=float, default=1e-2, help="Adam learning rate of --code fit")
    ap.add_argument("--resample", type=positive_int, default=5,
                    help="RePaint resampling per step (1 = replacement only)")
    ap.add_argument("--sampler", default=None, choices=list(SAMPLERS),
                    help="ddim (eps and v models) or euler (flow models; ddim is accepted as its old name) only: "
                         "replacement and RePaint impose the known pixels at every step, which a multistep solver's "
                         "history cannot follow")
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="DDIM steps (default: the checkpoint's sampling.steps, 50 for the paper's presets)")
    ap.add_argument("--cfg_scale", type=float, default=None, help="guidance w (default: the checkpoint's)")
    ap.add_argument("--wrap", default="", choices=list(WRAPS), help="circular padding (panoramas, tiles)")
    ap.add_argument("--bands", default="auto", help="as test.py: auto, off, R or RxC tiles per band")
    add_seamless_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="raw (non-EMA) weights of every network in the checkpoint")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default CUDA when present)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="sampling autocast (default bf16 on GPU, fp32 on CPU); code fitting runs in fp32")
    return ap


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


def choose_code(args, bundle, x, m, device, k: int):
    """The semantic code (1, D) of result k, as --code asks."""
    net, cfg = bundle.net, bundle.cfg
    kind = args.code
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
        g = rng(args.seed, "latent", k)
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
            init = choose_code(argparse.Namespace(**{**vars(args), "code": "encoder"}), bundle, x, m, device, k)
        else:
            init = torch.zeros(1, cfg.model.code_dim, device=device)
        bar = tqdm(total=args.fit_steps, desc="fit code", leave=False, dynamic_ncols=True)

        def progress(step, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        try:
            code = fit_code(Denoiser(net, cfg.model.patch_size, cfg.model.collage), x, m, init.to(device),
                            image_process(cfg.diffusion), FitOptions(args.fit_steps, args.fit_lr, seed=args.seed + k),
                            progress)
        except ValueError as e:
            raise CLIError(str(e)) from None
        bar.close()
        return code
    raise CLIError(f"--code {args.code!r}: use auto, fit, encoder, latent or index:N")


def output_paths(out: Path, num: int) -> list:
    """NAME.png for one result, NAME_k.png for --num N."""
    return [out] if num == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}") for k in range(num)]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.sampler is not None and args.sampler not in ONE_STEP:
        raise CLIError(f"--sampler {args.sampler}: paint.py needs a one-step sampler (ddim; euler for flow models): "
                       "replacement and RePaint re-impose the known pixels at every step, which a multistep "
                       "solver's history cannot follow")
    paths = output_paths(Path(args.output), args.num)
    for path in paths:
        check_new_file(path, args.overwrite)
    device = pick_device(args.device)
    ck = read(args.full_path)
    if ck.get("family") != "patchdm":
        raise CLIError(f"{args.full_path} is a {ck.get('family')} checkpoint; paint.py in- and outpaints with Patch-DM "
                       "checkpoints")
    b = bundle_of(ck, args.full_path, args.raw)
    net, cfg = b.net, b.cfg
    p = cfg.model.patch_size
    image = read_image(args.image)
    if args.mode == "inpaint":
        if not args.mask:
            raise CLIError("inpaint needs --mask (white = generate, black = keep)")
        x, m, box = inpaint_canvas(image, read_mask(args.mask, image.shape[-2:]), p)
    else:
        if not args.canvas:
            raise CLIError("outpaint needs --canvas HxW (larger than the image, multiples of the patch size)")
        x, m, box = outpaint_canvas(image, parse_hw(args.canvas), args.place, p)
    if m.min() == 1:
        raise CLIError("nothing to generate: the mask keeps every pixel")
    steps = args.steps if args.steps is not None else cfg.sampling.steps
    sampler = check_sampler(args.sampler, cfg.diffusion.objective, steps, cfg.diffusion.num_timesteps)
    precision = check_precision(args.precision or sampling_precision(device), device)
    w = cfg.sampling.cfg_scale if args.cfg_scale is None else args.cfg_scale
    band_rows, band_cols = parse_bands(args.bands, 2 if w else 1, x.shape[-2:], p)
    seamless = seamless_option(cfg.sampling, cfg.model.collage, args.seamless, args.seamless_views,
                               args.seamless_below)
    b.net, x, m = net.to(device), x.to(device), m.to(device)
    if b.latent is not None:
        b.latent = b.latent.to(device)
    den, process = Denoiser(b.net, p, cfg.model.collage), image_process(cfg.diffusion).respace(steps)
    for k, path in enumerate(paths):
        code = choose_code(args, b, x, m, device, k)
        x_T = torch.randn(x.shape, generator=rng(args.seed, "image", k)).to(device)
        opts = CanvasOptions(w, band_rows, band_cols, args.wrap, args.seed + k, cfg.sampling.clip_x0, in_place=True,
                             seamless=seamless)
        with torch.no_grad(), autocast(device, precision):
            img = sample_canvas(den, x_T, code, process, sampler, opts, known=(x, m), resample=args.resample,
                                progress=True)
        top, left, h, wd = box
        make_parents(path)  # only once there is a result: a refused code or a failed sample leaves nothing
        save_png(img[0, :, top:top + h, left:left + wd], path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
