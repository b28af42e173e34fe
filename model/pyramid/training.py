"""How the pyramid autoencoder trains, as a task of the shared loop (training/loop.py): train.py --config
pyramid_small. Every random draw of a step (the batch's images, the posterior samples, dropout) is a function of
(run seed, step, sample index), so a resumed run continues exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from configs.common import Recipe
from dataset import build_dataset
from runtime import dist as D
from runtime.data import check_stored_size
from runtime.files import save_grid
from runtime.images import View
from runtime.rng import rng, seed_for
from training import checkpoint as C
from training.batches import ImageBatches, every, local_batch
from training.loop import LoopSettings, Task
from training.recipe import EMASchedule, loop_recipe
from ..common import count_params
from .builders import build_autoencoder
from .checkpoint import AUTOENCODER, DISCRIMINATOR, FAMILY
from .losses import PatchDiscriminator, adaptive_weight, ae_terms, hinge_d_loss, lpips_from_file


def crop_view(image_size: tuple, crop: tuple, zoom: tuple, flip: bool, seed: int, step: int, k: int) -> View:
    """The view of sample k at ``step``: a region of zoom x the crop size (zoom uniform in [zoom[0], zoom[1]]) at a
    uniform position, brought to the crop size, mirrored with probability 1/2 when ``flip``; a function of (seed,
    step, k) only. crop (0, 0): the whole image."""
    h, w = image_size
    if tuple(crop) == (0, 0):
        return View(0, 0, h, w)
    u = torch.rand(4, generator=rng(seed, "crop", step, k)).tolist()
    z = zoom[0] + u[0] * (zoom[1] - zoom[0])
    ch, cw = min(h, round(crop[0] * z)), min(w, round(crop[1] * z))
    return View(int(u[1] * (h - ch + 1)), int(u[2] * (w - cw + 1)), ch, cw, tuple(crop), flip and u[3] < 0.5)


def posterior_noise(autoencoder, x: torch.Tensor, seed: int, step: int, first: int) -> list:
    """The noise that samples each latent's posterior for the images of a batch, image j (of the global batch) from
    its own generator: a function of (seed, step, j)."""
    noise = [torch.empty(x.shape[0], *s) for s in autoencoder.latent_shapes(*x.shape[-2:])]
    for i in range(x.shape[0]):
        g = rng(seed, "noise", step, first + i)
        for n in noise:
            n[i] = torch.randn(n.shape[1:], generator=g)
    return [n.to(x.device) for n in noise]


def loop_settings(t, log_every: int, desc: str, unit: str) -> LoopSettings:
    """The loop's settings from a training section of the family's config (ae_training, flow_training; the
    learning-rate and EMA schedules of a section that has the Recipe's fields)."""
    recipe = loop_recipe(t) if isinstance(t, Recipe) else dict(ema=EMASchedule(decay=t.ema_decay))
    return LoopSettings(max_steps=t.max_steps or 2_000_000_000 // t.batch_size, batch_size=t.batch_size,
                        save_every=every(t.save_every_samples, t.batch_size),
                        preview_every=every(t.sample_every_samples, t.batch_size), log_every=log_every,
                        grad_clip=t.grad_clip, precision=t.precision, desc=desc, unit=unit, **recipe)


class AutoencoderLoss(nn.Module):
    """The autoencoder plus its loss as one forward (DDP sees every parameter use): returns the per-image terms
    l1, kl (+ lpips, + gan once a discriminator is given). The last reconstruction is kept for the discriminator."""

    def __init__(self, autoencoder, kl_weight: float, lpips=None, lpips_weight: float = 1.0, disc=None,
                 disc_weight: float = 0.5):
        super().__init__()
        self.net, self.kl_weight, self.lpips, self.lpips_weight = autoencoder, kl_weight, lpips, lpips_weight
        self.disc, self.disc_weight, self.rec = disc, disc_weight, None

    def forward(self, x, noise, adversarial: bool = False) -> dict:
        rec, posts = self.net(x, noise)
        terms = ae_terms(x, rec, posts, self.kl_weight)
        if self.lpips is not None:
            terms["lpips"] = self.lpips_weight * self.lpips(rec.float(), x).flatten(1).mean(dim=1)
        if self.disc is not None:
            if adversarial:
                g = -self.disc(rec).mean()
                nll = sum(terms[k].mean() for k in ("l1", "lpips") if k in terms)
                w = adaptive_weight(nll, g, self.net.decoder.last_layer()) * self.disc_weight
                terms["gan"] = (w * g).expand(x.shape[0])
            else:
                terms["gan"] = torch.zeros(x.shape[0], device=x.device)
        self.rec = rec.detach()
        return terms


class AutoencoderTask(Task):
    """train.py --config pyramid_*: the pyramid autoencoder on the training images (one CPU/GPU or many under
    torchrun)."""

    name, family = AUTOENCODER, FAMILY

    def __init__(self, cfg, run: Path, d: D.Dist, device, resume=None, allow_upscale: bool = False):
        t = cfg.ae_training
        self.config, self.run, self.d, self.device = cfg, Path(run), d, device
        self.data = build_dataset(cfg.data.path, cfg.data)
        check_stored_size(self.data, cfg.data.image_size, cfg.name, allow_upscale)
        self.b_local = local_batch(t.batch_size, d)
        views = None if tuple(t.crop) == (0, 0) else (
            lambda s, k: crop_view(cfg.data.image_size, t.crop, t.crop_zoom, t.flip, t.seed, s, k))
        self.images = ImageBatches(self.data, self.b_local, t.seed, d, views, cfg.data.num_workers,
                                   device.type == "cuda")
        self.lpips = lpips_from_file(t.lpips_path).to(device) if t.lpips_path else None
        torch.manual_seed(t.seed)
        self.network = build_autoencoder(cfg.autoencoder).to(device)
        self.disc = self.disc_opt = None
        if t.disc_start >= 0:
            self.disc = PatchDiscriminator(t.disc_layers).to(device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=t.lr, betas=tuple(t.betas))
            if resume is not None:
                self.disc.load_state_dict(resume["networks"][DISCRIMINATOR]["raw"])
                self.disc_opt.load_state_dict(resume["extra"]["disc_opt"])
        self.fixed, self.module, self.disc_losses = None, None, []

    def settings(self, log_every: int) -> LoopSettings:
        return loop_settings(self.config.ae_training, log_every, "autoencoder", "images")

    def optimizer(self):
        t = self.config.ae_training
        return torch.optim.Adam(self.network.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)

    def loss_module(self):
        t = self.config.ae_training
        self.module = AutoencoderLoss(self.network, t.kl_weight, self.lpips, t.lpips_weight, self.disc, t.disc_weight)
        return self.module

    def batch(self, step: int):
        cfg, d = self.config, self.d
        x, _, events = self.images.at(step)
        x = x.to(self.device, non_blocking=True)
        if self.fixed is None:
            self.fixed = x[:4].clone()
        noise = posterior_noise(self.network, x, cfg.ae_training.seed, step, d.rank * self.b_local)
        torch.manual_seed(seed_for(cfg.ae_training.seed, "dropout", step, d.rank))
        start = cfg.ae_training.disc_start
        return dict(x=x, noise=noise, adversarial=0 <= start <= step), events

    def after_step(self, batch) -> None:
        """The discriminator's hinge step on the batch and its reconstruction, once the GAN has started."""
        if self.disc is None or not batch["adversarial"]:
            return
        self.disc.train()
        loss = hinge_d_loss(self.disc(batch["x"]), self.disc(self.module.rec))
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()
        self.disc_losses.append(loss.detach())

    def row_extra(self) -> dict:
        extra = self.images.row_extra()
        if self.disc_losses:
            extra["disc"], self.disc_losses = torch.stack(self.disc_losses).mean().item(), []
        return extra

    @torch.no_grad()
    def preview(self, ema_network, step: int):
        """The fixed images (top row) and their reconstructions by the EMA weights (bottom row)."""
        rec = ema_network.decode([p.mean for p in ema_network.encode(self.fixed)])
        save_grid(torch.cat([self.fixed, rec.clamp(-1, 1)]).float(), self.run / "samples" / f"{step:07d}.png",
                  ncol=len(self.fixed))

    def describe(self, start: int) -> str:
        a = self.config.autoencoder
        return (f"run {self.run}: {len(self.data)} images, pyramid autoencoder of {count_params(self.network):,} "
                f"parameters, latents at levels {list(a.latent_levels)} with {list(a.latent_channels)} channels, "
                f"{self.config.ae_training.precision}, {self.d.world} process(es), from step {start}")

    def checkpoint_base(self) -> dict:
        networks, extra = {}, {}
        if self.disc is not None:
            networks[DISCRIMINATOR] = C.network_entry(self.disc.state_dict(), None)
            extra["disc_opt"] = self.disc_opt.state_dict()
        return C.make(FAMILY, self.config_dict(), networks, extra=extra)
