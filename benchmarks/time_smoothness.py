"""How smooth is a trained model's output in t, and does that roughness matter to the solvers? (issue 13)

At a fixed x_t and code, prints per t the RMS of the first difference f(t+1) - f(t), the second difference
f(t+2) - 2 f(t+1) + f(t), and the change over 25 and 50 steps. For an output smooth at the step of one timestep
the second difference is far below the first; on this project's CPU-scale models it is as large as the first: the
time embedding's MLP output carries components that turn by up to a radian per timestep. ``--smooth SIGMA``
measures the same with that MLP output Gaussian-smoothed over t (``smoothed_time``, also
``benchmarks.sampler_accuracy --smooth_time``), which removes the roughness; docs/BENCHMARKS.md ("Fast samplers")
shows the solvers' accuracy does not depend on it. x_t = sqrt(abar) * 0.3 tanh(n') + sqrt(1 - abar) * n, with n
the sampler's x_T of images 0 and 1 (eps and v models).

    python -m benchmarks.time_smoothness -f run/checkpoints/last.pt --raw --codes 0,5 [--smooth 10]

``--final_jump`` measures instead what a spacing that stops early costs: it runs DDIM over all T timesteps from the
images' x_T (as test.py draws them) and prints, per t, the RMS distance of the x0 predicted at t along that path
from the path's end: the error of a sampler whose last evaluation is at t and then jumps to the clean image (the
final step of diffusers' linspace spacing is from t ~ (T - 1)/N), even with every earlier step exact.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.patchdm.sampling import image_process, per_image_noise  # noqa: E402
from model.patchdm import Denoiser  # noqa: E402
from model.patchdm.blocks import sinusoid  # noqa: E402
from model import load  # noqa: E402


@contextlib.contextmanager
def smoothed_time(net, sigma: float, num_timesteps: int = 1000):
    """Within the block, ``net``'s time embedding (the MLP output for integer t) is its Gaussian average over t with
    standard deviation ``sigma`` timesteps (reflected at both ends); a diagnostic, not a sampler setting."""
    emb = net.time_embed
    if sigma <= 0:
        yield
        return
    with torch.no_grad():
        table = emb.time_embed(sinusoid(torch.arange(num_timesteps), emb.time_in).to(emb.time_embed[0].weight.dtype))
        r = int(4 * sigma)
        w = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=table.dtype) / sigma) ** 2)
        padded = torch.cat([table[1:r + 1].flip(0), table, table[-r - 1:-1].flip(0)])
        table = torch.stack([(padded[i:i + 2 * r + 1] * w[:, None]).sum(0) / w.sum() for i in range(num_timesteps)])

    plain = emb.forward

    def forward(self, t, pos, pos_keep=None):  # the plain embedding with its time half (first) from the table
        out = plain(t, pos, pos_keep)
        return torch.cat([table.to(out)[t.long()], out[:, table.shape[1]:]], dim=1)

    emb.forward = types.MethodType(forward, emb)
    try:
        yield
    finally:
        del emb.forward


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full_path", "-f", required=True, help="train.py checkpoint (eps or v objective)")
    ap.add_argument("--codes", default="0,5", help="training-image indices whose codes are used")
    ap.add_argument("--times", default="900,500,100")
    ap.add_argument("--raw", action="store_true", help="raw (non-EMA) weights")
    ap.add_argument("--smooth", type=float, default=0.0, help="Gaussian-smooth the time embedding over t (sigma)")
    ap.add_argument("--final_jump", action="store_true",
                    help="distance of the x0 predicted at t along the all-timestep DDIM path from its end")
    ap.add_argument("--jump_times", default="5,10,20,50,100", help="the t of --final_jump")
    args = ap.parse_args()
    b = load(args.full_path, args.raw)
    cfg, net = b.cfg, b.net
    if cfg.diffusion.objective not in ("eps", "v"):
        sys.exit(f"error: {args.full_path} is a {cfg.diffusion.objective} model; this measures eps and v models")
    hw = tuple(cfg.sampling.image_size)
    idx = [int(c) for c in args.codes.split(",")]
    den = Denoiser(net, cfg.model.patch_size, cfg.model.collage)
    sched = image_process(cfg.diffusion)
    abar = sched.alphas_cumprod
    with torch.no_grad(), smoothed_time(net, args.smooth, cfg.diffusion.num_timesteps):
        code = net.codes(None, torch.tensor(idx)).float()
        n = torch.stack([per_image_noise(0, k, cfg.model.code_dim, hw)[1] for k in range(len(idx))])
        if args.final_jump:
            want, x, x0_at = {int(s) for s in args.jump_times.split(",")}, n.clone(), {}
            for i in range(sched.num_timesteps - 1, -1, -1):
                out = den.predict(x, sched.model_t(i, len(idx), x.device), code)
                if i in want:
                    x0_at[i] = sched.to_x0(x, i, out).clamp(-1, 1)
                x = sched.step(x, i, out, cfg.sampling.clip_x0)
            for t in sorted(want):
                d = (x0_at[t] - x.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3)).sqrt().mean().item()
                print(f"last evaluation at t={t}: x0 there is {d:.4f} RMS from the end of the path", flush=True)
            return 0
        for t in (int(s) for s in args.times.split(",")):
            a = abar[t].float()
            x_t = a.sqrt() * 0.3 * torch.tanh(n.roll(1, -1)) + (1 - a).sqrt() * n
            f = {d: den.predict(x_t, torch.full((len(idx),), t + d), code) for d in (0, 1, 2, 25, 50)}
            rms = lambda y: y.pow(2).mean().sqrt().item()  # noqa: E731
            print(f"t={t}: first difference {rms(f[1] - f[0]):.4f}  second difference "
                  f"{rms(f[2] - 2 * f[1] + f[0]):.4f}  over 25 steps {rms(f[25] - f[0]):.4f}  "
                  f"over 50 steps {rms(f[50] - f[0]):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
