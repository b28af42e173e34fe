"""Training throughput (windows/s) and peak memory of one optimizer step of the official loss.

    python -m benchmarks.train_speed --batch 96 --precision fp16                     # tensors already on the GPU
    python -m benchmarks.train_speed --batch 96 --data data/nature.lmdb --workers 8  # with the real data loader
    python -m benchmarks.train_speed --smoke

Each step: the window draws of train.py, the forward/backward of both loss terms, clipping, Adam and EMA.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import emit, environment, timed
from configs import get_preset
from dataset import build_dataset
from model.patchdm import build_patchdm
from runtime.data import StepBatchSampler, make_loader
from runtime.device import autocast, pick_device
from model.patchdm.fast import COMPILE_SCOPES, set_checkpointing, speed_up
from model.patchdm.grid import window_region
from model.patchdm.training import LossStep, draw, window_at
from training.ema import EMA
from training.loop import optimizer_step
from training.meter import total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nature")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--data", default=None, help="LMDB to load batches from (default: random tensors)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--compile", default="none", help="torch.compile mode per block (model/patchdm/fast.py)")
    ap.add_argument("--channels_last", action="store_true", help="channels-last memory format")
    ap.add_argument("--compile_scope", default="blocks", choices=list(COMPILE_SCOPES),
                    help="with --compile: every block, or the encoder and decoder halves (model/patchdm/fast.py)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--checkpoint_levels", type=int, default=0, help="with --checkpointing: only the N highest-"
                                                                     "resolution levels (0 = all)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="append JSONL rows here")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, CPU, batch 4, 2 steps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.precision, args.steps, args.warmup = "tiny", 4, "fp32", 2, 1
        args.device, args.workers = args.device or "cpu", 0
    device = pick_device(args.device)
    cfg = get_preset(args.preset)
    tc = cfg.training
    h, w = cfg.data.image_size
    if args.data:
        data = build_dataset(args.data, cfg.data)
        sampler = StepBatchSampler(len(data), args.batch,
                                   region_of=lambda s, k: window_region(window_at(cfg, s), cfg.model.patch_size))
        loader = iter(make_loader(data, sampler, args.workers, device.type == "cuda"))
        num_codes = len(data)
    else:
        num_codes = 1000
        fixed = (torch.rand(args.batch, 3, h, w, device=device) * 2 - 1,
                 torch.randint(0, num_codes, (args.batch,), device=device))
    net = build_patchdm(cfg.model, num_codes, torch.randn(num_codes, cfg.model.code_dim)).to(device)
    speed_up(set_checkpointing(net, args.checkpointing, args.checkpoint_levels), args.compile, args.channels_last,
             scope=args.compile_scope)
    ema = EMA(net, tc.ema_decay)
    step_fn = LossStep(net, cfg.model.patch_size, cfg.data.image_size, windowed=bool(args.data))
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def one(step):
        x0, index = (v.to(device, non_blocking=True) for v in next(loader)) if args.data else fixed
        window, t, noise, (ck, pk), _ = draw(cfg, step, 0, args.batch, 1, device)
        with autocast(device, args.precision):
            terms = step_fn(x0, index, t, noise, window, ck, pk)
        optimizer_step(net.parameters(), opt, scaler, total(terms), tc.grad_clip)
        ema.update(net)

    net.train()
    for s in range(args.warmup):
        one(s)
    row = {}
    with timed(device, row):
        for s in range(args.steps):
            one(args.warmup + s)
    row.update(environment(device), preset=args.preset, batch=args.batch, precision=args.precision,
               data="lmdb" if args.data else "tensors", compile=args.compile, scope=args.compile_scope,
               channels_last=args.channels_last,
               checkpointing=args.checkpointing and (args.checkpoint_levels or "all"),
               s_per_step=row["seconds"] / args.steps,
               windows_per_s=args.batch * args.steps / row["seconds"])
    emit([row], args.out, ["batch", "precision", "data", "compile", "scope", "channels_last", "checkpointing",
                           "s_per_step", "windows_per_s", "peak_gib"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
