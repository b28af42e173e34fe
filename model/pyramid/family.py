"""The Pyramid Diffusion Model family as the registry (model/__init__.py) and the command lines see it."""

from __future__ import annotations

from ..common import TrainSpec
from .checkpoint import AUTOENCODER, FAMILY, LEGACY_READERS, bundle_of
from .training import AutoencoderTask

__all__ = ["FAMILY", "LEGACY_READERS", "bundle_of", "TRAIN"]

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
