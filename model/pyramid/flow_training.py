"""How the flow network trains, as a task of the shared loop (training/loop.py): train_latent.py -m AE_CHECKPOINT on
a pyramid autoencoder.

The training images are encoded once, whole, at the autoencoder's sampling size (and mirrored, with
flow_training.flip): each step draws images and a sample of each one's posterior (the paper's z1 is a posterior
sample), a time and noise per image. Every draw is a function of (run seed, step, sample index), so a resumed run
continues exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from dataset import build_dataset
from diffusion.flow import FlowProcess
from diffusion.weighting import TimeRecipe
from runtime import dist as D
from runtime.data import check_stored_size
from runtime.files import save_grid
from runtime.images import View
from runtime.rng import rng, seed_for
from training import checkpoint as C
from training.batches import local_batch
from training.loop import LoopSettings, Task
from training.recipe import adam
from ..common import count_params
from .builders import build_flow
from .checkpoint import AUTOENCODER, FAMILY, FLOW
from .flow import FlowLoss
from .sampling import image_noise, sample_latents, shapes_text
from .training import loop_settings

PREVIEW_STEPS = 50  # Euler steps of the training previews


@torch.no_grad()
def encode_images(autoencoder, data, stored: tuple, size: tuple, flip: bool, device, batch: int = 16) -> tuple:
    """The posterior (means, stds) of every training image (stored at ``stored``) brought whole to ``size`` (and of
    its mirror image when ``flip``): two lists with one (N, C, h, w) tensor per latent, on ``device``."""
    h, w = stored
    items = [(k, View(0, 0, h, w, tuple(size), m)) for m in ((False, True) if flip else (False,))
             for k in range(len(data))]
    means, stds = [], []
    for start in tqdm(range(0, len(items), batch), desc="encode", unit="batch", leave=False):
        x = torch.stack([data[item][0] for item in items[start:start + batch]]).to(device)
        posts = autoencoder.encode(x)
        means.append([p.mean for p in posts])
        stds.append([p.std for p in posts])
    return [torch.cat(m) for m in zip(*means)], [torch.cat(s) for s in zip(*stds)]


class FlowTask(Task):
    """train_latent.py on a pyramid autoencoder: the Pyramid NCSN++ by latent rectified flow."""

    name, family = FLOW, FAMILY

    def __init__(self, cfg, run: Path, d: D.Dist, device, autoencoder, ae_entry: dict, source: str,
                 allow_upscale: bool = False):
        t = cfg.flow_training
        self.config, self.run, self.d, self.device = cfg, Path(run), d, device
        self.autoencoder, self.ae_entry, self.source = autoencoder.to(device).eval(), ae_entry, source
        data = build_dataset(cfg.data.path, cfg.data)
        check_stored_size(data, cfg.data.image_size, cfg.name, allow_upscale)
        self.size = tuple(cfg.sampling.image_size)
        self.means, self.stds = encode_images(self.autoencoder, data, tuple(cfg.data.image_size), self.size, t.flip,
                                               device)
        self.n_images = len(data)
        self.b_local = local_batch(t.batch_size, d)
        self.process = FlowProcess(eps=t.eps)
        torch.manual_seed(t.seed)
        self.network = build_flow(cfg).to(device)
        self.module = None

    def settings(self, log_every: int) -> LoopSettings:
        return loop_settings(self.config.flow_training, log_every, "flow", "latents")

    def optimizer(self):
        return adam(self.network.parameters(), self.config.flow_training)

    def loss_module(self):
        self.module = FlowLoss(self.network, self.process, TimeRecipe.of(self.config.flow_training))
        return self.module

    def batch(self, step: int):
        """This rank's slice of the global batch of ``step``: images, posterior samples, times and noise."""
        t, b = self.config.flow_training, self.config.flow_training.batch_size
        lo = self.d.rank * self.b_local
        rows = slice(lo, lo + self.b_local)
        index = torch.randint(len(self.means[0]), (b,), generator=rng(t.seed, "image", step))[rows].to(self.device)
        g_post, g_noise = rng(t.seed, "noise", step), rng(t.seed, "latent", step)
        z = tuple(m[index] + s[index] * torch.randn((b, *m.shape[1:]), generator=g_post)[rows].to(self.device)
                  for m, s in zip(self.means, self.stds))
        noise = tuple(torch.randn((b, *m.shape[1:]), generator=g_noise)[rows].to(self.device) for m in self.means)
        times = TimeRecipe.of(t).draw(self.process, b, rng(t.seed, "timesteps", step))[rows].to(self.device)
        torch.manual_seed(seed_for(t.seed, "dropout", step, self.d.rank))
        return dict(z=z, t=times, noise=noise), []

    def quartile(self, batch) -> torch.Tensor:
        return (batch["t"] * 4).long().clamp(max=3)

    def row_extra(self) -> dict:
        return {f"std{i}": float(s) for i, s in enumerate(self.network.scaler.std)}

    @torch.no_grad()
    def preview(self, ema_network, step: int):
        """Four samples of the EMA flow model (Euler, PREVIEW_STEPS steps, fixed noise), decoded."""
        ema_network.eval()
        shapes = self.autoencoder.latent_shapes(*self.size)
        noise = [image_noise(self.config.flow_training.seed, k, shapes) for k in range(4)]
        noise = tuple(torch.stack(n).to(self.device) for n in zip(*noise))
        z, _ = sample_latents(ema_network, noise, "euler", PREVIEW_STEPS, self.config.flow_training.eps)
        img = self.autoencoder.decode(list(z)).clamp(-1, 1)
        save_grid(img.float(), self.run / "samples" / f"{step:07d}.png", ncol=4)

    def describe(self, start: int) -> str:
        shapes = self.autoencoder.latent_shapes(*self.size)
        return (f"run {self.run}: {self.n_images} images ({len(self.means[0])} with mirrors) encoded by {self.source} "
                f"to latents {shapes_text(shapes)}; Pyramid NCSN++ of "
                f"{count_params(self.network):,} parameters, {self.config.flow_training.precision}, "
                f"{self.d.world} process(es), from step {start}")

    def checkpoint_base(self) -> dict:
        """A full checkpoint: the autoencoder's entry as it was read, beside the flow model the loop adds."""
        return C.make(FAMILY, self.config_dict(), {AUTOENCODER: self.ae_entry})
