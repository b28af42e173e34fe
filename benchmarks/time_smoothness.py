"""How smooth is a trained model's output in t? (issue 13: why the multistep solvers behave first order.)

At a fixed x_t and code, prints per t the RMS of the first difference f(t+1) - f(t), the second difference
f(t+2) - 2 f(t+1) + f(t), and the change over 25 and 50 steps. For an output smooth at the solvers' step size the
second difference is far below the first; a second difference as large as the first means a per-timestep jitter,
which a 2nd/3rd-order extrapolation amplifies. x_t = sqrt(abar) * 0.3 tanh(n') + sqrt(1 - abar) * n, with n the
sampler's x_T of images 0 and 1 (eps and v models).

    python -m benchmarks.time_smoothness -f run/checkpoints/last.pt --raw --codes 0,5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sampler_accuracy import noise_of  # noqa: E402
from diffusion import schedule_from  # noqa: E402
from model import Denoiser  # noqa: E402
from model.checkpoint import load  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full_path", "-f", required=True, help="train.py checkpoint (eps or v objective)")
    ap.add_argument("--codes", default="0,5", help="training-image indices whose codes are used")
    ap.add_argument("--times", default="900,500,100")
    ap.add_argument("--raw", action="store_true", help="raw (non-EMA) weights")
    args = ap.parse_args()
    b = load(args.full_path, args.raw)
    cfg, net = b.cfg, b.net
    if cfg.diffusion.objective not in ("eps", "v"):
        sys.exit(f"error: {args.full_path} is a {cfg.diffusion.objective} model; this measures eps and v models")
    hw = tuple(cfg.sampling.image_size)
    idx = [int(c) for c in args.codes.split(",")]
    den = Denoiser(net, cfg.model.patch_size, cfg.model.collage)
    abar = schedule_from(cfg.diffusion).alphas_cumprod
    with torch.no_grad():
        code = net.codes(None, torch.tensor(idx)).float()
        n = torch.stack([noise_of(0, k, cfg.model.code_dim, hw) for k in range(len(idx))])
        for t in (int(s) for s in args.times.split(",")):
            a = abar[t].float()
            x_t = a.sqrt() * 0.3 * torch.tanh(n.roll(1, -1)) + (1 - a).sqrt() * n
            f = {d: den.eps(x_t, torch.full((len(idx),), t + d), code) for d in (0, 1, 2, 25, 50)}
            rms = lambda y: y.pow(2).mean().sqrt().item()  # noqa: E731
            print(f"t={t}: first difference {rms(f[1] - f[0]):.4f}  second difference "
                  f"{rms(f[2] - 2 * f[1] + f[0]):.4f}  over 25 steps {rms(f[25] - f[0]):.4f}  "
                  f"over 50 steps {rms(f[50] - f[0]):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
