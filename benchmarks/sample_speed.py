"""Sampling speed and peak memory: 50-step DDIM over canvases of several sizes and batch sizes.

    python -m benchmarks.sample_speed --sizes 512x1024,1024x2048,4096x8192 --batches 1,4 --precision bf16
    python -m benchmarks.sample_speed --smoke          # the tiny preset on the CPU, seconds

Random weights (speed does not depend on them). Each configuration is warmed up with a 2-step run, then timed over
a full run; s/image divides by the batch. --band_rows: -1 automatic (as test.py), 0 all at once, k rows.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import emit, environment, timed
from configs import get_preset
from diffusion import auto_band_rows, ddim_sample_canvas
from model import build_unet
from runtime.device import autocast, pick_device
from runtime.errors import parse_hw


def measure(unet, device, hw, batch, precision, steps, band_rows, cfg_scale, p, code_dim):
    x_T = torch.randn(batch, 3, *hw, device=device)
    code = torch.randn(batch, code_dim, device=device)
    band = band_rows or None
    if band == -1:
        band = auto_band_rows(batch * (2 if cfg_scale else 1), hw[1] // p + 1)
    with autocast(device, precision):
        ddim_sample_canvas(unet, x_T, code, steps=2, patch_size=p, cfg_scale=cfg_scale, band_rows=band)
        row = {}
        with timed(device, row):
            ddim_sample_canvas(unet, x_T, code, steps=steps, patch_size=p, cfg_scale=cfg_scale, band_rows=band)
    return dict(row, size=f"{hw[0]}x{hw[1]}", batch=batch, precision=precision, steps=steps, cfg=cfg_scale,
                band_rows=band, s_per_image=row["seconds"] / batch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nature")
    ap.add_argument("--sizes", default="512x1024", help="comma-separated HxW")
    ap.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--precision", default="bf16", help="comma-separated: fp32, fp16, bf16")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg_scale", type=float, default=0.0)
    ap.add_argument("--band_rows", type=int, default=-1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="append JSONL rows here")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, CPU, 3 steps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.sizes, args.batches, args.precision, args.steps = "tiny", "16x24,32x48", "1,2", "fp32", 3
        args.device = args.device or "cpu"
    device = pick_device(args.device)
    cfg = get_preset(args.preset)
    unet = build_unet(cfg.model).to(device).eval()
    env = environment(device)
    rows = []
    for size in args.sizes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for precision in args.precision.split(","):
                r = measure(unet, device, parse_hw(size), batch, precision, args.steps, args.band_rows,
                            args.cfg_scale, cfg.model.patch_size, cfg.model.code_dim)
                rows.append({**env, "preset": args.preset, **r})
    emit(rows, args.out, ["size", "batch", "precision", "cfg", "band_rows", "s_per_image", "peak_gib"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
