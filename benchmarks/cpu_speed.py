"""CPU speed of sampling and of a training step, comparable across commits (issue 4: nothing slower on the CPU).

    python -m benchmarks.cpu_speed
    git worktree add /tmp/old ca7662f && (cd /tmp/old && PYTHONPATH=. python /path/to/repo/benchmarks/cpu_speed.py)

Uses only functions that every commit since the first working sampler has (build_unet, ddim_sample_canvas,
patch_loss_terms), so the same file times an older checkout. fp32, random weights, best of several runs after a
warm-up (the minimum is the least disturbed by other work on a shared machine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from configs import get_preset
from model.patchdm.api import ddim_sample_canvas, patch_loss_terms
from model.patchdm import build_unet


def best_of(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(preset: str, hw: tuple, steps: int, batch: int, reps: int) -> list:
    torch.manual_seed(0)
    cfg = get_preset(preset)
    p = cfg.model.patch_size
    unet = build_unet(cfg.model).eval()
    x, code = torch.randn(1, 3, *hw), torch.randn(1, cfg.model.code_dim)
    with torch.no_grad():
        ddim = best_of(lambda: ddim_sample_canvas(unet, x, code, steps=steps, patch_size=p), reps) / steps
    unet.train()
    x0, noise = torch.rand(batch, 3, *hw) * 2 - 1, torch.randn(batch, 3, hw[0] + p, hw[1] + p)
    t, c = torch.randint(0, 1000, (batch,)), torch.randn(batch, cfg.model.code_dim)

    def train_step():
        shift, noshift = patch_loss_terms(unet, x0, t, noise, (1, 1), c, p)
        (shift + noshift).backward()
        unet.zero_grad(set_to_none=True)

    loss = best_of(train_step, reps)
    size = f"{hw[0]}x{hw[1]}"
    return [dict(preset=preset, work=f"DDIM step {size}", seconds=ddim),
            dict(preset=preset, work=f"loss+backward {size} batch {batch}", seconds=loss)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="append JSONL rows here")
    ap.add_argument("--smoke", action="store_true", help="the tiny preset only, one repetition")
    args = ap.parse_args(argv)
    work = [("tiny", (64, 128), 10, 16)] + ([] if args.smoke else [("nature", (128, 256), 2, 4)])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for preset, hw, steps, batch in work:
        rows += [dict(r, commit=commit or "?", torch=torch.__version__)
                 for r in measure(preset, hw, steps, batch, 1 if args.smoke else args.reps)]
    try:
        from benchmarks.common import emit
    except ImportError:  # an old checkout without the benchmarks package
        emit = None
    if emit:
        emit(rows, args.out, ["commit", "preset", "work", "seconds"])
    else:
        for r in rows:
            print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
