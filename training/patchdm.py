"""The Patch-DM trainer (train.py is its command line): one CPU/GPU or many under torchrun, exact resume.

Run folder runs/NAME/: config.json, stats.jsonl, samples/*.png (EMA previews, DDIM), checkpoints/last.pt (atomic).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from configs import from_dict, to_dict
from dataset import build_dataset
from diffusion import sample_canvas, schedule_from
from model import Denoiser, build_patchdm, count_params
from model.checkpoint import TABLE_KEY, TRAIN_FORMAT, load_code_table
from model.collage import window_crop
from runtime import dist as D
from runtime.data import SkipUnreadable, StepBatchSampler, check_stored_size, make_loader
from runtime.device import autocast
from runtime.errors import CLIError, children_ignore_sigint
from runtime.fast import set_checkpointing
from runtime.files import JsonlLog, atomic_save, atomic_write_text, save_grid
from runtime.rng import rng
from .draws import draw, window_at
from .ema import EMA
from .loop import StepLoop, optimizer_step, run_folder
from .resume import restore_training


class LossStep(nn.Module):
    """The network plus its window loss as one forward, so DDP sees every parameter use."""

    def __init__(self, net, patch_size: int, image_size: tuple, schedule=None, windowed: bool = False,
                 collage: str = "feature"):
        super().__init__()
        from diffusion import default_schedule
        self.net, self.p, self.image_size, self.windowed = net, patch_size, tuple(image_size), windowed
        self.schedule = schedule or default_schedule()
        self.den = Denoiser(net, patch_size, collage)

    def forward(self, x0, index, t, noise, window, code_keep=None, pos_keep=None, offset=None):
        """x0: images (B, 3, H, W), or with ``windowed`` already the 2p x 2p window of the padded images (as the
        dataset loads them for code-table models); noise (B, 3, 2p, 2p) for the window only.
        Returns per-image (shift, noshift)."""
        code = self.net.codes(None if self.windowed else x0, index)
        if code_keep is not None:  # Faithful: CFG drops the code by multiplying it by 0
            code = code * code_keep[:, None].to(code.dtype)
        if self.windowed:
            x0_win, mask_win = x0, window_crop(torch.ones(1, 1, *self.image_size, device=x0.device), window,
                                               self.p)[0]
        else:
            x0_win, mask_win = window_crop(x0, window, self.p)
        return self.den.loss_terms(x0_win, mask_win, t, noise, window, code, self.schedule, pos_keep, offset)


@torch.no_grad()
def preview(net, cfg, x0, index, device, path):
    """DDIM samples of the EMA model with the codes of a fixed batch.

    Deviation: the official previews are 1000-step DDPM samples of the raw weights."""
    code = net.codes(x0, index)
    x_T = torch.randn(x0.shape, generator=rng(cfg.training.seed, "preview", device=device), device=device)
    sched = schedule_from(cfg.diffusion).respace(cfg.sampling.steps)
    with autocast(device, cfg.training.precision):
        img = sample_canvas(Denoiser(net, cfg.model.patch_size, cfg.model.collage), x_T, code, sched,
                            cfg.sampling.cfg_scale, seed=cfg.training.seed, clip_x0=cfg.sampling.clip_x0)
    save_grid(img.float(), path, ncol=2)


def build_net(cfg, data, resume):
    """The PatchDM to train: a code table initialised from cfg.data.code_table (rows must match the images), or the
    image encoder. Initial weights depend only on the seed (the same on every rank and every run)."""
    code_init = None
    if cfg.model.code_source == "table":
        if resume is None:
            if not cfg.data.code_table:
                raise CLIError("--semantic_path is required for a code-table model (make one with initialize.py), "
                               "or pass --semantic_enc to train the image encoder")
            code_init = load_code_table(cfg.data.code_table)
            rows = code_init.shape[0]
        else:
            rows = resume["model"][TABLE_KEY].shape[0]
        if rows != len(data):
            raise CLIError(f"the code table has {rows} rows but the dataset {cfg.data.path} has {len(data)} "
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
        q = ((t * 4).long() if t.is_floating_point() else t * 4 // self.T).clamp(max=3)  # flow: t in [0, 1)
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


class Trainer:
    """One training run: everything built, then ``run()`` to the configured number of steps."""

    def __init__(self, cfg, run: Path, d: D.Dist, device, resume=None, log_every: int = 50,
                 allow_upscale: bool = False):
        self.cfg, self.run, self.d, self.device, self.log_every = cfg, run, d, device, log_every
        self.ckpt_path = run / "checkpoints" / "last.pt"
        tc = cfg.training
        self.data = data = build_dataset(cfg.data.path, cfg.data)
        check_stored_size(data, cfg, allow_upscale)
        self.net = net = set_checkpointing(build_net(cfg, data, resume).to(device), tc.checkpointing,
                                           tc.checkpoint_levels)
        self.ema = EMA(net, tc.ema_decay)
        self.opt = torch.optim.Adam(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
        self.step, self.samples = 0, 0
        if resume is not None:
            self.step = restore_training(resume, net, self.ema, self.opt, self.scaler, "model", "ema")
            self.samples = resume.get("samples", self.step * from_dict(resume["config"]).training.batch_size)
        self.b_local = tc.batch_size // d.world
        if self.b_local * d.world != tc.batch_size:
            raise CLIError(f"batch size {tc.batch_size} is not divisible by the {d.world} processes")
        step_fn = LossStep(net, cfg.model.patch_size, cfg.data.image_size, schedule_from(cfg.diffusion),
                           windowed=not net.needs_image, collage=cfg.model.collage)
        if d.enabled:
            step_fn = nn.parallel.DistributedDataParallel(
                step_fn, device_ids=[device.index] if device.type == "cuda" else None)
        self.step_fn = step_fn
        # Deviation: code-table models only need each image's training window, so the loader reads just that (same
        # pixels; images stay whole for the image encoder, which sees the full image).
        crop = None if net.needs_image else (lambda s: window_at(cfg, s))
        sampler = StepBatchSampler(len(data), self.b_local, tc.seed, d.rank, d.world, self.step, crop,
                                   cfg.model.patch_size)
        with children_ignore_sigint():  # the workers never see Ctrl-C; this process stops them
            self.loader = iter(make_loader(SkipUnreadable(data), sampler, cfg.data.num_workers, device.type == "cuda"))

    def save(self):
        atomic_save({"format": TRAIN_FORMAT, "config": to_dict(self.cfg), "step": self.step, "samples": self.samples,
                     "num_codes": len(self.data), "model": self.net.state_dict(), "ema": self.ema.state_dict(),
                     "opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}, self.ckpt_path)

    def _after_clip(self):
        table = self.net.code_source.weight if self.net.uses_table else None
        if table is not None and self.cfg.training.code_grad_scale != 1.0 and table.grad is not None:
            table.grad.mul_(self.cfg.training.code_grad_scale)  # Faithful: the LHQ table hack, after clipping

    def run_loop(self) -> int:
        """Train to the configured number of steps; returns the final step."""
        with run_folder(self.run, self.ckpt_path, self.d.main), StepLoop(self.ckpt_path, self.d.world == 1) as stop:
            return self._loop(stop)

    def _loop(self, stop) -> int:
        cfg, d, device, run, net = self.cfg, self.d, self.device, self.run, self.net
        tc = cfg.training
        save_steps = max(1, math.ceil(tc.save_every_samples / tc.batch_size))
        sample_steps = max(1, math.ceil(tc.sample_every_samples / tc.batch_size))
        max_steps = tc.max_steps or 2_000_000_000 // tc.batch_size  # official: 2e9 samples
        if d.main:
            (run / "samples").mkdir(parents=True, exist_ok=True)
            atomic_write_text(json.dumps(to_dict(cfg), indent=2), run / "config.json")
            print(f"run {run}: {len(self.data)} images, {count_params(net):,} parameters "
                  f"({count_params(net.code_source):,} in the code source), {tc.precision}, {d.world} process(es), "
                  f"from step {self.step}")
        log, meter, fixed = JsonlLog(run / "stats.jsonl"), Meter(device, cfg.diffusion.num_timesteps), None
        unreadable = set()
        bar = tqdm(total=max_steps, initial=self.step, disable=not d.main, desc="train", unit="step",
                   dynamic_ncols=True)
        while self.step < max_steps:
            stop.check(self.step, self.save, bar)
            x0, index, problems = next(self.loader)
            x0, index = x0.to(device, non_blocking=True), index.to(device, non_blocking=True)
            for problem in set(problems) - unreadable - {""}:  # the loader put the next readable image in its place
                unreadable.add(problem)
                print(f"warning: skipped an unreadable image ({problem}); {len(unreadable)} so far", file=sys.stderr)
                if d.main:
                    log.write(step=self.step, skipped_image=problem, skipped_images=len(unreadable))
            if fixed is None:  # the images whose codes the previews use
                idx = index[:4].tolist()
                fixed = (torch.stack([self.data[i][0] for i in idx]).to(device), index[:4].clone())
                if d.main:
                    save_grid(fixed[0], run / "samples" / "real.png", ncol=2)
            window, t, noise, (code_keep, pos_keep), offset = draw(cfg, self.step, d.rank, self.b_local, d.world,
                                                                   device)
            net.train()
            with autocast(device, tc.precision):
                shift, noshift = self.step_fn(x0, index, t, noise, window, code_keep, pos_keep, offset)
            grad_norm = optimizer_step(net.parameters(), self.opt, self.scaler, shift.mean() + noshift.mean(),
                                       tc.grad_clip, self._after_clip)
            self.ema.update(net)
            meter.add(shift.detach(), noshift.detach(), t)
            self.step += 1
            self.samples += tc.batch_size
            bar.update(1)
            last = self.step == max_steps
            if self.step % self.log_every == 0 or last:
                try:
                    row = meter.row(d, self.step, self.samples, tc.batch_size)
                except FloatingPointError as e:
                    raise CLIError(f"{e}; stopping without saving. The last good checkpoint is {self.ckpt_path}"
                                   + ("" if self.ckpt_path.exists() else " (none yet)")) from None
                row.update(grad_norm=float(grad_norm), lr=tc.lr,
                           scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
                if unreadable:
                    row["skipped_images"] = len(unreadable)
                if d.main:
                    log.write(**row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", ips=f"{row['images_per_s']:.1f}")
            if d.main and (self.step % sample_steps == 0 or last):
                preview(self.ema.model, cfg, *fixed, device, run / "samples" / f"{self.step:07d}.png")
            if d.main and (self.step % save_steps == 0 or last):
                self.save()
        bar.close()
        return self.step
