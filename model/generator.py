"""Generate images from Python with any trained model of this project: a checkpoint file (``last.pt``, a snapshot, a
full checkpoint, an official file) or a folder written by export.py. test.py is a command line over this class, so
image k for seed s is the same PNG as the one test.py writes.

    from model.generator import Generator

    gen = Generator("runs/v_latent/checkpoints/last.pt", device="cpu")    # or an exported folder
    images = gen(4, seed=0)                                  # 4 PIL images: test.py's 0.png .. 3.png
    images[0].save("0.png")
    wide = gen([7], seed=1, image_size="128x512", steps=20, sampler="dpmpp2m")   # image 7 of seed 1, wider
    cond = gen(seed=0, codes=[0, 3])                         # Patch-DM: the codes of training images 0 and 3
    x = gen(2, output="tensor")                              # (2, 3, H, W) in [-1, 1]

Settings every family takes: ``seed``, ``image_size`` ('HxW' or (H, W)), ``sampler``, ``steps``, ``batch_size``
(images per forward; the images do not depend on it beyond float rounding). Patch-DM also takes ``codes`` (training-
image indices, image files, or an (n, D) tensor), ``cfg_scale``, ``latent_sampler``, ``latent_steps``, ``wrap``,
``bands``, ``seamless``, ``seamless_views``, ``seamless_below`` (as test.py's flags of those names). Defaults are
the checkpoint's sampling config. Bad settings raise ``runtime.errors.UserError`` (one line, before any work).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import torch
from tqdm import tqdm

from runtime.device import check_precision, pick_device, sampling_precision
from runtime.errors import CLIError
from runtime.files import to_pil
from . import FAMILIES, bundle_of, read

OUTPUTS = ("pil", "tensor")
STEP_BAR_AFTER = 10.0  # seconds: a batch that takes longer shows a bar over its sampler steps
ROOT = Path(__file__).resolve().parents[1]


def project_commit() -> str | None:
    """The git commit of this project's code (with '+changes' when the work tree differs), None outside git."""
    def run(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class Generator:
    """A trained model ready to generate: ``Generator(path)`` loads it (EMA weights unless ``raw``) onto ``device``
    (default CUDA when present) in ``precision`` (default bf16 on GPUs, fp32 on the CPU; the weights of the layers
    autocast runs in half precision are stored so unless ``cast_weights=False``); calling it makes images."""

    def __init__(self, path, *, raw: bool = False, device=None, precision: str | None = None,
                 compile: str = "none", compile_scope: str = "blocks", cast_weights: bool = True,
                 purpose: str = "plan"):
        self.path = Path(path)
        ck = read(path)
        exported = ck["extra"].get("export")
        if exported:  # an exported folder holds one set of weights
            if raw and exported["weights"] != "raw":
                raise CLIError(f"{path} holds the EMA weights only (export.py --raw exports the raw ones); drop raw")
            raw = exported["weights"] == "raw"
        self.family, self.raw = ck["family"], raw
        self.networks = {name: {"step": e["step"], "samples": e["samples"]} for name, e in ck["networks"].items()}
        # the first network's (Patch-DM's denoiser, the pyramid's autoencoder), as a file and its export both list them
        first = self.networks[next(iter(self.networks))]
        self.step, self.samples = first["step"], first["samples"]
        family = FAMILIES.get(self.family)
        if family is not None:  # (bundle_of names an unknown one)
            if not hasattr(family.GENERATOR, purpose):  # before anything is built (or warned about)
                able = " or ".join(n for n, f in FAMILIES.items() if hasattr(f.GENERATOR, purpose))
                raise CLIError(f"{path} is a {self.family} checkpoint; only {able} checkpoints can {purpose}")
            family.GENERATOR.check(ck, path)
        bundle = bundle_of(ck, path, raw)
        self.cfg = bundle.cfg
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.precision = check_precision(precision or sampling_precision(self.device), self.device)
        self.impl = family.GENERATOR(bundle, self.device, self.precision, compile, compile_scope, cast_weights)
        self._hash = None

    def plan(self, seed: int = 0, batch_size: int = 1, **settings):
        """The family's Plan of these settings (checked, one-line errors): ``make(ks)``, ``describe()``,
        ``settings()``."""
        return self.impl.plan(seed=seed, batch_size=batch_size, **settings)

    def __call__(self, images=None, *, seed: int = 0, batch_size: int = 1, output: str = "pil",
                 progress: bool = False, **settings):
        """Images ``images`` (a count n for images 0..n-1, or a list of image numbers; default one per given code, or
        one) of ``seed``: a list of PIL images, or with ``output='tensor'`` one (n, 3, H, W) tensor in [-1, 1].
        ``progress``: a bar over the batches, and over the steps of a batch that takes longer than 10 s."""
        if output not in OUTPUTS:
            raise CLIError(f"output {output!r}: choose pil or tensor")
        plan = self.plan(seed=seed, batch_size=batch_size, **settings)
        plan.step_bar = STEP_BAR_AFTER if progress else False
        images = plan.default_images if images is None else images
        ks = list(range(images)) if isinstance(images, int) else [int(k) for k in images]
        if not ks or min(ks) < 0:
            raise CLIError(f"images {images!r}: give a positive count or a list of image numbers >= 0")
        out = []
        for start in tqdm(range(0, len(ks), batch_size), desc="generate", unit="batch", disable=not progress):
            out.append(plan.make(ks[start:start + batch_size]))
        x = torch.cat(out)
        return x if output == "tensor" else [to_pil(img) for img in x]

    def paint(self, mode: str, image, *, output: str = "pil", **settings):
        """Patch-DM in- or outpainting (paint.py's modes and flags as keywords: mask, canvas, place, num, seed, code,
        fit_steps, fit_lr, resample, sampler, steps, cfg_scale, wrap, bands, seamless...): a list of PIL images, or
        tensors (3, h, w) in [-1, 1]; result k is paint.py's NAME_k.png.

            gen.paint("inpaint", "photo.png", mask="hole.png", num=2)
            gen.paint("outpaint", "photo.png", canvas="512x2048", place="0,0", wrap="x")
        """
        if not hasattr(self.impl, "paint"):
            raise CLIError(f"{self.path} is a {self.family} checkpoint; only patchdm checkpoints can paint")
        if output not in OUTPUTS:
            raise CLIError(f"output {output!r}: choose pil or tensor")
        return [x if output == "tensor" else to_pil(x) for x in self.impl.paint(mode, image, **settings)]

    def checkpoint_hash(self) -> str:
        """sha256 of the checkpoint file (of an exported folder: of its weights file), computed once."""
        if self._hash is None:
            target = self.path / "model.safetensors" if self.path.is_dir() else self.path
            h = hashlib.sha256()
            with open(target, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._hash = h.hexdigest()
        return self._hash

    def record(self, plan) -> dict:
        """How images of ``plan`` were made, for generation.json: the checkpoint and its training, the weights and
        the plan's settings."""
        return {"checkpoint": str(self.path), "checkpoint_sha256": self.checkpoint_hash(), "family": self.family,
                "preset": self.cfg.name, "step": self.step, "samples": self.samples, "networks": self.networks,
               
                "weights": "raw" if self.raw else "ema", "device": str(self.device), **plan.settings(),
                "commit": project_commit()}
