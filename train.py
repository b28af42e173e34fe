"""Train the Patch-DM denoiser (official train.py, spec §5, §11), on one CPU/GPU or many under torchrun.

    python train.py --config nature --data_path data/nature.lmdb --semantic_path data/nature_semantic.pt --name exp
    torchrun --nproc_per_node 8 train.py --config nature -d data/nature.lmdb --semantic_path sem.pt -n exp
    python train.py --config ffhq256 -d data/ffhq256.lmdb --semantic_enc --cfg -n ffhq    # 256 data: image encoder

Run folder runs/NAME/: config.json, stats.jsonl, samples/*.png (EMA model, DDIM), checkpoints/last.pt (written
atomically). Re-running the same command resumes exactly where last.pt left off.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from configs import from_dict, get_preset, override, set_patch_size, to_dict, validate
from dataset import build_dataset
from diffusion import cfg_keep_masks, ddim_sample_canvas, default_schedule, sample_window
from diffusion.patch import check_collage, window_crop, window_loss_terms
from model import build_patchdm, count_params, read_checkpoint
from runtime import dist as D
from runtime.cli import ArgumentParser, check_divisible, nonnegative_int, positive_int, preset_help
from runtime.data import SkipUnreadable, StepBatchSampler, check_stored_size, make_loader
from runtime.device import autocast, check_precision, device_type, pick_device
from runtime.ema import EMA
from runtime.errors import CLIError, GracefulStop, children_ignore_sigint, run_cli
from runtime.fast import set_checkpointing
from runtime.files import JsonlLog, atomic_save, atomic_write_text, save_grid
from runtime.runs import TRAIN_FORMAT as FORMAT
from runtime.runs import compatible_or_raise, load_code_table, restore_training

# Settings a resumed run may change without --allow_change: how long and how it runs, not what it computes.
FREE_ON_RESUME = ("training.max_steps", "training.save_every_samples", "training.sample_every_samples",
                  "training.checkpointing", "training.checkpoint_levels", "data.num_workers", "sampling", "latent")


class LossStep(nn.Module):
    """The network plus the official loss, as one forward so DDP sees every parameter use."""

    def __init__(self, net, patch_size: int, image_size: tuple, windowed: bool = False, collage: str = "feature"):
        super().__init__()
        self.net, self.p, self.image_size, self.windowed = net, patch_size, tuple(image_size), windowed
        self.collage = collage

    def forward(self, x0, index, t, noise, window, code_keep=None, pos_keep=None, offset=None):
        """x0: images (B, 3, H, W), or with ``windowed`` already the 2p x 2p window of the padded images (as the
        dataset loads them for code-table models); noise (B, 3, 2p, 2p) for the window only.
        Returns per-image (shift, noshift)."""
        windowed = self.windowed
        code = self.net.codes(None if windowed else x0, index)
        if code_keep is not None:  # Faithful: CFG drops the code by multiplying it by 0 (spec §6)
            code = code * code_keep[:, None].to(code.dtype)
        if windowed:
            x0_win, mask_win = x0, window_crop(torch.ones(1, 1, *self.image_size, device=x0.device), window,
                                               self.p)[0]
        else:
            x0_win, mask_win = window_crop(x0, window, self.p)
        return window_loss_terms(self.net, x0_win, mask_win, t, noise, window, code, self.p, pos_keep,
                                 per_image=True, collage=self.collage, offset=offset)


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--config", default=None, help=preset_help("nature") + "; a resumed run keeps its own")
    ap.add_argument("--batch_size", "-b", type=positive_int, default=None, help="global batch (official default 96)")
    ap.add_argument("--patch_size", "-ps", type=int, default=None, help="64, 128 or 256 (switches the architecture)")
    ap.add_argument("--data_path", "-d", default="./dataset", help="LMDB from img2lmdb.py, or an image folder")
    ap.add_argument("--name", "-n", default="train", help="run name: runs/NAME/ (an existing run is resumed)")
    ap.add_argument("--semantic_path", default="", help="code table from initialize.py (code-table presets)")
    ap.add_argument("--semantic_enc", action="store_true", help="train the image encoder instead of a code table")
    ap.add_argument("--cfg", action="store_true", help="classifier-free-guidance dropout (code 0.1, position 0.5)")
    ap.add_argument("--collage", choices=["feature", "pixel_fixed", "pixel_random", "none"], default=None,
                    help="ablations (paper Fig. 2, Table 4): feature collage (default), pixel-space collage with a "
                         "fixed or random shift, or none (independent patches)")
    ap.add_argument("--no_position", action="store_true", help="ablation: no position embedding")
    ap.add_argument("--no_code", action="store_true", help="ablation: no semantic code (no table, no encoder, no "
                                                           "latent model needed to sample)")
    ap.add_argument("--max_steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="autocast precision (default: the preset's fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--checkpointing", action="store_true",
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
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="extra config overrides")
    ap.add_argument("--allow_change", default="", metavar="FIELD[,FIELD]",
                    help="when resuming: accept new values for these fields (e.g. training.batch_size), which a "
                         "resumed run otherwise refuses because they change what it means")
    ap.add_argument("--allow_upscale", action="store_true",
                    help="train even when the stored images are smaller than the preset's training size")
    ap.add_argument("--dry_run", action="store_true", help="print the resolved config and exit")
    return ap


def resolve_config(args, device_type: str, saved=None):
    """The run's config: the preset (or, when resuming, the run's saved config), then the flags given and --set;
    every value checked before any work starts."""
    try:
        if saved is not None:
            if args.config and args.config != saved.name:
                raise CLIError(f"this run was trained with the {saved.name} preset; --config {args.config} cannot "
                               "change it (use another --name)")
            cfg = saved
        else:
            cfg = get_preset(args.config or "nature")
        if args.patch_size and args.patch_size != cfg.model.patch_size:
            set_patch_size(cfg, args.patch_size)
        cfg = override(cfg, args.set)
    except ValueError as e:
        raise CLIError(str(e)) from None
    t = cfg.training
    if sum(map(bool, (args.semantic_enc, args.semantic_path, args.no_code))) > 1:
        raise CLIError("--semantic_enc, --semantic_path and --no_code are mutually exclusive (encoder, code table "
                       "or no code)")
    if args.no_code:
        cfg.model.code_source = "none"
    elif args.semantic_enc:
        cfg.model.code_source = "encoder"
    elif args.semantic_path:
        cfg.model.code_source = "table"
    t.cfg = t.cfg or args.cfg
    if args.collage:
        cfg.model.collage = args.collage
    if args.no_position:
        cfg.model.use_position = False
    for flag, field in [("batch_size", "batch_size"), ("max_steps", "max_steps"), ("save_every", "save_every_samples"),
                        ("sample_every", "sample_every_samples")]:
        if getattr(args, flag) is not None:
            setattr(t, field, getattr(args, flag))
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    t.checkpointing = t.checkpointing or args.checkpointing
    if args.checkpoint_levels is not None:
        t.checkpoint_levels = args.checkpoint_levels
    if args.precision:
        t.precision = args.precision
    elif device_type == "cpu" and t.precision == "fp16":
        t.precision = "fp32"
    try:
        validate(cfg)
    except ValueError as e:
        raise CLIError(str(e)) from None
    check_divisible(cfg.data.image_size, cfg.model.patch_size, "training image size")
    return cfg


def seeded(seed: int, index: int, step: int, stream: int) -> int:
    """Independent seed per (run seed, rank or sample index, step, stream): randomness is a function of the step."""
    return (((seed * 1_000_003 + index) * 1_000_003 + step) * 7 + stream) % (2 ** 63)


def window_at(cfg, step: int) -> tuple:
    """The training window of a step (shared by every rank and sample; the data loader asks for it too)."""
    h, w = cfg.data.image_size
    g = torch.Generator().manual_seed(seeded(cfg.training.seed, 0, step, 0))
    return sample_window(h, w, cfg.model.patch_size, g)


def draw(cfg, step: int, rank: int, b: int, world: int, device):
    """Window, timesteps, noise, CFG masks and pixel offset (the pixel_random ablation; else None) of this rank's
    slice of the global batch at ``step``.

    Everything is drawn per global sample index, so the global batch gets the same draws whatever the number of
    processes (only dropout, seeded per rank, differs).
    """
    seed, p = cfg.training.seed, cfg.model.patch_size
    window = window_at(cfg, step)
    g = torch.Generator().manual_seed(seeded(seed, 0, step, 4))
    mine = slice(rank * b, (rank + 1) * b)
    t = torch.randint(0, cfg.diffusion.num_timesteps, (b * world,), generator=g)[mine]
    masks = (None, None)
    if cfg.training.cfg:
        code_keep, pos_keep = cfg_keep_masks(b * world, cfg.training.cfg_code_drop, cfg.training.cfg_pos_drop, g)
        masks = (code_keep[mine].to(device), pos_keep[mine].to(device))
    # Deviation: only the window's noise is drawn (the official code draws the whole padded canvas); the loss never
    # sees the rest, so it is the same function (spec §5.1).
    noise = torch.empty(b, 3, 2 * p, 2 * p, device=device)
    for i, j in enumerate(range(rank * b, (rank + 1) * b)):
        gj = torch.Generator(device).manual_seed(seeded(seed, j, step, 2))
        noise[i] = torch.randn(3, 2 * p, 2 * p, generator=gj, device=device)
    offset = None
    if cfg.model.collage == "pixel_random":  # the shifted crop's offset inside the window, shared by the batch
        g5 = torch.Generator().manual_seed(seeded(seed, 0, step, 5))
        offset = tuple(torch.randint(p, (2,), generator=g5).tolist())
    torch.manual_seed(seeded(seed, rank, step, 3))  # dropout
    return window, t.to(device), noise, masks, offset


@torch.no_grad()
def preview(net, cfg, x0, index, device, path):
    """DDIM samples of the EMA model with the codes of a fixed batch.

    Deviation: the official previews are 1000-step DDPM samples of the raw weights (spec §5.2)."""
    code = net.codes(x0, index)
    g = torch.Generator(device).manual_seed(cfg.training.seed)
    x_T = torch.randn(x0.shape, generator=g, device=device)
    with autocast(device, cfg.training.precision):
        img = ddim_sample_canvas(net, x_T, code, steps=cfg.sampling.steps, patch_size=cfg.model.patch_size,
                                 cfg_scale=cfg.sampling.cfg_scale, collage=cfg.model.collage,
                                 seed=cfg.training.seed)
    save_grid(img.float(), path, ncol=2)


def build_net(cfg, args, data, resume):
    """The PatchDM to train: a code table initialised from --semantic_path (rows must match the images), or the
    image encoder. Initial weights depend only on the seed (the same on every rank and every run)."""
    code_init = None
    if cfg.model.code_source == "table":
        if resume is None:
            if not args.semantic_path:
                raise CLIError("--semantic_path is required for a code-table model (make one with initialize.py), "
                               "or pass --semantic_enc to train the image encoder")
            code_init = load_code_table(args.semantic_path)
            rows = code_init.shape[0]
        else:
            rows = resume["model"]["encoder.semantic_enc.weight"].shape[0]
        if rows != len(data):
            raise CLIError(f"the code table has {rows} rows but the dataset {args.data_path} has {len(data)} "
                           "images; they must match (re-run initialize.py on this dataset)")
    torch.manual_seed(cfg.training.seed)
    return build_patchdm(cfg.model, len(data), code_init)


class Meter:
    """Loss sums on the device between log rows (no host sync per step): both terms, count, non-finite steps, and
    the loss per timestep quartile."""

    def __init__(self, device, num_timesteps: int):
        self.acc = torch.zeros(12, device=device)  # shift, noshift, steps, nonfinite, q-sums (4), q-counts (4)
        self.T, self.t0 = num_timesteps, time.time()

    @torch.no_grad()
    def add(self, shift, noshift, t):
        per = (shift + noshift).float()
        q = (t * 4 // self.T).clamp(max=3)
        self.acc[0] += shift.float().mean()
        self.acc[1] += noshift.float().mean()
        self.acc[2] += 1
        self.acc[3] += (~torch.isfinite(per.mean())).float()
        self.acc[4:8].index_add_(0, q, per)
        self.acc[8:12].index_add_(0, q, torch.ones_like(per))

    def row(self, d: D.Dist, step: int, samples: int, batch: int) -> dict:
        """Averages over ranks and steps since the last row; resets. Raises on a non-finite loss. ``samples`` is the
        number of training images seen so far (batch sizes of earlier resumed segments included)."""
        tot = D.all_mean(self.acc, d) * d.world
        if tot[3] > 0:
            raise FloatingPointError(f"non-finite loss before step {step}")
        dt, n = time.time() - self.t0, tot[2].item() / d.world
        steps = tot[2].item()
        row = dict(step=step, samples=samples, loss=(tot[0] + tot[1]).item() / steps,
                   shift=tot[0].item() / steps, noshift=tot[1].item() / steps,
                   loss_q=[round((tot[4 + i] / tot[8 + i]).item(), 6) if tot[8 + i] > 0 else None for i in range(4)],
                   sec_per_step=dt / n, images_per_s=n * batch / dt)
        self.acc.zero_()
        self.t0 = time.time()
        return row


def optimizer_step(net, opt, scaler, loss, tc) -> torch.Tensor:
    """Backward, unscale, clip the global grad norm, the LHQ table hack, step, scaler update. Returns the norm."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
    table = net.encoder.weight if net.uses_table else None
    if table is not None and tc.code_grad_scale != 1.0 and table.grad is not None:
        table.grad.mul_(tc.code_grad_scale)  # Faithful: the LHQ table hack, after clipping (spec §3.2)
    scaler.step(opt)
    scaler.update()
    return grad_norm


