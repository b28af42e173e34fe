"""How close each sampler gets to the probability-flow ODE's solution, per number of network evaluations, on a
trained model: every deterministic sampler approximates the same ODE from the same x_T and code, so the reference is
a 1000-step DDIM run (the finest the schedule allows), and each sampler is scored by its distance to it.

    python -m benchmarks.sampler_accuracy -f runs/v/checkpoints/last.pt --codes 0,1,2,3,4,5,6,7 --seeds 2 --raw \
        --out docs/img/samplers_v

Images are made exactly as ``test.py -f CKPT --codes ... --seed S --sampler X --steps N --raw`` makes image k (the
same x_T per image number, the code of training image codes[k mod n]), so any row can be re-made with test.py.
Per sampler and step count: network evaluations, mean per-image RMS distance to the reference (pixels in [-1, 1]),
the seam ratio on the image grid, and the sampling time per image measured here, one configuration after another in
this process (so the ratios between rows are fair on a shared machine; the absolute times are this machine's).
Writes OUT.json, OUT.md and OUT.png (the first image: reference first, then per sampler a row over the step counts
and under it its difference from the reference, amplified by --diff_gain).
The reference (the slow part: 1000 evaluations per image, ~30 min for 16 images on 2 CPU cores) is kept in
OUT.ref.pt and reused by the next run with the same checkpoint, codes, seeds and reference steps.
A sampler may name its timestep spacing, ``dpmpp2m@linspace`` (diffusion/samplers.py, ``spacing``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.patchdm.sampling import per_image_noise, sample_canvas, sampling_process  # noqa: E402
from diffusion.vp import SPACINGS  # noqa: E402
from diffusion import evaluations, supported  # noqa: E402
from metrics.seams import seam_ratio  # noqa: E402
from model.patchdm import CanvasOptions, Denoiser  # noqa: E402
from model import load  # noqa: E402
from runtime.files import atomic_save, save_grid, to_uint8  # noqa: E402
from benchmarks.time_smoothness import smoothed_time  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full_path", "-f", required=True, help="train.py checkpoint (code table)")
    ap.add_argument("--codes", default="0,1,2,3,4,5,6,7", help="training-image indices whose codes are used")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per code: samples = codes x seeds")
    ap.add_argument("--samplers", default="auto", help="comma list (auto: ddim, dpmpp2m, dpmpp3m; + heun for flow)")
    ap.add_argument("--steps", default="10,15,20,25,50")
    ap.add_argument("--ref_steps", type=int, default=1000)
    ap.add_argument("--raw", action="store_true", help="raw (non-EMA) weights")
    ap.add_argument("--no_clip", action="store_true",
                    help="do not clip the x0 predictions to [-1, 1] (reference and samplers alike)")
    ap.add_argument("--smooth_time", type=float, default=0.0,
                    help="diagnostic: run the samplers (not the reference) with the time embedding Gaussian-smoothed "
                         "over t by this many timesteps (benchmarks.time_smoothness)")
    ap.add_argument("--diff_gain", type=float, default=20.0,
                    help="the picture's difference rows show |x - reference| times this")
    ap.add_argument("--batch_size", "-b", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", required=True, help="output stem: OUT.json, OUT.md, OUT.png")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b = load(args.full_path, args.raw)
    cfg, net = b.cfg, b.net
    obj, p, hw = cfg.diffusion.objective, cfg.model.patch_size, tuple(cfg.sampling.image_size)
    samplers = (["ddim", "dpmpp2m", "dpmpp3m"] + (["heun"] if obj == "flow" else [])
                if args.samplers == "auto" else args.samplers.split(","))
    for s in samplers:
        name, _, how = s.partition("@")
        if supported(name, obj):
            sys.exit(f"error: {supported(name, obj)}")
        if how and how not in SPACINGS:
            sys.exit(f"error: spacing {how!r} in {s!r}: choose one of {', '.join(SPACINGS)}")
    idx = [int(c) for c in args.codes.split(",")]
    n = len(idx) * args.seeds
    ks = list(range(n))  # image k: seed 0's numbering, code idx[k mod len(idx)] (test.py --codes --img_num n)
    with torch.no_grad():
        code = net.codes(None, torch.tensor([idx[k % len(idx)] for k in ks])).float()
    x_T = torch.stack([per_image_noise(0, k, cfg.model.code_dim, hw)[1] for k in ks])
    den = Denoiser(net, p, cfg.model.collage)

    clip = cfg.sampling.clip_x0 and not args.no_clip

    def run(sampler, steps):
        sampler, _, how = sampler.partition("@")
        sched = sampling_process(cfg.diffusion, sampler, steps, how or None)
        outs, t0 = [], time.perf_counter()
        for i in range(0, n, args.batch_size):
            outs.append(sample_canvas(den, x_T[i:i + args.batch_size].clone(), code[i:i + args.batch_size], sched,
                                      sampler, CanvasOptions(cfg.sampling.cfg_scale, clip_x0=clip)))
        return torch.cat(outs).clamp(-1, 1), (time.perf_counter() - t0) / n

    ref_file = Path(args.out).with_suffix(".ref.pt")
    meta = dict(checkpoint=str(Path(args.full_path).resolve()), mtime=Path(args.full_path).stat().st_mtime,
                raw=args.raw, clip=clip, codes=idx, seeds=args.seeds, ref_steps=args.ref_steps)
    cached = torch.load(ref_file, weights_only=True) if ref_file.exists() else None
    if cached is not None and cached["meta"] == meta:
        ref, ref_time = cached["ref"], cached["sec_per_image"]
        print(f"reference: {ref_file} (DDIM-{args.ref_steps}, reused)", flush=True)
    else:
        ref, ref_time = run("ddim", args.ref_steps)
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(dict(meta=meta, ref=ref, sec_per_image=ref_time), ref_file)
    rows, grid = [], [ref[0]]
    steps_list = [int(s) for s in args.steps.split(",")]
    for s in samplers:
        for steps in steps_list:
            with smoothed_time(net, args.smooth_time, cfg.diffusion.num_timesteps):
                out, sec = run(s, steps)
            rms = ((out - ref) ** 2).mean(dim=(1, 2, 3)).sqrt()
            seams = [seam_ratio(to_uint8(x), p) for x in out]
            seams = [v for v in seams if np.isfinite(v)]
            rows.append(dict(sampler=s, steps=steps, nfe=evaluations(s, steps), rms=float(rms.mean()),
                             rms_std=float(rms.std()), seam=float(np.mean(seams)), sec_per_image=sec))
            grid.append(out[0])
            print(json.dumps(rows[-1]), flush=True)
    ref_seams = [seam_ratio(to_uint8(x), p) for x in ref]
    result = dict(checkpoint=str(args.full_path), objective=obj, samples=n, ref_steps=args.ref_steps,
                  smooth_time=args.smooth_time,
                  ref_sec_per_image=ref_time, ref_seam=float(np.nanmean(ref_seams)), rows=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    ddim50 = next((r for r in rows if r["sampler"] == "ddim" and r["steps"] == 50), None)
    lines = [f"{obj} model, {n} samples, reference DDIM-{args.ref_steps} (seam ratio {result['ref_seam']:.3f}, "
             f"{ref_time:.2f} s/image)" + (f"; samplers with the time embedding smoothed over "
                                            f"{args.smooth_time:g} timesteps" if args.smooth_time else ""), "",
             "| sampler | steps | evaluations | RMS to reference | seam ratio | s/image | time vs DDIM-50 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['sec_per_image'] / ddim50['sec_per_image']:.2f}" if ddim50 else ""
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['rms']:.4f} ± {r['rms_std']:.4f} | "
                     f"{r['seam']:.3f} | {r['sec_per_image']:.3f} | {ratio} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # picture: reference, then per sampler a row over the step counts and under it the row of differences from the
    # reference, channel-mean |x - ref| x diff_gain on black (pixels in [-1, 1]: |x - ref| = 1/diff_gain is white)
    blank = torch.ones_like(ref[0])
    cells = []
    for si in range(len(samplers)):
        row = grid[1 + si * len(steps_list):1 + (si + 1) * len(steps_list)]
        cells += [ref[0] if si == 0 else blank] + row
        cells += [blank] + [((x - ref[0]).abs().mean(0, keepdim=True) * args.diff_gain * 2 - 1).clamp(-1, 1)
                            .expand_as(x) for x in row]
    save_grid(torch.stack(cells), out.with_suffix(".png"), ncol=1 + len(steps_list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
