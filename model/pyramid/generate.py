"""The pyramid family's image generation as the Python API (``generator.Generator``) and test.py use it: noise ->
the flow model's latents (euler, heun or rk45) -> the decoder's images, image k from its own seed (seed, k)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from runtime.cli import check_divisible, parse_hw
from runtime.device import autocast
from runtime.errors import CLIError
from .checkpoint import FLOW
from .sampling import generate, image_noise, shapes_text

SAMPLERS = ("euler", "heun", "rk45")


class PyramidGenerator:
    """A pyramid full checkpoint's Bundle on ``device``; ``plan(...)`` checks settings and returns the Plan."""

    @staticmethod
    def check(ck: dict, path) -> None:
        """Refuse, before anything is built, a checkpoint that cannot generate."""
        if FLOW not in ck["networks"]:
            raise CLIError(f"{path} is a pyramid autoencoder checkpoint: run train_latent.py -m {path} for a flow "
                           "model to sample with, or give --reconstruct DIR to reconstruct images with it")

    def __init__(self, bundle, device, precision: str, compile: str = "none", compile_scope: str = "blocks",
                 cast: bool = True):
        if compile != "none":
            raise CLIError("--compile is a Patch-DM option; a pyramid checkpoint samples eagerly")
        self.bundle, self.device, self.precision, self.cfg = bundle, torch.device(device), precision, bundle.cfg
        bundle.autoencoder.to(self.device)
        bundle.flow.to(self.device)

    def plan(self, seed: int = 0, image_size=None, sampler: str | None = None, steps: int | None = None,
             batch_size: int = 1, **options) -> "Plan":
        if options:
            raise CLIError(f"--{sorted(options)[0]} is a Patch-DM option; a pyramid checkpoint takes --sampler, "
                           "--steps, --image_size, --seed, --batch_size, --precision and --raw")
        cfg, s = self.cfg, self.cfg.sampling
        sampler = sampler or s.sampler
        if sampler not in SAMPLERS:
            raise CLIError(f"--sampler {sampler}: a pyramid flow model samples with euler, heun or rk45")
        steps = steps if steps is not None else s.steps
        hw = parse_hw(image_size) if isinstance(image_size, str) else tuple(image_size or s.image_size)
        check_divisible(hw, 2 ** (len(cfg.autoencoder.channel_mult) - 1), "image size")
        return Plan(self, seed, hw, sampler, steps, self.bundle.autoencoder.latent_shapes(*hw))


@dataclass
class Plan:
    """Checked settings: ``make(ks)`` gives images ks, (len(ks), 3, H, W) in [-1, 1] on the CPU; ``nfes`` the
    evaluations each batch took (rk45 chooses its own)."""
    gen: PyramidGenerator
    seed: int
    hw: tuple
    sampler: str
    steps: int
    shapes: list
    nfes: list = field(default_factory=list)
    default_images: int = 1
    step_bar: bool | float = False  # a bar over the steps of a batch (run_steps' progress)

    def make(self, ks) -> torch.Tensor:
        g = self.gen
        noise = tuple(torch.stack(n).to(g.device) for n in zip(*(image_noise(self.seed, k, self.shapes) for k in ks)))
        with autocast(g.device, g.precision):
            img, nfe = generate(g.bundle, noise, self.sampler, self.steps, self.step_bar)
        self.nfes.append(nfe)
        return img.float().cpu()

    def describe(self) -> str:
        return (f"{self.hw[0]}x{self.hw[1]} images from latents {shapes_text(self.shapes)}, "
                + ("rk45 (adaptive)" if self.sampler == "rk45" else f"{self.steps} {self.sampler} steps")
                + f", {self.gen.precision}")

    def summary(self) -> str:
        """What rk45 chose, once images were made ('' otherwise)."""
        n = self.nfes
        return (f"; rk45 used {sum(n) / len(n):.1f} evaluations per batch (min {min(n)}, max {max(n)})"
                if self.sampler == "rk45" and n else "")

    def settings(self) -> dict:
        return {"image_size": list(self.hw), "sampler": self.sampler, "steps": None if self.sampler == "rk45"
                else self.steps, "seed": self.seed, "precision": self.gen.precision}

