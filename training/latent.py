"""The latent-DDPM trainer (train_latent.py is its command line): the MLP over the learned semantic codes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from configs import to_dict
from diffusion import latent_loss, latent_schedule_from
from model import build_latent, count_params
from runtime.device import autocast
from runtime.errors import CLIError
from runtime.files import JsonlLog, atomic_save, atomic_write_text
from runtime.rng import rng
from .ema import EMA
from .loop import StepLoop, optimizer_step, run_folder
from .resume import restore_training


@torch.no_grad()
def encoder_codes(net, data, num_workers: int, device, batch=64) -> torch.Tensor:
    """Codes of every training image from the image encoder (the official fallback never ran, FAITHFULNESS.md)."""
    enc = net.code_source.to(device)
    out = []
    for x, _ in tqdm(DataLoader(data, batch_size=batch, num_workers=num_workers), desc="encode", unit="batch"):
        out.append(enc(x.to(device)).float().cpu())
    return torch.cat(out)


def train_latent(codes: torch.Tensor, cfg, run: Path, device, full: dict, old: dict | None = None,
                 log_every: int = 100) -> int:
    """Train (or resume) the latent MLP on ``codes`` (N, D) into runs/NAME; ``full`` holds the Patch-DM part of the
    full checkpoint. Returns the final step."""
    lc = cfg.latent
    n, dim = codes.shape
    batch, max_steps = lc.batch_size, lc.max_steps or lc.total_samples // lc.batch_size
    ckpt_path = run / "checkpoints" / "last.pt"
    torch.manual_seed(cfg.training.seed)
    net = build_latent(lc, dim).to(device)
    ema = EMA(net, lc.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=lc.precision == "fp16")
    step, samples = 0, 0
    if old is not None:
        step = restore_training(old, net, ema, opt, scaler, "latent_raw", "latent")
        samples = old.get("samples", step * batch)
    if lc.znormalize and n < 2:
        raise CLIError(f"--znormalize needs at least 2 codes to take a standard deviation over; there is {n}")
    mean, std = codes.mean(0), codes.std(0)
    z = ((codes - mean) / std if lc.znormalize else codes).to(device)
    sched = latent_schedule_from(lc)

    def save():
        atomic_save({**full, "step": step, "samples": samples, "latent": ema.state_dict(),
                     "latent_raw": net.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
                     "z_mean": mean if lc.znormalize else None, "z_std": std if lc.znormalize else None}, ckpt_path)

    with run_folder(run, ckpt_path), StepLoop(ckpt_path) as stop:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(to_dict(cfg), indent=2), run / "config.json")
        log = JsonlLog(run / "stats.jsonl")
        print(f"latent run {run}: {n} codes of width {dim}, {count_params(net):,} parameters, batch {batch}, "
              f"{lc.precision}, from step {step} to {max_steps}")
        acc, t0 = [], time.time()
        bar = tqdm(total=max_steps, initial=step, desc="latent", unit="step", dynamic_ncols=True)
        while step < max_steps:
            stop.check(step, save, bar)
            g = rng(cfg.training.seed, "latent", step)
            idx = torch.randperm(n, generator=g)[:batch]
            t = torch.randint(0, lc.num_timesteps, (batch,), generator=g).to(device)
            noise = torch.randn(batch, dim, generator=g).to(device)
            net.train()
            with autocast(device, lc.precision):
                loss = latent_loss(net, z[idx.to(device)], t, noise, sched)
            if not torch.isfinite(loss):
                raise CLIError(f"non-finite latent loss at step {step}; stopping without saving "
                               f"(last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none yet'})")
            optimizer_step(net.parameters(), opt, scaler, loss, lc.grad_clip)
            ema.update(net)
            step += 1
            samples += batch
            acc.append(loss.item())
            bar.update(1)
            last = step == max_steps
            if step % log_every == 0 or last:
                dt = time.time() - t0
                log.write(step=step, samples=samples, loss=sum(acc) / len(acc), sec_per_step=dt / len(acc),
                          codes_per_s=len(acc) * batch / dt)
                bar.set_postfix(loss=f"{sum(acc) / len(acc):.4f}")
                acc, t0 = [], time.time()
            if step % max(1, lc.save_every_samples // batch) == 0 or last:
                save()
        bar.close()
    return step
