"""Checkpoint files: ``load(path)`` gives the one Bundle every script samples with, whatever the file.

Formats that load (everywhere a checkpoint is taken):
  patchdm-train-v1   train.py's last.pt: {format, config, step, samples, num_codes, model (raw), ema, opt, scaler}
  patchdm-full-v1    train_latent.py's last.pt: the latent MLP (latent = EMA, latent_raw) and the Patch-DM weights its
                     codes came from (patch_model, which = patch_weights); since this version also patch_model_raw
                     and patch_step. Older full files without them still load (no --raw for their U-Net).
  official           a Lightning file of the official code (model. / ema_model. weights, optionally latent_net.),
                     converted once, at load, into the train (or full) dict above.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from configs import from_dict, get_preset, set_patch_size, to_dict
from .safe_load import CheckpointError, read_checkpoint

TRAIN_FORMAT = "patchdm-train-v1"
FULL_FORMAT = "patchdm-full-v1"
TABLE_KEY = "encoder.semantic_enc.weight"


def load_code_table(path) -> torch.Tensor:
    """The [N, D] table of an initialize.py file ({'model_state_dict': {'semantic_enc.weight': T}}, the official
    layout), of {'semantic_enc.weight': T}, or a bare tensor."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if isinstance(obj, dict):
        obj = obj.get("semantic_enc.weight", obj.get(TABLE_KEY))
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        raise CheckpointError(f"{path} holds no [N, D] code table (expected {{'model_state_dict': "
                       "{'semantic_enc.weight': tensor}}, as initialize.py writes)")
    return obj.float()


def official_config(loaded):
    """A config describing an official checkpoint's architecture (the nature preset's other settings)."""
    cfg = set_patch_size(get_preset("nature"), loaded.patch_size)
    cfg.model.code_source = "table" if loaded.encoder is None else "encoder"
    if loaded.latent_net is not None:
        lat = loaded.latent_net
        cfg.latent.hidden, cfg.latent.num_layers = lat.layers[0].linear.out_features, len(lat.layers)
        cfg.latent.time_sinusoid = lat.time_sinusoid
    return cfg


def _patchdm_state(loaded) -> dict:
    """The PatchDM state dict (official key layout) of an official LoadedModel."""
    sd = dict(loaded.unet.state_dict())
    if loaded.encoder is not None:
        sd.update({"encoder." + k: v for k, v in loaded.encoder.state_dict().items()})
    elif loaded.codes is not None:
        sd[TABLE_KEY] = loaded.codes
    return sd


def convert_official(obj, path) -> dict:
    """An official checkpoint (already read) as this project's dict: the train format, or the full format when it
    holds a latent MLP, with both the EMA (ema_model.) and the raw (model.) weights where the file has them."""
    from .official import official_modules
    found = {}
    for which, ema in (("ema", True), ("raw", False)):
        try:
            found[which] = official_modules(obj, path, ema)
        except CheckpointError as e:
            if "no ema_model.* weights" not in str(e) and "no model.* weights" not in str(e):
                raise
    if not found:
        raise CheckpointError(f"{path} holds neither model.* nor ema_model.* weights")
    main = found.get("ema") or found["raw"]
    if main.encoder is None and main.codes is None:
        raise CheckpointError(f"{path} has neither a code table nor an image encoder")
    cfg = official_config(main)
    step = obj.get("global_step") if isinstance(obj, dict) else None
    step = step if isinstance(step, int) else None
    ck = {"format": TRAIN_FORMAT, "config": to_dict(cfg), "step": step, "official": True,
          "model": _patchdm_state(found[("raw" if "raw" in found else "ema")]),
          "ema": _patchdm_state(main), "has_raw": "raw" in found, "has_ema": "ema" in found}
    if main.latent_net is not None:
        # Faithful: the official latent MLP is sampled with its EMA (FAITHFULNESS.md: Latent DDPM).
        ck = {"format": FULL_FORMAT, "config": ck["config"], "official": True, "step": step,
              "patch_model": ck["ema"], "patch_weights": "ema", "patch_model_raw": ck["model"],
              "latent": main.latent_net.state_dict(),
              "latent_raw": found.get("raw", main).latent_net.state_dict()}
    return ck


