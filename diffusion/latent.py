"""The latent DDPM over semantic codes: its L1 loss and its sampler (docs/FAITHFULNESS.md, "Latent DDPM")."""

from __future__ import annotations

import torch

from .samplers import ddim, run_steps
from .schedule import Schedule, latent_schedule


@torch.no_grad()
def ddim_sample_latent(latent_net, z_T: torch.Tensor, steps: int = 50, schedule: Schedule | None = None,
                       progress: bool = False, sampler: str = "ddim") -> torch.Tensor:
    """DDIM (eta 0, no clipping; or a multistep solver of diffusion/solvers.py) through the latent MLP with its own
    schedule: z_T (B, D) -> codes (B, D)."""
    sched = schedule or latent_schedule()
    if sampler == "ddim":
        return ddim(latent_net, z_T, sched.respace(steps), clip_x0=False, progress=progress)
    from .solvers import make_update, spacing, supported
    why = supported(sampler, sched.objective)
    if why:
        raise ValueError(why)
    sched = sched.respace(steps, spacing(sampler))
    return run_steps(make_update(sampler, latent_net, sched=sched, clip_x0=False), z_T, sched, progress)


def latent_loss(latent_net, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                schedule: Schedule | None = None) -> torch.Tensor:
    """Latent DDPM loss: L1 between the schedule's target (eps, the paper's; or v) and the MLP's prediction, mean
    over dims then batch."""
    sched = schedule or latent_schedule()
    z_t = sched.corrupt(z0, t, noise)
    return (sched.target(z0, t, noise) - latent_net(z_t, t).float()).abs().mean()
