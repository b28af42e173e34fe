"""Train the latent DDPM over the learned semantic codes (official train_latent.py, fixed; spec §8).

    python train_latent.py --model_path runs/exp/checkpoints/last.pt --name exp_latent
    python train_latent.py -m official_last.ckpt -n exp_latent   # an official checkpoint
    python train_latent.py -m runs/ffhq/checkpoints/last.pt -n ffhq_latent -d data/ffhq256.lmdb   # image encoder

The codes are the rows of the Patch-DM code table (no inference over the images), or, for image-encoder models,
the encoder applied to every training image (--data_path; the official script crashes there). Writes
runs/NAME/checkpoints/last.pt, a "full" checkpoint holding the latent MLP and the Patch-DM weights, for test.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from configs import from_dict, override, to_dict, validate
from dataset import build_dataset
from diffusion import latent_loss, latent_schedule
from model import build_latent, count_params
from runtime.cli import ArgumentParser, positive_int
from runtime.device import autocast, check_precision, pick_device
from runtime.ema import EMA
from runtime.errors import CLIError, GracefulStop, run_cli
from runtime.files import JsonlLog, atomic_save, atomic_write_text
from runtime.runs import (FULL_FORMAT, TRAIN_FORMAT, _patch_weights, bundle_of, compatible_or_raise,
                          read_project_checkpoint, restore_training)
from train import seeded

# Settings a resumed latent run may change without --allow_change (how long it runs; the Patch-DM run's own
# training and sampling settings are not the latent run's).
FREE_ON_RESUME = ("latent.total_samples", "latent.save_every_samples", "training", "sampling", "data.num_workers")


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
    ap.add_argument("--max_steps", type=positive_int, default=None,
                    help="optimizer steps (default: 60M samples / batch)")
    ap.add_argument("--batch_size", type=positive_int, default=None,
                    help="code batch (official 512; capped at the table size)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="autocast precision (default fp16 on GPU as official, fp32 on CPU)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default CUDA when present)")
    ap.add_argument("--log_every", type=positive_int, default=100, help="steps between stats.jsonl rows")
    ap.add_argument("--runs_dir", default="runs", help="parent folder of run folders")
    ap.add_argument("--set", nargs="*", default=[], metavar="latent.FIELD=VALUE", help="config overrides")
    ap.add_argument("--allow_change", default="", metavar="FIELD[,FIELD]",
                    help="when resuming: accept new values for these fields (e.g. latent.batch_size)")
    return ap


@torch.no_grad()
def encoder_codes(net, data, num_workers: int, device, batch=64) -> torch.Tensor:
    """Codes of every training image from the image encoder (the official fallback never ran, spec §12.1-2)."""
    enc = net.encoder.to(device)
    out = []
    for x, _ in tqdm(DataLoader(data, batch_size=batch, num_workers=num_workers), desc="encode", unit="batch"):
        out.append(enc(x.to(device)).float().cpu())
    return torch.cat(out)


def train_latent(codes: torch.Tensor, cfg, args, device, run: Path, full: dict, old: dict | None) -> int:
    lc = cfg.latent
    n, dim = codes.shape
    batch, max_steps = lc.batch_size, args.max_steps or lc.total_samples // lc.batch_size
    ckpt_path = run / "checkpoints" / "last.pt"
    torch.manual_seed(cfg.training.seed)
    net = build_latent(lc, dim).to(device)
    ema = EMA(net, lc.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    step, samples = 0, 0
    if old is not None:
        step = restore_training(old, net, ema, opt, scaler, "latent_raw", "latent")
        samples = old.get("samples", step * batch)
    mean, std = codes.mean(0), codes.std(0)
    z = ((codes - mean) / std if args.znormalize else codes).to(device)
    sched = latent_schedule(lc.num_timesteps, lc.beta)
    log = JsonlLog(run / "stats.jsonl")
    print(f"latent run {run}: {n} codes of width {dim}, {count_params(net):,} parameters, batch {batch}, "
          f"{args.precision}, from step {step} to {max_steps}")

    def save():
        atomic_save({**full, "step": step, "samples": samples, "latent": ema.state_dict(),
                     "latent_raw": net.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
                     "z_mean": mean if args.znormalize else None,
                     "z_std": std if args.znormalize else None}, ckpt_path)

    acc, t0 = [], time.time()
    bar = tqdm(total=max_steps, initial=step, desc="latent", unit="step", dynamic_ncols=True)
    with GracefulStop() as stop:
        while step < max_steps:
            if stop.requested:
                bar.close()
                save()
                raise KeyboardInterrupt(f"stopped at step {step}; saved {ckpt_path}: re-run the same command to "
                                        "resume")
            g = torch.Generator().manual_seed(seeded(cfg.training.seed, 0, step, 11))
            idx = torch.randperm(n, generator=g)[:batch]
            t = torch.randint(0, lc.num_timesteps, (batch,), generator=g).to(device)
            noise = torch.randn(batch, dim, generator=g).to(device)
            net.train()
            with autocast(device, args.precision):
                loss = latent_loss(net, z[idx.to(device)], t, noise, sched)
            if not torch.isfinite(loss):
                raise CLIError(f"non-finite latent loss at step {step}; stopping without saving "
                               f"(last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none yet'})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), lc.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(net)
            step += 1
            samples += batch
            acc.append(loss.item())
            bar.update(1)
            last = step == max_steps
            if step % args.log_every == 0 or last:
                dt = time.time() - t0
                log.write(step=step, samples=samples, loss=sum(acc) / len(acc), sec_per_step=dt / len(acc),
                          codes_per_s=len(acc) * batch / dt)
                bar.set_postfix(loss=f"{sum(acc) / len(acc):.4f}")
                acc, t0 = [], time.time()
            save_steps = max(1, lc.save_every_samples // batch)
            if step % save_steps == 0 or last:
                save()
    bar.close()
    return step


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    ck = read_project_checkpoint(args.model_path)
    if ck["format"] != TRAIN_FORMAT:
        raise CLIError(f"{args.model_path} is a latent (full) checkpoint; pass the Patch-DM checkpoint from train.py")
    bundle = bundle_of(ck, args.model_path, raw=args.weights == "raw")
    net, cfg = bundle.net, bundle.cfg
    try:
        cfg = validate(override(cfg, args.set))
    except ValueError as e:
        raise CLIError(str(e)) from None
    if cfg.model.code_source == "none":
        raise CLIError(f"{args.model_path} was trained without semantic codes (--no_code): there is no code "
                       "distribution to learn; sample it directly with test.py -f " + str(args.model_path))
    args.precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    check_precision(args.precision, device)
    run = Path(args.runs_dir) / args.name
    ckpt_path = run / "checkpoints" / "last.pt"
    old = read_project_checkpoint(ckpt_path) if ckpt_path.exists() else None
    data = None
    if not net.uses_table:
        if not args.data_path:
            raise CLIError("this is an image-encoder model: pass --data_path with its training images")
        data = build_dataset(args.data_path, cfg.data)
    n_codes = net.encoder.weight.shape[0] if net.uses_table else len(data)
    wanted = args.batch_size or (from_dict(old["config"]).latent.batch_size if old is not None
                                 else cfg.latent.batch_size)
    cfg.latent.batch_size = min(wanted, n_codes)
    cfg.latent.znormalize = args.znormalize
    if old is not None:
        compatible_or_raise(old, cfg, FULL_FORMAT, ckpt_path, FREE_ON_RESUME,
                            [f.strip() for f in args.allow_change.split(",") if f.strip()])
    codes = net.encoder.weight.detach().float().cpu() if data is None else \
        encoder_codes(net, data, cfg.data.num_workers, device)
    if cfg.latent.batch_size < wanted:
        print(f"note: the table has {len(codes)} codes, so the batch is {cfg.latent.batch_size} instead of {wanted}")
    full = {"format": FULL_FORMAT, "config": to_dict(cfg), "patch_model": net.state_dict(),
            "patch_source": str(args.model_path), "patch_weights": args.weights, "patch_step": bundle.step}
    if args.weights == "ema" and (not ck.get("official") or ck.get("has_raw")):
        full["patch_model_raw"] = _patch_weights(ck, True, args.model_path)[0]  # for test.py --raw
    del ck
    new_run = not run.exists()
    try:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(to_dict(cfg), indent=2), run / "config.json")
        step = train_latent(codes, cfg, args, device, run, full, old)
    except BaseException:
        if new_run and run.exists() and not ckpt_path.exists():
            shutil.rmtree(run)  # written by this call alone, and nothing to resume from
        raise
    print(f"done: step {step}, full checkpoint {ckpt_path} (use it with test.py --full_path)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
