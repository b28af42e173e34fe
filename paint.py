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

import sys
from pathlib import Path

from diffusion import SAMPLERS
from model.generator import Generator
from model.patchdm.cli import add_seamless_args
from model.patchdm.grid import WRAPS
from model.patchdm.paint import MODES
from runtime.cli import ArgumentParser, positive_int
from runtime.errors import run_cli
from runtime.files import check_new_file, make_parents, save_png


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("mode", choices=list(MODES))
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


def output_paths(out: Path, num: int) -> list:
    """NAME.png for one result, NAME_k.png for --num N."""
    return [out] if num == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}") for k in range(num)]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    paths = output_paths(Path(args.output), args.num)
    for path in paths:
        check_new_file(path, args.overwrite)
    # fp32 weights: code fitting runs in fp32, sampling under --precision's autocast
    gen = Generator(args.full_path, raw=args.raw, device=args.device, precision=args.precision, cast_weights=False,
                    purpose="paint")
    results = gen.impl.paint(args.mode, args.image, mask=args.mask, canvas=args.canvas, place=args.place,
                             num=args.num, seed=args.seed, code=args.code, fit_steps=args.fit_steps,
                             fit_lr=args.fit_lr, resample=args.resample, sampler=args.sampler, steps=args.steps,
                             cfg_scale=args.cfg_scale, wrap=args.wrap, bands=args.bands, seamless=args.seamless,
                             seamless_views=args.seamless_views, seamless_below=args.seamless_below)
    for path, img in zip(paths, results):
        make_parents(path)  # only once there is a result: a refused code or a failed sample leaves nothing
        save_png(img, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
