"""Train the latent model of a trained model: Patch-DM's latent DDPM over its semantic codes (official
train_latent.py, fixed), or the Pyramid Diffusion Model's flow network over its autoencoder's pyramid latents.

    python train_latent.py --model_path runs/exp/checkpoints/last.pt --name exp_latent
    python train_latent.py -m official_last.ckpt -n exp_latent   # an official checkpoint
    python train_latent.py -m runs/ffhq/checkpoints/last.pt -n ffhq_latent -d data/ffhq256.lmdb   # image encoder
    python train_latent.py -m runs/ae/checkpoints/last.pt -n pdm_flow   # a pyramid autoencoder (train.py --config
                                                                        # pyramid_small): its training images

Patch-DM: the codes are the rows of the code table (no inference over the images), or, for image-encoder models,
the encoder applied to every training image (--data_path; the official script crashes there). Pyramid: the
autoencoder's training images (or --data_path), encoded once at its sampling size. Writes
runs/NAME/checkpoints/last.pt, a "full" checkpoint holding the latent model and the model it was trained on, for
test.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from configs import assign, from_dict, get_preset, override, preset_names, validate
from dataset import build_dataset
from model import bundle_of, read, read_resume
from model.patchdm.checkpoint import CODE_DDPM, DENOISER
from model.patchdm.training import CodeTask, encoder_codes
from model.pyramid.checkpoint import AUTOENCODER, FLOW
from model.pyramid.flow_training import FlowTask
from runtime import dist as D
from runtime.cli import ArgumentParser, add_snapshot_args, positive_int
from runtime.device import check_precision, pick_device
from runtime.errors import CLIError, run_cli
from training.loop import Trainer, cli_settings
from training.resume import compatible_or_raise

# Settings a resumed latent run may change without --allow_change (how long it runs; the Patch-DM run's own
# training and sampling settings are not the latent run's).
FREE_ON_RESUME = ("latent.total_samples", "latent.save_every_samples", "latent.max_steps", "training", "sampling",
                  "data")
# The same for a pyramid flow run (the autoencoder's own training settings are not the flow run's).
PYRAMID_FREE_ON_RESUME = ("flow_training.max_steps", "flow_training.save_every_samples",
                          "flow_training.sample_every_samples", "ae_training", "sampling", "data")


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--model_path", "-m", default="./checkpoints/nature1024/last.ckpt",
                    help="Patch-DM checkpoint: this project's train.py last.pt or an official Lightning file")
    ap.add_argument("--name", "-n", default="train", help="run name: runs/NAME/ (an existing run is resumed)")
    ap.add_argument("--semantic_enc", action="store_true",
                    help="accepted for compatibility: the code source is read from the checkpoint")
    ap.add_argument("--data_path", "-d", default=None, help="training images, needed for image-encoder models")
    # Deviation: EMA by default (the weights test.py samples with); the official script read the raw table.
    ap.add_argument("--weights", choices=["ema", "raw"], default="ema",
                    help="Patch-DM weights (and code table) to use; official: raw. Default ema, the weights "
                         "test.py samples with")
    ap.add_argument("--znormalize", action="store_true", help="train on z-normalised codes (test.py undoes it)")
    ap.add_argument("--allow_upscale", action="store_true",
                    help="pyramid: accept training images stored below the preset's size")
    ap.add_argument("--objective", choices=["eps", "v"], default=None,
                    help="what the MLP predicts: eps (the paper's, default) or v (beyond the paper: "
                         "docs/EVALUATION.md, unconditional samples)")
    ap.add_argument("--max_steps", type=positive_int, default=None,
                    help="optimizer steps (default: 60M samples / batch)")
    ap.add_argument("--batch_size", type=positive_int, default=None,
                    help="code batch (official 512; capped at the table size)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="autocast precision (default fp16 on GPU as official, fp32 on CPU)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default CUDA when present)")
    ap.add_argument("--log_every", type=positive_int, default=100, help="steps between stats.jsonl rows")
    ap.add_argument("--runs_dir", default="runs", help="parent folder of run folders")
    add_snapshot_args(ap)
    ap.add_argument("--set", nargs="*", default=[], metavar="latent.FIELD=VALUE", help="config overrides")
    ap.add_argument("--allow_change", default="", metavar="FIELD[,FIELD]",
                    help="when resuming: accept new values for these fields (e.g. latent.batch_size)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    ck = read(args.model_path)
    if ck.get("family") == "pyramid":
        return train_flow(args, ck, device)
    if CODE_DDPM in ck["networks"]:
        raise CLIError(f"{args.model_path} is a latent (full) checkpoint; pass the Patch-DM checkpoint from train.py")
    bundle = bundle_of(ck, args.model_path, raw=args.weights == "raw")
    net, cfg = bundle.net, bundle.cfg
    run = Path(args.runs_dir) / args.name
    ckpt_path = run / "checkpoints" / "last.pt"
    old = read_resume(ckpt_path, CODE_DDPM, "train_latent.py")
    saved = from_dict(old["config"]) if old is not None else None
    if saved is not None:
        cfg.latent = saved.latent  # a resumed run keeps its own latent settings; flags and --set below change them
    try:
        for flag, field in (("max_steps", "latent.max_steps"), ("precision", "latent.precision"),
                            ("data_path", "data.path"), ("batch_size", "latent.batch_size"),
                            ("objective", "latent.objective")):
            if getattr(args, flag) is not None:
                assign(cfg, field, getattr(args, flag))
        cfg.latent.znormalize = args.znormalize
        if args.precision is None and device.type == "cpu" and cfg.latent.precision == "fp16":
            cfg.latent.precision = "fp32"  # fp16 autocast is GPU-only
        cfg = validate(override(cfg, args.set))
    except ValueError as e:
        raise CLIError(str(e)) from None
    if cfg.model.code_source == "none":
        raise CLIError(f"{args.model_path} was trained without semantic codes (--no_code): there is no code "
                       "distribution to learn; sample it directly with test.py -f " + str(args.model_path))
    check_precision(cfg.latent.precision, device)
    data = None
    if not net.uses_table:
        if args.data_path is None:
            raise CLIError("this is an image-encoder model: pass --data_path with its training images")
        data = build_dataset(cfg.data.path, cfg.data)
    n_codes = net.code_source.weight.shape[0] if net.uses_table else len(data)
    wanted = cfg.latent.batch_size
    cfg.latent.batch_size = min(wanted, n_codes)
    if old is not None:
        compatible_or_raise(old, cfg, ckpt_path, FREE_ON_RESUME,
                            [f.strip() for f in args.allow_change.split(",") if f.strip()])
    codes = net.code_source.weight.detach().float().cpu() if data is None else \
        encoder_codes(net, data, cfg.data.num_workers, device)
    if cfg.latent.batch_size < wanted:
        print(f"note: the table has {len(codes)} codes, so the batch is {cfg.latent.batch_size} instead of {wanted}")
    task = CodeTask(codes, cfg, run, device, ck["networks"][DENOISER], args.weights, str(args.model_path))
    del ck
    step = Trainer(task, cli_settings(task, args), run, device, resume=old).run_loop()
    print(f"done: step {step}, full checkpoint {ckpt_path} (use it with test.py --full_path)")
    return 0


def train_flow(args, ck: dict, device) -> int:
    """The pyramid family: the Pyramid NCSN++ by latent rectified flow on the autoencoder of ``ck``."""
    if FLOW in ck["networks"]:
        raise CLIError(f"{args.model_path} is a full checkpoint (it holds a flow model); pass the autoencoder "
                       "checkpoint from train.py --config pyramid_*")
    foreign = [f"--{f}" for f in ("semantic_enc", "znormalize") if getattr(args, f)]
    foreign += ["--objective"] if args.objective is not None else []
    if foreign:
        raise CLIError(f"{foreign[0]} is a Patch-DM setting; the pyramid flow model is trained by rectified flow on "
                       "the autoencoder's latents")
    cfg = from_dict(ck["config"])
    run = Path(args.runs_dir) / args.name
    ckpt_path = run / "checkpoints" / "last.pt"
    old = read_resume(ckpt_path, FLOW, "train_latent.py")
    if "flow_training" not in ck["config"] and cfg.name in preset_names():
        preset = get_preset(cfg.name)  # an autoencoder trained before the flow settings existed: its preset's
        cfg.flow, cfg.flow_training = preset.flow, preset.flow_training
    if old is not None:
        saved = from_dict(old["config"])
        cfg.flow, cfg.flow_training, cfg.sampling = saved.flow, saved.flow_training, saved.sampling
    bad = [a for a in args.set if not a.strip().startswith(("flow.", "flow_training.", "sampling.", "data."))]
    if bad:
        raise CLIError(f"--set {bad[0]}: a flow run may set flow.*, flow_training.*, sampling.* and data.*; the "
                       "autoencoder's settings are its checkpoint's")
    try:
        for flag, field in (("max_steps", "flow_training.max_steps"), ("precision", "flow_training.precision"),
                            ("data_path", "data.path"), ("batch_size", "flow_training.batch_size")):
            if getattr(args, flag) is not None:
                assign(cfg, field, getattr(args, flag))
        if args.precision is None and device.type == "cpu" and cfg.flow_training.precision == "fp16":
            cfg.flow_training.precision = "fp32"
        cfg = validate(override(cfg, args.set))
    except ValueError as e:
        raise CLIError(str(e)) from None
    check_precision(cfg.flow_training.precision, device)
    if old is not None:
        compatible_or_raise(old, cfg, ckpt_path, PYRAMID_FREE_ON_RESUME,
                            [f.strip() for f in args.allow_change.split(",") if f.strip()])
    bundle = bundle_of(ck, args.model_path, raw=args.weights == "raw")
    task = FlowTask(cfg, run, D.Dist(), device, bundle.autoencoder, ck["networks"][AUTOENCODER],
                    str(args.model_path), args.allow_upscale)
    del ck
    step = Trainer(task, cli_settings(task, args), run, device, resume=old).run_loop()
    print(f"done: step {step}, full checkpoint {ckpt_path} (use it with test.py --full_path)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
