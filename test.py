"""Generate images: latent DDIM -> semantic code -> patch DDIM over the canvas (official test.py, fixed).

    python test.py --full_path runs/exp_latent/checkpoints/last.pt --output_dir out --img_num 16
    python test.py -f runs/exp_latent/checkpoints/last.pt -g out_wide --image_size 1024x2048 --img_num 4
    python test.py -f official_latent.ckpt -g out --img_num 50000 --batch_size 8      # an official checkpoint
    python test.py -f runs/exp_latent/checkpoints/last.pt -g pano --image_size 512x4096 --wrap x   # 360 panorama
    torchrun --nproc_per_node 8 test.py -f runs/exp_latent/checkpoints/last.pt -g out --img_num 50000 -b 8

    python test.py -f runs/exp/checkpoints/last.pt -g out --codes 0,3,5 --raw     # codes of training images 0, 3, 5
    python test.py -f runs/enc/checkpoints/last.pt -g out --codes a.jpg,b.jpg     # image-encoder model: given images

With --codes the semantic code of image k is the k-th code given (cycling when --img_num is larger; --img_num
defaults to one image per code): rows of the code table (code-table models, also a train.py checkpoint, which has no
latent model) or the image encoder applied to the given images, brought to the training size with the preset's
transform. That is conditional generation, as DiffAE users know it; without --codes the code is sampled by the
latent DDPM of a full checkpoint.

Image k is drawn from its own seed (seed, k), so it is the same whatever --batch_size (up to float rounding: a
different batch size can change a pixel by one grey level) and whatever the number of torchrun processes (rank r
makes images r, r + world, ...); PNGs (k.png) are written as they are produced, and existing ones are never
replaced unless --overwrite is given. Size, steps and guidance default to the checkpoint's config. EMA weights are
used by default (the official script silently used the raw ones); --raw takes the raw weights of every network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from dataset import IMAGE_EXTS, geometric_transform
from diffusion import SAMPLERS
from model import load
from model.generator import STEP_BAR_AFTER, Generator
from model.patchdm.cli import add_seamless_args
from model.patchdm.fast import COMPILE_MODES, COMPILE_SCOPES
from model.patchdm.generate import OPTIONS as PATCHDM_OPTIONS, code_items
from model.patchdm.grid import WRAPS
from model.pyramid.sampling import parse_levels, reconstruct as reconstruct_images
from runtime import dist as D
from runtime.cli import ArgumentParser, check_divisible, parse_hw, positive_int
from runtime.device import device_type, pick_device
from runtime.errors import CLIError, run_cli
from runtime.files import atomic_write_text, make_parents, remove_empty, save_png
from runtime.images import read_rgb


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--batch_size", "-b", type=positive_int, default=1, help="images per forward (default 1)")
    ap.add_argument("--patch_size", "-ps", type=int, default=None, help="checked against the checkpoint if given")
    ap.add_argument("--output_dir", "-g", default="./output_images", help="folder for k.png")
    ap.add_argument("--image_size", "-img", default=None,
                    help="HxW, any multiple of the patch (default: the checkpoint's sampling.image_size, 512x1024 "
                         "for the paper's 1024-wide presets)")
    ap.add_argument("--img_num", type=positive_int, default=None,
                    help="number of images (official 50000; with --codes one per code)")
    ap.add_argument("--codes", default=None, metavar="I,J,... | A.png,B.png,...",
                    help="semantic codes instead of latent samples: training-image indices (code-table models) or "
                         "image files (image-encoder models)")
    ap.add_argument("--full_path", "-f", default="", help="full checkpoint from train_latent.py, or an official one")
    ap.add_argument("--semantic_enc", action="store_true", help="accepted for compatibility (read from checkpoint)")
    ap.add_argument("--seed", type=int, default=0, help="image k uses the seed (seed, k)")
    ap.add_argument("--cfg_scale", type=float, default=None,
                    help="guidance w: (1+w) eps_c - w eps_u, 0 = none (default: the checkpoint's sampling.cfg_scale)")
    ap.add_argument("--sampler", default=None, choices=[*SAMPLERS, "rk45"],
                    help="ddim (default for eps and v models, the paper's), euler (default for flow models; ddim is "
                         "accepted as its old name), dpmpp2m / dpmpp3m (DPM-Solver++ multistep: closer to the ODE in "
                         "15-20 steps than DDIM in 50, docs/BENCHMARKS.md), heun (flow models), rk45 (pyramid: "
                         "scipy's adaptive RK45, the PDM paper's black-box solver)")
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="patch sampler steps (default: the checkpoint's sampling.steps, 50 for the paper's presets)")
    ap.add_argument("--latent_sampler", default="ddim", choices=["ddim", "dpmpp2m", "dpmpp3m"],
                    help="sampler of the latent DDPM (default ddim, the paper's)")
    ap.add_argument("--latent_steps", type=positive_int, default=None,
                    help="latent DDIM steps (default: the checkpoint's sampling.latent_steps, 50 for the paper's)")
    ap.add_argument("--raw", action="store_true",
                    help="raw (non-EMA) weights for every network in the checkpoint (U-Net and latent MLP); "
                         "official: the official script always used them")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default CUDA when present)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="autocast for the patch network (default bf16 on GPU, fp16 where bf16 is missing, fp32 on "
                         "CPU; the official script used fp16)")
    ap.add_argument("--compile", default="none", choices=list(COMPILE_MODES),
                    help="torch.compile the U-Net (same images; pays on GPUs, see docs/BENCHMARKS.md)")
    ap.add_argument("--compile_scope", default="blocks", choices=list(COMPILE_SCOPES),
                    help="with --compile: every block on its own, or the encoder and decoder halves as whole graphs")
    ap.add_argument("--skip_existing", action="store_true", help="keep PNGs already in --output_dir, make the rest")
    ap.add_argument("--overwrite", action="store_true", help="replace PNGs already in --output_dir")
    ap.add_argument("--wrap", default="", choices=list(WRAPS),
                    help="pad circularly instead of with zeros: x for seamless 360-degree panoramas, xy for tiles")
    ap.add_argument("--reconstruct", default=None, metavar="DIR",
                    help="pyramid autoencoder checkpoints: reconstruct every image of DIR (at the preset's size or "
                         "--image_size) into --output_dir, named as the inputs")
    ap.add_argument("--levels", default=None, metavar="I,J",
                    help="with --reconstruct: decode from these latents only (0 = the finest; the paper's Fig. 7)")
    ap.add_argument("--bands", default="auto",
                    help="decode the canvas in bands of tiles, bounding memory at any size with the same images: "
                         "auto (default), off (all patches at once, the official way), R or RxC tiles per band")
    add_seamless_args(ap)
    return ap


def output_plan(out: Path, names: list, skip_existing: bool, overwrite: bool) -> list:
    """The indices of ``names`` (PNG file names in ``out``) to make; refuses to replace existing PNGs unless asked
    (--overwrite or --skip_existing)."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output_dir {out} is a file, not a folder")
    if skip_existing and overwrite:
        raise CLIError("--skip_existing keeps existing PNGs and --overwrite replaces them: pass one of them")
    there = [k for k, name in enumerate(names) if (out / name).exists()]
    if there and not (skip_existing or overwrite):
        shown = ", ".join(names[k] for k in there[:3]) + (", ..." if len(there) > 3 else "")
        raise CLIError(f"{out} already holds {len(there)} of the {len(names)} images ({shown}): pass --skip_existing "
                       "to keep them and make the rest, or --overwrite to replace them")
    return [k for k in range(len(names)) if not (skip_existing and k in set(there))]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    d = D.init_dist(device_type(args.device))
    try:
        (reconstruct if args.reconstruct is not None else generate)(args, d)
    finally:
        D.cleanup(d)
    return 0