def run_paths(args) -> tuple:
    run = Path(args.runs_dir) / args.name
    return run, run / "checkpoints" / "last.pt"


def train(cfg, args, d: D.Dist, device, resume=None):
    """Train (or resume) the run of ``args.name``; returns the final step. A new run whose first checkpoint was never
    written is removed again if anything stops it, so a failed start leaves no half-made run folder; Ctrl-C (one
    process) stops after the current step and saves the checkpoint."""
    run, ckpt_path = run_paths(args)
    tc = cfg.training
    data = build_dataset(args.data_path, cfg.data)
    check_stored_size(data, cfg, args.allow_upscale)
    net = set_checkpointing(build_net(cfg, args, data, resume).to(device), tc.checkpointing, tc.checkpoint_levels)
    ema = EMA(net, tc.ema_decay)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    step, samples = 0, 0
    if resume is not None:
        step = restore_training(resume, net, ema, opt, scaler, "model", "ema")
        samples = resume.get("samples", step * from_dict(resume["config"]).training.batch_size)
    del resume
    b_local = tc.batch_size // d.world
    if b_local * d.world != tc.batch_size:
        raise CLIError(f"batch size {tc.batch_size} is not divisible by the {d.world} processes")
    step_fn = LossStep(net, cfg.model.patch_size, cfg.data.image_size, windowed=not net.needs_image,
                       collage=cfg.model.collage)
    if d.enabled:
        step_fn = nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None)
    # Deviation: code-table models only need each image's training window, so the loader reads just that (same
    # pixels; images stay whole for the image encoder, which sees the full image).
    crop = None if net.needs_image else (lambda s: window_at(cfg, s))
    sampler = StepBatchSampler(len(data), b_local, tc.seed, d.rank, d.world, step, crop, cfg.model.patch_size)
    with children_ignore_sigint():  # the workers never see Ctrl-C; this process stops them
        loader = iter(make_loader(SkipUnreadable(data), sampler, cfg.data.num_workers, device.type == "cuda"))
    new_run = not run.exists()
    try:
        with GracefulStop() as stop:
            return _loop(cfg, args, d, device, data, net, ema, opt, scaler, step_fn, loader, step, samples,
                         stop if d.world == 1 else None)
    except BaseException:
        if d.main and new_run and run.exists() and not ckpt_path.exists():
            shutil.rmtree(run)  # everything in it was written by this call, and nothing can be resumed from it
        raise


