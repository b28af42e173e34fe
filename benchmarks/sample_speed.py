"""Sampling speed and peak memory: 50-step DDIM (or --sampler dpmpp2m --steps 20, ...) over canvases of several
sizes and batch sizes.

    python -m benchmarks.sample_speed --sizes 512x1024,1024x2048,4096x8192 --batches 1,4 --precision bf16
    python -m benchmarks.sample_speed --smoke          # the tiny preset on the CPU, seconds
    python -m benchmarks.sample_speed --compare ddim:50,dpmpp2m:20 --repeats 3   # time ratio of two settings

Random weights (speed does not depend on them). Each configuration is warmed up with a 2-step run, then timed over
a full run; s/image divides by the batch. --bands as test.py: auto, off (all at once), R or RxC tiles per band.
--compare SAMPLER:STEPS,... times the settings in turn, --repeats rounds over all of them (so a machine whose speed
drifts slows every setting alike), and reports each one's median s/image and its ratio to the first setting's.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import emit, environment, timed
from configs import get_preset
from model.patchdm.api import ddim_sample_canvas
from model.patchdm.sampling import sample_canvas, sampling_process
from model.patchdm import CanvasOptions, Denoiser, build_unet
from runtime.device import autocast, pick_device
from model.patchdm.cli import parse_bands
from runtime.cli import parse_hw
from model.patchdm.fast import COMPILE_SCOPES, cast_weights, speed_up


def measure(unet, device, hw, batch, precision, steps, bands, cfg_scale, p, code_dim, sampler="ddim", diffusion=None):
    code = torch.randn(batch, code_dim, device=device)
    br, bc = parse_bands(bands, batch * (2 if cfg_scale else 1), hw, p)
    kw = dict(patch_size=p, cfg_scale=cfg_scale, band_rows=br, band_cols=bc, in_place=True)  # as test.py runs it

    def sample(x_T, n):
        if sampler == "ddim":
            return ddim_sample_canvas(unet, x_T, code, steps=n, **kw)
        return sample_canvas(Denoiser(unet, p), x_T, code, sampling_process(diffusion, sampler, n), sampler,
                             CanvasOptions(cfg_scale, br, bc, in_place=True))

    with autocast(device, precision):
        sample(torch.randn(batch, 3, *hw, device=device), 2)
        x_T, row = torch.randn(batch, 3, *hw, device=device), {}
        with timed(device, row):
            sample(x_T, steps)
    return dict(row, size=f"{hw[0]}x{hw[1]}", batch=batch, precision=precision, steps=steps, cfg=cfg_scale,
                sampler=sampler,
                bands="off" if br is None and bc is None else f"{br}x{bc or 'all'}", s_per_image=row["seconds"] / batch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nature")
    ap.add_argument("--sizes", default="512x1024", help="comma-separated HxW")
    ap.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--precision", default="bf16", help="comma-separated: fp32, fp16, bf16")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="ddim", help="ddim, dpmpp2m, dpmpp3m (diffusion/samplers.py)")
    ap.add_argument("--cfg_scale", type=float, default=0.0)
    ap.add_argument("--bands", default="auto", help="auto, off, R or RxC tiles per band (as test.py)")
    ap.add_argument("--compile", default="none", help="torch.compile mode per block: none, default, "
                                                      "reduce-overhead, max-autotune (model/patchdm/fast.py)")
    ap.add_argument("--channels_last", action="store_true", help="channels-last memory format")
    ap.add_argument("--compile_scope", default="blocks", choices=list(COMPILE_SCOPES),
                    help="with --compile: every block, or the encoder and decoder halves (model/patchdm/fast.py)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="append JSONL rows here")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, CPU, 3 steps")
    ap.add_argument("--compare", default=None,
                    help="SAMPLER:STEPS,...: time these settings in interleaved rounds (instead of --sampler/--steps)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of --compare")
    args = ap.parse_args(argv)
    settings = None
    if args.compare:
        try:
            settings = [(n, int(k)) for n, k in (c.split(":") for c in args.compare.split(","))]
        except ValueError:
            sys.exit(f"error: --compare {args.compare!r}: expected SAMPLER:STEPS,... e.g. ddim:50,dpmpp2m:20")
    if args.smoke:
        args.preset, args.sizes, args.batches, args.precision, args.steps = "tiny", "16x24,32x48", "1,2", "fp32", 3
        args.device = args.device or "cpu"
    device = pick_device(args.device)
    cfg = get_preset(args.preset)
    env = environment(device)
    rows = []
    for precision in args.precision.split(","):
        # the weights as test.py keeps them for this precision (model.patchdm.fast.cast_weights: the same function)
        unet = speed_up(cast_weights(build_unet(cfg.model).to(device).eval(), precision), args.compile,
                        args.channels_last, scope=args.compile_scope)
        for size in args.sizes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                if settings:
                    rows += compare(unet, device, parse_hw(size), batch, precision, settings, args, cfg, env)
                    continue
                r = measure(unet, device, parse_hw(size), batch, precision, args.steps, args.bands,
                            args.cfg_scale, cfg.model.patch_size, cfg.model.code_dim, args.sampler, cfg.diffusion)
                rows.append({**env, "preset": args.preset, "compile": args.compile, "scope": args.compile_scope,
                             "channels_last": args.channels_last, **r})
    emit(rows, args.out, ["size", "batch", "precision", "cfg", "bands", "sampler", "steps", "compile", "scope",
                          "channels_last", "s_per_image", "peak_gib"] + (["repeats", "ratio"] if settings else []))
    return 0


def compare(unet, device, hw, batch, precision, settings, args, cfg, env) -> list:
    """One row per (sampler, steps) setting: the median s/image over --repeats interleaved rounds, and the ratio
    of that median to the first setting's."""
    times = {s: [] for s in settings}
    last = {}
    for _ in range(args.repeats):
        for sampler, steps in settings:
            last[sampler, steps] = measure(unet, device, hw, batch, precision, steps, args.bands, args.cfg_scale,
                                           cfg.model.patch_size, cfg.model.code_dim, sampler, cfg.diffusion)
            times[sampler, steps].append(last[sampler, steps]["s_per_image"])
    med = {s: float(torch.tensor(v).median()) for s, v in times.items()}
    return [{**env, "preset": args.preset, "compile": args.compile, "scope": args.compile_scope,
             "channels_last": args.channels_last, **last[s], "s_per_image": med[s], "repeats": args.repeats,
             "ratio": med[s] / med[settings[0]]} for s in settings]


if __name__ == "__main__":
    sys.exit(main())
