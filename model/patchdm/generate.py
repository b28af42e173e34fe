"""Patch-DM's image generation as the Python API (``generator.Generator``) and test.py use it: the networks placed
once on a device in a precision, then a ``Plan`` per set of settings, whose ``make(ks)`` gives images ks.

Image k is drawn from its own seed (seed, k) (``per_image_noise``), so it does not depend on the batch it is made
in (up to float rounding across batch sizes) or on who asks: test.py writes exactly the images the API returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dataset import geometric_transform
from runtime.cli import check_divisible, parse_hw
from runtime.device import autocast
from runtime.errors import CLIError
from runtime.images import read_rgb
from .cli import check_sampler, parse_bands, seamless_option
from .denoiser import CanvasOptions, Denoiser
from .fast import cast_weights, speed_up
from .paint import paint
from .sampling import bundle_codes, per_image_noise, sample_canvas, sampling_process
from .seamless import evaluations as seamless_evaluations

# The settings a Patch-DM plan takes beyond those every family takes (seed, image_size, sampler, steps), with the
# value meaning "not given".
OPTIONS = {"codes": None, "cfg_scale": None, "latent_sampler": "ddim", "latent_steps": None, "wrap": "",
           "bands": "auto", "seamless": None, "seamless_views": None, "seamless_below": None}


def code_items(codes) -> list:
    """The items of ``codes`` as strings: 'I,J,...' / 'a.png,b.png', or a sequence of indices or paths."""
    items = codes.split(",") if isinstance(codes, str) else [str(c) for c in codes]
    return [s.strip() for s in items if s.strip()]


def given_codes(codes, net, cfg) -> torch.Tensor:
    """(n, D) semantic codes: table rows by index, the image encoder applied to image files, or a tensor given as
    is."""
    if cfg.model.code_source == "none":
        raise CLIError("--codes: this model was trained without semantic codes (--no_code); leave --codes out")
    if isinstance(codes, torch.Tensor):
        if codes.ndim != 2 or codes.shape[1] != cfg.model.code_dim:
            raise CLIError(f"codes: a tensor of shape (n, {cfg.model.code_dim}) is needed, got {tuple(codes.shape)}")
        return codes.detach().float().cpu()
    items = code_items(codes)
    if not items:
        raise CLIError("--codes is empty: give training-image indices (0,3,5) or image files (a.png,b.png)")
    if all(s.lstrip("-").isdigit() for s in items):
        if not getattr(net, "uses_table", False):
            raise CLIError("--codes with indices needs a code-table model; this one has an image encoder: give "
                           "image files (--codes a.png,b.png)")
        rows = net.code_source.weight.shape[0]
        bad = [s for s in items if not 0 <= int(s) < rows]
        if bad:
            raise CLIError(f"--codes {bad[0]}: the code table has {rows} rows (0..{rows - 1})")
        with torch.no_grad():
            return net.codes(None, torch.tensor([int(s) for s in items], device=net.code_source.weight.device)) \
                .float().cpu()
    if getattr(net, "uses_table", False):
        raise CLIError(f"--codes {items[0]!r}: a code-table model takes training-image indices (--codes 0,3,5)")
    shape = geometric_transform(cfg.data.transform, cfg.data.image_size, cfg.data.resize)
    x = torch.stack([read_rgb(s, shape) for s in items])
    device = next(net.parameters()).device
    with torch.no_grad():
        return net.codes(x.to(device), None).float().cpu()


class PatchDMGenerator:
    """A Patch-DM Bundle ready to sample: the U-Net cast to ``precision`` and optionally compiled, every network on
    ``device``. ``plan(...)`` checks a set of settings (one-line errors) and returns the Plan that makes images."""

    @staticmethod
    def check(ck: dict, path) -> None:
        """Every Patch-DM checkpoint can generate (one without a latent model from given codes)."""

    def __init__(self, bundle, device, precision: str, compile: str = "none", compile_scope: str = "blocks",
                 cast: bool = True):
        self.bundle, self.device, self.precision = bundle, torch.device(device), precision
        self.cfg, self.cast = bundle.cfg, cast and precision != "fp32"
        # cast_weights: the same function in less memory
        net = bundle.net.to(self.device)
        self.unet = speed_up(cast_weights(net, precision) if cast else net, compile, scope=compile_scope)
        self.latent = None if self.cfg.model.code_source == "none" or bundle.latent is None \
            else bundle.latent.to(self.device)

    def paint(self, mode: str, image, **settings):
        """In- or outpainting results (model/patchdm/paint.py ``paint``), one by one."""
        return paint(self, mode, image, **settings)

    def plan(self, seed: int = 0, image_size=None, sampler: str | None = None, steps: int | None = None,
             batch_size: int = 1, **options) -> "Plan":
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise CLIError(f"{unknown[0]}: not a setting of Patch-DM generation (it takes seed, image_size, sampler, "
                           f"steps, batch_size, {', '.join(OPTIONS)})")
        o = {**OPTIONS, **options}
        cfg = self.cfg
        if sampler == "rk45":
            raise CLIError("--sampler rk45 is for pyramid full checkpoints; Patch-DM samples its canvas with ddim, "
                           "euler, heun, dpmpp2m or dpmpp3m")
        if self.latent is None and cfg.model.code_source != "none" and o["codes"] is None:
            raise CLIError("this Patch-DM checkpoint has no latent model; run train_latent.py on it first, or sample "
                           "with the codes of training images (--codes 0,1,2)")
        fixed = given_codes(o["codes"], self.unet, cfg) if o["codes"] is not None else None
        p = cfg.model.patch_size
        hw = parse_hw(image_size) if isinstance(image_size, str) else tuple(image_size or cfg.sampling.image_size)
        check_divisible(hw, p)
        steps = steps if steps is not None else cfg.sampling.steps
        latent_steps = o["latent_steps"] if o["latent_steps"] is not None else cfg.sampling.latent_steps
        w = cfg.sampling.cfg_scale if o["cfg_scale"] is None else o["cfg_scale"]
        sampler = check_sampler(sampler, cfg.diffusion.objective, steps, cfg.diffusion.num_timesteps)
        check_sampler(o["latent_sampler"], cfg.latent.objective, latent_steps, cfg.latent.num_timesteps)
        band_rows, band_cols = parse_bands(o["bands"], batch_size * (2 if w else 1), hw, p)
        seamless = seamless_option(cfg.sampling, cfg.model.collage, o["seamless"], o["seamless_views"],
                                   o["seamless_below"])
        opts = CanvasOptions(w, band_rows, band_cols, o["wrap"], seed, cfg.sampling.clip_x0, in_place=True,
                             seamless=seamless)
        return Plan(self, seed, hw, sampler, steps, o["latent_sampler"], latent_steps, fixed, o["codes"], opts,
                    sampling_process(cfg.diffusion, sampler, steps))


@dataclass
class Plan:
    """Checked settings of one generation: ``make(ks)`` gives images ks, (len(ks), 3, H, W) in [-1, 1] on the CPU;
    ``describe()`` says in one line what is made; ``settings()`` the values a table row needs (generation.json)."""
    gen: PatchDMGenerator
    seed: int
    hw: tuple
    sampler: str
    steps: int
    latent_sampler: str
    latent_steps: int
    fixed: torch.Tensor | None
    codes: object
    opts: CanvasOptions
    process: object
    step_bar: bool | float = False  # a bar over the steps of a batch (run_steps' progress)

    def make(self, ks) -> torch.Tensor:
        g, cfg = self.gen, self.gen.cfg
        z_T, x_T = zip(*(per_image_noise(self.seed, k, cfg.model.code_dim, self.hw) for k in ks))
        if self.fixed is not None:
            code = self.fixed[[k % len(self.fixed) for k in ks]].to(g.device)
        elif g.latent is None:  # the no-code ablation: the zero code
            code = torch.zeros(len(ks), cfg.model.code_dim, device=g.device)
        else:
            code = bundle_codes(g.bundle, torch.stack(z_T).to(g.device), self.latent_steps, self.latent_sampler)
        with torch.no_grad(), autocast(g.device, g.precision):
            x = sample_canvas(Denoiser(g.unet, cfg.model.patch_size, cfg.model.collage), torch.stack(x_T).to(g.device),
                              code, self.process, self.sampler, self.opts, progress=self.step_bar)
        return x.float().cpu()

    @property
    def default_images(self) -> int:
        """One image per given code, else one."""
        return len(self.fixed) if self.fixed is not None else 1

    def codes_text(self) -> str:
        return "a tensor" if isinstance(self.codes, torch.Tensor) else ",".join(code_items(self.codes))

    def uses_latent(self) -> bool:
        return self.fixed is None and self.gen.latent is not None

    def describe(self) -> str:
        cfg, s = self.gen.cfg, self.opts.seamless
        name = {"ddim": "DDIM", "euler": "Euler"}.get(self.sampler, self.sampler)
        nfe = seamless_evaluations(s, self.process, self.sampler)
        return (f"{self.hw[0]}x{self.hw[1]} images, {cfg.diffusion.objective} model, {self.steps} {name} steps"
                + (f" ({nfe} evaluations)" if nfe != self.steps else "")
                + (f" after {self.latent_steps} latent steps" if self.uses_latent() else "")
                + (f", codes {self.codes_text()}" if self.fixed is not None else "")
                + (f", seamless {s.method}" + (f" x{s.views}" if s.views > 1 else "") + f" below sigma/alpha {s.below:g}"
                   if s else "")
                + f", guidance {self.opts.cfg_scale}, {self.gen.precision}")

    def summary(self) -> str:
        """What the run chose that was not known before it ('' here: Patch-DM's samplers take fixed steps)."""
        return ""

    def settings(self) -> dict:
        s = self.opts.seamless
        return {"image_size": list(self.hw), "sampler": self.sampler, "steps": self.steps,
                "guidance": self.opts.cfg_scale, "seed": self.seed, "precision": self.gen.precision,
                "codes": None if self.fixed is None else self.codes_text(),
                "latent_sampler": self.latent_sampler if self.uses_latent() else None,
                "latent_steps": self.latent_steps if self.uses_latent() else None,
                "wrap": self.opts.wrap, "seamless": None if s is None else
                {"method": s.method, "views": s.views, "below": s.below}}