def _loop(cfg, args, d, device, data, net, ema, opt, scaler, step_fn, loader, step, samples, stop):
    run, ckpt_path = run_paths(args)
    tc = cfg.training
    b_local = tc.batch_size // d.world
    save_steps = max(1, math.ceil(tc.save_every_samples / tc.batch_size))
    sample_steps = max(1, math.ceil(tc.sample_every_samples / tc.batch_size))
    max_steps = tc.max_steps or 2_000_000_000 // tc.batch_size  # official: 2e9 samples
    if d.main:
        (run / "samples").mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(to_dict(cfg), indent=2), run / "config.json")
        print(f"run {run}: {len(data)} images, {count_params(net):,} parameters ({count_params(net.encoder):,} in "
              f"the code source), {tc.precision}, {d.world} process(es), from step {step}")
    log, meter, fixed = JsonlLog(run / "stats.jsonl"), Meter(device, cfg.diffusion.num_timesteps), None
    unreadable = set()

    def save():
        atomic_save({"format": FORMAT, "config": to_dict(cfg), "step": step, "samples": samples,
                     "num_codes": len(data), "model": net.state_dict(), "ema": ema.state_dict(),
                     "opt": opt.state_dict(), "scaler": scaler.state_dict()}, ckpt_path)

    bar = tqdm(total=max_steps, initial=step, disable=not d.main, desc="train", unit="step", dynamic_ncols=True)
    while step < max_steps:
        if stop is not None and stop.requested:
            bar.close()
            save()
            raise KeyboardInterrupt(f"stopped at step {step}; saved {ckpt_path}: re-run the same command to resume")
        x0, index, problems = next(loader)
        x0, index = x0.to(device, non_blocking=True), index.to(device, non_blocking=True)
        for problem in set(problems) - unreadable - {""}:  # the loader put the next readable image in its place
            unreadable.add(problem)
            print(f"warning: skipped an unreadable image ({problem}); {len(unreadable)} so far", file=sys.stderr)
            if d.main:
                log.write(step=step, skipped_image=problem, skipped_images=len(unreadable))
        if fixed is None:  # the images whose codes the previews use
            idx = index[:4].tolist()
            fixed = (torch.stack([data[i][0] for i in idx]).to(device), index[:4].clone())
            if d.main:
                save_grid(fixed[0], run / "samples" / "real.png", ncol=2)
        window, t, noise, (code_keep, pos_keep), offset = draw(cfg, step, d.rank, b_local, d.world, device)
        net.train()
        with autocast(device, tc.precision):
            shift, noshift = step_fn(x0, index, t, noise, window, code_keep, pos_keep, offset)
        grad_norm = optimizer_step(net, opt, scaler, shift.mean() + noshift.mean(), tc)
        ema.update(net)
        meter.add(shift.detach(), noshift.detach(), t)
        step += 1
        samples += tc.batch_size
        bar.update(1)
        last = step == max_steps
        if step % args.log_every == 0 or last:
            try:
                row = meter.row(d, step, samples, tc.batch_size)
            except FloatingPointError as e:
                raise CLIError(f"{e}; stopping without saving. The last good checkpoint is {ckpt_path}"
                               + ("" if ckpt_path.exists() else " (none yet)")) from None
            row.update(grad_norm=float(grad_norm), lr=tc.lr, scale=scaler.get_scale() if scaler.is_enabled() else 1.0)
            if unreadable:
                row["skipped_images"] = len(unreadable)
            if d.main:
                log.write(**row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", ips=f"{row['images_per_s']:.1f}")
        if d.main and (step % sample_steps == 0 or last):
            preview(ema.model, cfg, *fixed, device, run / "samples" / f"{step:07d}.png")
        if d.main and (step % save_steps == 0 or last):
            save()
    bar.close()
    return step


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device_name = args.device
    d = D.init_dist(device_type(device_name))
    try:
        device = pick_device(device_name, d.local_rank)
        _, ckpt_path = run_paths(args)
        resume = read_checkpoint(ckpt_path) if ckpt_path.exists() else None
        if resume is not None and not (isinstance(resume, dict) and resume.get("format") == FORMAT):
            raise CLIError(f"{ckpt_path} is not a {FORMAT} checkpoint of this project; use another --name")
        saved = from_dict(resume["config"]) if resume is not None else None
        cfg = resolve_config(args, device.type, saved)
        if resume is not None:
            allowed = [f.strip() for f in args.allow_change.split(",") if f.strip()]
            compatible_or_raise(resume, cfg, FORMAT, ckpt_path, FREE_ON_RESUME, allowed)
        if args.dry_run:
            print(json.dumps(to_dict(cfg), indent=2))
            return 0
        check_precision(cfg.training.precision, device)
        default_schedule()  # build the float64 constants once, before the loop
        step = train(cfg, args, d, device, resume)
        if d.main:
            print(f"done: step {step}, checkpoint {ckpt_path}")
    finally:
        D.cleanup(d)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
