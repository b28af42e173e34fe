"""The Pyramid Diffusion Model family as the registry (model/__init__.py) and the command lines see it."""

from __future__ import annotations

from training import checkpoint as C
from ..common import TrainSpec
from .checkpoint import AUTOENCODER, FAMILY, FLOW, LEGACY_READERS, bundle_of
from .generate import PyramidGenerator
from .training import AutoencoderTask

__all__ = ["FAMILY", "LEGACY_READERS", "bundle_of", "TRAIN", "GENERATOR", "export_weights", "card_facts", "example"]

GENERATOR = PyramidGenerator  # what model.generator.Generator samples with

# train.py flags of the autoencoder (field, value or None for the flag's own value); a flag left out sets nothing.
FLAGS = {
    "data_path": [("data.path", None)],
    "batch_size": [("ae_training.batch_size", None)],
    "max_steps": [("ae_training.max_steps", None)],
    "precision": [("ae_training.precision", None)],
    "workers": [("data.num_workers", None)],
    "save_every": [("ae_training.save_every_samples", None)],
    "sample_every": [("ae_training.sample_every_samples", None)],
    "lpips": [("ae_training.lpips_path", None)],
    "gan_from": [("ae_training.disc_start", None)],
}

FREE_ON_RESUME = ("ae_training.max_steps", "ae_training.save_every_samples", "ae_training.sample_every_samples",
                  "data.num_workers", "data.path", "sampling")


def task(cfg, run, d, device, resume, args):
    return AutoencoderTask(cfg, run, d, device, resume, args.allow_upscale)


TRAIN = TrainSpec(FLAGS, FREE_ON_RESUME, "ae_training.precision", AUTOENCODER, task)


def export_weights(ck: dict, path, raw: bool) -> dict:
    """{network: state dict} that export.py writes: the autoencoder's and, in a full checkpoint, the flow model's
    (the discriminator only trains)."""
    return {name: C.weights(ck, name, raw, path) for name in (AUTOENCODER, FLOW) if name in ck["networks"]}


def example(cfg, ck: dict) -> tuple:
    """(test.py flags, Generator call arguments) of the model card's example."""
    return "--img_num 16", "4, seed=0"


def card_facts(cfg, ck: dict) -> list:
    """(label, value) rows of the model card (export.py)."""
    s, d = cfg.sampling, cfg.data
    return [("objective", "latent rectified flow (velocity)" if FLOW in ck["networks"] else
             "autoencoder only (no flow model yet: reconstructions, test.py --reconstruct)"),
            ("latents", f"{len(cfg.autoencoder.latent_levels)} (channels {list(cfg.autoencoder.latent_channels)}, at "
                        f"1/{', 1/'.join(str(2 ** lv) for lv in cfg.autoencoder.latent_levels)} of the image)"),
            ("sampling defaults", f"{s.image_size[0]}x{s.image_size[1]}, {s.sampler}, {s.steps} steps"),
            ("training data", f"{d.path or 'not recorded'} at {d.image_size[0]}x{d.image_size[1]}")]
