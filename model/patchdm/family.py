"""The Patch-DM family as the registry (model/__init__.py) and the command lines see it."""

from __future__ import annotations

from configs import set_patch_size
from configs.patchdm import recipe_defaults
from runtime.cli import check_divisible
from runtime.errors import CLIError
from training import checkpoint as C
from ..common import TrainSpec
from .checkpoint import CODE_DDPM, DENOISER, FAMILY, LEGACY_READERS, bundle_of, denoiser_weights
from .generate import PatchDMGenerator
from .training import DenoiserTask

__all__ = ["FAMILY", "LEGACY_READERS", "bundle_of", "TRAIN", "GENERATOR", "export_weights", "card_facts", "example"]

GENERATOR = PatchDMGenerator  # what model.generator.Generator samples with

# train.py: each flag sets config fields: (field, value), where None means the flag's own value. A flag left out
# (None) sets nothing, so a resumed run keeps what it had (EDM2's flags-default-to-None pattern).
FLAGS = {
    "data_path": [("data.path", None)],
    "semantic_path": [("data.code_table", None), ("model.code_source", "table")],
    "semantic_enc": [("model.code_source", "encoder")],
    "no_code": [("model.code_source", "none")],
    "cfg": [("training.cfg", True)],
    "collage": [("model.collage", None)],
    "objective": [("diffusion.objective", None)],
    "no_position": [("model.use_position", False)],
    "batch_size": [("training.batch_size", None)],
    "max_steps": [("training.max_steps", None)],
    "precision": [("training.precision", None)],
    "checkpointing": [("training.checkpointing", True)],
    "checkpoint_levels": [("training.checkpoint_levels", None)],
    "workers": [("data.num_workers", None)],
    "save_every": [("training.save_every_samples", None)],
    "sample_every": [("training.sample_every_samples", None)],
    "patch_size": [],  # switches the architecture (prepare below)
}

# Settings a resumed run may change without --allow_change: how long and how it runs, not what it computes.
FREE_ON_RESUME = ("training.max_steps", "training.save_every_samples", "training.sample_every_samples",
                  "training.checkpointing", "training.checkpoint_levels", "data.num_workers", "data.path",
                  "data.code_table", "sampling", "latent")


def prepare(cfg, args):
    """What the flags cannot say by a field: one code source at most; --patch_size switches the architecture."""
    if sum(getattr(args, f) is not None for f in ("semantic_enc", "semantic_path", "no_code")) > 1:
        raise CLIError("--semantic_enc, --semantic_path and --no_code are mutually exclusive (encoder, code table "
                       "or no code)")
    if args.patch_size and args.patch_size != cfg.model.patch_size:
        set_patch_size(cfg, args.patch_size)


def check(cfg, args):
    check_divisible(cfg.data.image_size, cfg.model.patch_size, "training image size")


def task(cfg, run, d, device, resume, args):
    return DenoiserTask(cfg, run, d, device, resume, args.allow_upscale)


TRAIN = TrainSpec(FLAGS, FREE_ON_RESUME, "training.precision", DENOISER, task, prepare, check, recipe_defaults)


def export_weights(ck: dict, path, raw: bool) -> dict:
    """{network: state dict} that export.py writes: the weights ``bundle_of(ck, path, raw)`` samples with (in a full
    checkpoint, the denoiser weights its code DDPM learned the codes of), the code DDPM's where there is one."""
    out = {DENOISER: denoiser_weights(ck, raw, path)[0]}
    if CODE_DDPM in ck["networks"]:
        out[CODE_DDPM] = C.weights(ck, CODE_DDPM, raw, path)
    return out


def example(cfg, ck: dict) -> tuple:
    """(test.py flags, Generator call arguments) of the model card's example: codes of training images where there
    is no latent model to sample them."""
    if CODE_DDPM not in ck["networks"] and cfg.model.code_source == "table":
        return "--codes 0,1,2,3", "codes=[0, 1, 2, 3], seed=0"
    if CODE_DDPM not in ck["networks"] and cfg.model.code_source == "encoder":
        return "--codes a.png,b.png", "codes=['a.png', 'b.png'], seed=0"
    return "--img_num 16", "4, seed=0"


def card_facts(cfg, ck: dict) -> list:
    """(label, value) rows of the model card (export.py)."""
    m, d, rows = cfg.model, cfg.data, []
    source = {"table": "a code table", "encoder": "an image encoder", "none": "none (the no-code ablation)"}
    rows += [("objective", f"{cfg.diffusion.objective} ({cfg.diffusion.num_timesteps} diffusion steps)"),
             ("patch size", m.patch_size), ("semantic codes", f"{source[m.code_source]}, {m.code_dim} dims"),
             ("latent model", "yes (a full checkpoint: unconditional samples)" if CODE_DDPM in ck["networks"]
              else "no (sample with the codes of training images: --codes 0,1,2)"),
             ("sampling defaults", f"{cfg.sampling.image_size[0]}x{cfg.sampling.image_size[1]}, "
                                   f"{cfg.sampling.steps} steps, guidance {cfg.sampling.cfg_scale}"),
             ("training data", f"{d.path or 'not recorded'} at {d.image_size[0]}x{d.image_size[1]}"
                               + (f", code table {d.code_table}" if d.code_table else ""))]
    return rows