def reconstruct(args, d: D.Dist) -> None:
    """--reconstruct DIR: every image of DIR through a pyramid autoencoder at the preset's size (or --image_size);
    OUT/<name>.png for DIR/<name>.<ext>; --levels keeps only the listed latents."""
    device = pick_device(args.device, d.local_rank)
    folder, out = Path(args.reconstruct), Path(args.output_dir)
    if not folder.is_dir():
        raise CLIError(f"--reconstruct {folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise CLIError(f"--reconstruct {folder}: holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    names = [p.stem + ".png" for p in files]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise CLIError(f"--reconstruct {folder}: several images would be written as {twins[0]}; rename one")
    todo = output_plan(out, names, args.skip_existing, args.overwrite)[d.rank::d.world]
    bundle = load(args.full_path, args.raw)
    if bundle.cfg.family != "pyramid":
        raise CLIError(f"--reconstruct needs a pyramid autoencoder checkpoint; {args.full_path} is {bundle.cfg.family}")
    cfg, ae = bundle.cfg, bundle.autoencoder.to(device)
    try:
        keep = parse_levels(args.levels, ae.num_latents)
    except ValueError as e:
        raise CLIError(str(e)) from None
    hw = parse_hw(args.image_size) if args.image_size else tuple(cfg.sampling.image_size)
    check_divisible(hw, 2 ** (len(cfg.autoencoder.channel_mult) - 1), "image size")
    geometry = geometric_transform(cfg.data.transform, hw, hw)
    created = make_parents(out / "x.png")
    done = 0
    try:
        for start in tqdm(range(0, len(todo), args.batch_size), desc="reconstruct", unit="batch",
                          disable=not d.main):
            ks = todo[start:start + args.batch_size]
            x = torch.stack([read_rgb(files[k], geometry) for k in ks]).to(device)
            for k, img in zip(ks, reconstruct_images(ae, x, keep)):
                save_png(img, out / names[k])
                done += 1
    finally:
        if not done:
            remove_empty(created)
    print(f"wrote {done} reconstruction(s) of {hw[0]}x{hw[1]} to {out}"
          + (f" from latents {sorted(keep)}" if keep is not None else ""))


def generate(args, d: D.Dist) -> None:
    """Images 0..img_num-1 of --seed through the Python API (model/generator.py), each written as it is made."""
    device = pick_device(args.device, d.local_rank)
    out = Path(args.output_dir)
    n_codes = len(code_items(args.codes)) if args.codes is not None else 0
    img_num = args.img_num or n_codes or 50000
    todo = output_plan(out, [f"{k}.png" for k in range(img_num)], args.skip_existing, args.overwrite)[d.rank::d.world]
    D.barrier(d)  # every rank has read the folder before any writes to it
    if not args.full_path:
        raise CLIError("--full_path is required: the checkpoint written by train_latent.py (or an official one)")
    gen = Generator(args.full_path, raw=args.raw, device=device, precision=args.precision, compile=args.compile,
                    compile_scope=args.compile_scope)
    if gen.family == "patchdm" and args.patch_size and args.patch_size != gen.cfg.model.patch_size:
        raise CLIError(f"--patch_size {args.patch_size} does not match the checkpoint's patch size "
                       f"{gen.cfg.model.patch_size}")
    # the flags only Patch-DM takes: every family but Patch-DM is given those set away from their defaults (refused)
    options = {k: getattr(args, k) for k, default in PATCHDM_OPTIONS.items()
               if gen.family == "patchdm" or getattr(args, k) != default}
    plan = gen.plan(seed=args.seed, image_size=args.image_size, sampler=args.sampler, steps=args.steps,
                    batch_size=args.batch_size, **options)
    plan.step_bar = STEP_BAR_AFTER if d.main else False  # a large canvas shows its steps
    if d.main:
        print(f"{plan.describe()}, {'raw' if args.raw else 'EMA'} weights")
    done = write_images(todo, args.batch_size, out, d, plan.make)
    if done and d.main:
        atomic_write_text(json.dumps({**gen.record(plan), "images": img_num, "processes": d.world}, indent=2) + "\n",
                          out / "generation.json")
    print(f"{'' if d.world == 1 else f'rank {d.rank}: '}wrote {done} image(s) of {plan.hw[0]}x{plan.hw[1]} to {out}"
          + plan.summary())


def write_images(todo: list, batch_size: int, out: Path, d: D.Dist, make) -> int:
    """OUT/k.png for the image numbers in ``todo``, ``make(ks)`` giving the images of a batch, each written as it
    comes; a folder this call created is removed again if nothing was written. Returns the number written."""
    created = make_parents(out / "0.png")
    done = 0
    bar = tqdm(total=len(todo), desc="generate", unit="img", dynamic_ncols=True, disable=not d.main)
    try:
        for start in range(0, len(todo), batch_size):
            ks = todo[start:start + batch_size]
            for k, x in zip(ks, make(ks)):
                save_png(x, out / f"{k}.png")
            done += len(ks)
            bar.update(len(ks))
    finally:
        bar.close()
        if not done:
            remove_empty(created)
    return done


if __name__ == "__main__":
    sys.exit(run_cli(main))