def read_project_checkpoint(path) -> dict:
    """Any checkpoint file as this project's dict (format TRAIN_FORMAT or FULL_FORMAT): official files converted."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") in (TRAIN_FORMAT, FULL_FORMAT):
        return obj
    if isinstance(obj, dict) and "format" in obj:
        raise CheckpointError(f"{path} is a checkpoint of format {obj['format']!r}, which this version cannot read")
    return convert_official(obj, path)


def warn_young_ema(path, step, decay: float, what: str = "", limit: float = 0.05) -> None:
    """Say so on stderr when an EMA still holds more than ``limit`` of the initial weights (decay ** step): with the
    zero-initialised output convs such weights sample noise (the official constant 0.9999 needs ~30k steps)."""
    if step is None:
        return
    left = decay ** step
    if left > limit:
        print(f"warning: {path}{what} is at step {step}; its EMA (decay {decay}) still holds {left:.0%} of the "
              "initial weights, so samples from it can be noise. Use the raw weights (test.py / paint.py --raw, "
              "train_latent.py --weights raw) or train longer.", file=sys.stderr)


@dataclass
class Bundle:
    """Everything a script samples with: the Patch-DM network (U-Net + code source; eval mode, CPU), its config, the
    latent MLP of a full checkpoint (else None) and the code statistics to undo z-normalisation (else None)."""
    net: torch.nn.Module
    cfg: object
    latent: torch.nn.Module | None = None
    z_mean: torch.Tensor | None = None
    z_std: torch.Tensor | None = None
    kind: str = "train"  # train | full
    step: int | None = None  # the Patch-DM network's training step, where known


def patch_weights(ck: dict, raw: bool, path) -> tuple:
    """(state dict, EMA-or-raw) of the Patch-DM network of a project checkpoint dict."""
    if ck["format"] == TRAIN_FORMAT:
        if ck.get("official") and not ck["has_raw" if raw else "has_ema"]:
            raise CheckpointError(f"{path} has no {'raw (model.*)' if raw else 'EMA (ema_model.*)'} weights: "
                                  + ("drop --raw" if raw else "pass --raw"))
        return ck["model" if raw else "ema"], "raw" if raw else "ema"
    which = ck.get("patch_weights", "ema")
    if raw and which != "raw":
        if "patch_model_raw" not in ck:
            raise CheckpointError(f"{path} holds only the {which} Patch-DM weights (written before full checkpoints "
                                  "kept the raw ones): re-run train_latent.py on the train.py checkpoint, or drop --raw")
        return ck["patch_model_raw"], "raw"
    return ck["patch_model"], which


def load(path, raw: bool = False) -> Bundle:
    """The Bundle of any checkpoint this project reads (see the module docstring). raw=True takes the raw weights of
    every network in the file (Patch-DM and latent MLP) instead of their EMA; a young EMA is reported on stderr."""
    return bundle_of(read_project_checkpoint(path), path, raw)


def bundle_of(ck: dict, path, raw: bool = False) -> Bundle:
    """``load`` on a checkpoint dict already read by ``read_project_checkpoint``."""
    from . import build_latent, build_patchdm
    cfg = from_dict(ck["config"])
    sd, which = patch_weights(ck, raw, path)
    full = ck["format"] == FULL_FORMAT
    step = ck.get("patch_step") if full else ck.get("step")
    if which == "ema":
        warn_young_ema(path, step, cfg.training.ema_decay, " (Patch-DM network)" if full else "")
    net = build_patchdm(cfg.model, sd[TABLE_KEY].shape[0] if TABLE_KEY in sd else None)
    net.load_state_dict(sd)
    bundle = Bundle(net.eval(), cfg, step=step)
    if full:
        if not raw:
            warn_young_ema(path, ck.get("step"), cfg.latent.ema_decay, " (latent MLP)")
        latent = build_latent(cfg.latent, cfg.model.code_dim)
        latent.load_state_dict(ck["latent_raw" if raw else "latent"])
        bundle.latent, bundle.kind = latent.eval(), "full"
        bundle.z_mean, bundle.z_std = ck.get("z_mean"), ck.get("z_std")
    return bundle
