"""Train a model of the preset's family: the Patch-DM denoiser (official train.py) or the pyramid autoencoder, on one
CPU/GPU or many under torchrun.

    python train.py --config nature --data_path data/nature.lmdb --semantic_path data/nature_semantic.pt --name exp
    torchrun --nproc_per_node 8 train.py --config nature -d data/nature.lmdb --semantic_path sem.pt -n exp
    python train.py --config ffhq256 -d data/ffhq256.lmdb --semantic_enc --cfg -n ffhq    # 256 data: image encoder
    python train.py --config pyramid_small -d data/photos.lmdb -n ae       # the Pyramid Diffusion Model's autoencoder

Run folder runs/NAME/: config.json, stats.jsonl, samples/*.png (EMA model, DDIM), checkpoints/last.pt (written
atomically). Re-running the same command resumes exactly where last.pt left off, with the run's own settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from configs import COLLAGES, OBJECTIVES
from configs import assign, from_dict, get_preset, override, preset_help, to_dict, validate, value
from model import FAMILIES, read_resume
from runtime import dist as D
from runtime.cli import ArgumentParser, add_snapshot_args, nonnegative_int, positive_int
from runtime.device import check_precision, device_type, pick_device
from runtime.errors import CLIError, run_cli
from training.loop import Trainer, cli_settings
from training.resume import compatible_or_raise

# Flags every family takes; the others belong to a family (its TRAIN.flags) and are refused for the rest.
GENERIC = ("config", "name", "device", "log_every", "runs_dir", "set", "allow_change", "allow_upscale", "dry_run",
           "snapshot_every", "snapshot_raw", "tensorboard")


def build_parser():
    ap = ArgumentParser(__doc__)
    switch = dict(action="store_const", const=True, default=None)
    ap.add_argument("--config", default=None, help=preset_help("nature") + "; a resumed run keeps its own")
    ap.add_argument("--batch_size", "-b", type=positive_int, default=None, help="global batch (official default 96)")
    ap.add_argument("--patch_size", "-ps", type=int, default=None, help="64, 128 or 256 (switches the architecture)")
    ap.add_argument("--data_path", "-d", default=None,
                    help="LMDB from img2lmdb.py, or an image folder (default ./dataset; a resumed run keeps its own)")
    ap.add_argument("--name", "-n", default="train", help="run name: runs/NAME/ (an existing run is resumed)")
    ap.add_argument("--semantic_path", default=None, help="code table from initialize.py (code-table presets)")
    ap.add_argument("--semantic_enc", **switch, help="train the image encoder instead of a code table")
    ap.add_argument("--cfg", **switch, help="classifier-free-guidance dropout (code 0.1, position 0.5)")
    ap.add_argument("--collage", choices=list(COLLAGES), default=None,
                    help="ablations (paper Fig. 2, Table 4): feature collage (default), pixel-space collage with a "
                         "fixed or random shift, or none (independent patches)")
    ap.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                    help="what the network learns: eps (default, the paper's), v (v-prediction) or flow (rectified "
                         "flow); v and flow are beyond the paper and give images at CPU budgets (docs/EVALUATION.md)")
    ap.add_argument("--no_position", **switch, help="ablation: no position embedding")
    ap.add_argument("--no_code", **switch, help="ablation: no semantic code (no table, no encoder, no latent model "
                                                "needed to sample)")
    ap.add_argument("--max_steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="autocast precision (default: the preset's fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--checkpointing", **switch,
                    help="activation checkpointing: recompute each block in backward (less memory, same gradients)")
    ap.add_argument("--checkpoint_levels", type=nonnegative_int, default=None,
                    help="with --checkpointing: only the N highest-resolution U-Net levels (0 = all; 2 is ~half the "
                         "recomputation for most of the memory saving, docs/BENCHMARKS.md)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default CUDA when present)")
    ap.add_argument("--workers", type=nonnegative_int, default=None, help="DataLoader workers per process")
    ap.add_argument("--log_every", type=positive_int, default=50, help="steps between stats.jsonl rows")
    ap.add_argument("--save_every", type=positive_int, default=None,
                    help="samples between checkpoints (official 100000)")
    ap.add_argument("--sample_every", type=positive_int, default=None,
                    help="samples between PNG grids (official 500000)")
    ap.add_argument("--runs_dir", default="runs", help="parent folder of run folders")
    add_snapshot_args(ap)
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="extra config overrides")
    ap.add_argument("--allow_change", default="", metavar="FIELD[,FIELD]",
                    help="when resuming: accept new values for these fields (e.g. training.batch_size), which a "
                         "resumed run otherwise refuses because they change what it means")
    ap.add_argument("--lpips", default=None, metavar="VGG16_WEIGHTS",
                    help="pyramid autoencoder: add LPIPS to the loss, with torchvision's VGG16 weights from this file "
                         "(vgg16-397923af.pth; nothing is downloaded)")
    ap.add_argument("--gan_from", type=int, default=None, metavar="STEP",
                    help="pyramid autoencoder: a hinge patch-GAN from this step on (-1: none, the preset's default)")
    ap.add_argument("--allow_upscale", action="store_true",
                    help="train even when the stored images are smaller than the preset's training size")
    ap.add_argument("--dry_run", action="store_true", help="print the resolved config and exit")
    return ap


def resolve_config(args, device_type: str, saved=None):
    """The run's config: the preset (or, when resuming, the run's saved config), then the flags given (each family
    takes its own), then --set; every value checked before any work starts. Returns (config, its family)."""
    try:
        if saved is not None:
            if args.config and args.config != saved.name:
                raise CLIError(f"this run was trained with the {saved.name} preset; --config {args.config} cannot "
                               "change it (use another --name)")
            cfg = saved
        else:
            cfg = get_preset(args.config or "nature")
        family = FAMILIES[cfg.family]
        spec = family.TRAIN
        foreign = [f for f, v in vars(args).items() if v is not None and f not in GENERIC and f not in spec.flags]
        if foreign:
            raise CLIError(f"--{foreign[0]} does not apply to the {cfg.name} preset ({cfg.family} family)")
        spec.prepare(cfg, args)
        for flag, fields in spec.flags.items():
            given = getattr(args, flag)
            if given is not None:
                for field, fixed in fields:
                    assign(cfg, field, given if fixed is None else fixed)
        if saved is None:
            spec.defaults(cfg)
        if args.precision is None and device_type == "cpu" and value(cfg, spec.precision) == "fp16":
            assign(cfg, spec.precision, "fp32")  # fp16 autocast is GPU-only
        cfg = validate(override(cfg, args.set))
    except ValueError as e:
        raise CLIError(str(e)) from None
    spec.check(cfg, args)
    return cfg, family


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    d = D.init_dist(device_type(args.device))
    try:
        device = pick_device(args.device, d.local_rank)
        run = Path(args.runs_dir) / args.name
        ckpt_path = run / "checkpoints" / "last.pt"
        resume = read_resume(ckpt_path, None, "train.py")
        cfg, family = resolve_config(args, device.type, from_dict(resume["config"]) if resume is not None else None)
        if resume is not None:
            if (resume["training"] or {}).get("network") != family.TRAIN.network:
                raise CLIError(f"{ckpt_path} is not a train.py checkpoint that can be resumed; use another --name")
            allowed = [f.strip() for f in args.allow_change.split(",") if f.strip()]
            compatible_or_raise(resume, cfg, ckpt_path, family.TRAIN.free, allowed)
        if args.dry_run:
            print(json.dumps(to_dict(cfg), indent=2))
            return 0
        check_precision(value(cfg, family.TRAIN.precision), device)
        task = family.TRAIN.task(cfg, run, d, device, resume, args)
        step = Trainer(task, cli_settings(task, args), run, device, d, resume).run_loop()
        if d.main:
            print(f"done: step {step}, checkpoint {ckpt_path}")
    finally:
        D.cleanup(d)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
