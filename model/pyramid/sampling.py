"""What the pyramid family's scripts run: reconstructions through the autoencoder, with latents left out on request
(the paper's Fig. 7), and samples of a full checkpoint (noise -> latents by the flow model -> images)."""

from __future__ import annotations

import torch

from diffusion import samplers as S
from diffusion.flow import FlowProcess
from diffusion.ode import rk45
from runtime.rng import rng


@torch.no_grad()
def reconstruct(autoencoder, x: torch.Tensor, keep=None) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> their reconstructions from the posterior means, with only the latents in
    ``keep`` (indices, 0 = the finest; None: all)."""
    return autoencoder.decode([p.mean for p in autoencoder.encode(x)], keep).clamp(-1, 1)


def parse_levels(text: str | None, n: int):
    """--levels '0,2' -> {0, 2} (latent indices, 0 = the finest); None -> None (all). ValueError names the range."""
    if text is None:
        return None
    try:
        keep = {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        raise ValueError(f"--levels {text!r}: give latent indices, e.g. 0,2 (0 = the finest of {n})") from None
    if not keep or not all(0 <= k < n for k in keep):
        raise ValueError(f"--levels {text!r}: this autoencoder has {n} latents, 0..{n - 1} (0 = the finest)")
    return keep


def shapes_text(shapes: list) -> str:
    """Latent shapes (C, h, w) as the docs write them: '8x16x8 + 4x8x16' (h x w x C)."""
    return " + ".join(f"{h}x{w}x{c}" for c, h, w in shapes)


def image_noise(seed: int, k: int, shapes: list) -> tuple:
    """The starting noise of image k: one tensor per latent shape (C, h, w), from its own generator."""
    g = rng(seed, "image", k)
    return tuple(torch.randn(s, generator=g) for s in shapes)


@torch.no_grad()
def sample_latents(flow, noise: tuple, sampler: str, steps: int, eps: float, rtol: float = 1e-5,
                   atol: float = 1e-5, progress: bool | float = False) -> tuple:
    """Noise (a tuple of (B, C, h, w), finest first) -> (the autoencoder's latents, evaluations per image): the flow
    model's ODE from t = 1 - eps to 0 with euler or heun over ``steps`` steps, or rk45 (adaptive; ``steps`` unused),
    then the latent scales undone."""
    process = FlowProcess(1 if sampler == "rk45" else steps, eps=eps)

    def model_fn(x, t, i):
        return flow(x, t)

    if sampler == "rk45":
        z, nfe = rk45(model_fn, noise, process, rtol, atol)
    else:
        z = S.sample(sampler, model_fn, noise, process, clip_x0=False, progress=progress)
        nfe = S.evaluations(sampler, steps)
    return flow.scaler.unscale(z), nfe


@torch.no_grad()
def generate(bundle, noise: tuple, sampler: str | None = None, steps: int | None = None,
             progress: bool | float = False) -> tuple:
    """(images (B, 3, H, W) in [-1, 1], evaluations per image) of a full checkpoint's Bundle from its noise (one
    tensor per latent, ``image_noise``); sampler and steps default to the checkpoint's sampling settings; progress
    as diffusion.samplers.run_steps."""
    s = bundle.cfg.sampling
    z, nfe = sample_latents(bundle.flow, noise, sampler or s.sampler, steps or s.steps, bundle.cfg.flow_training.eps,
                            s.rtol, s.atol, progress)
    return bundle.autoencoder.decode(list(z)).clamp(-1, 1), nfe
