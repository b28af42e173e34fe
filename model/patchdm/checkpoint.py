"""Patch-DM's checkpoints: the ``Bundle`` every script samples with, built from a v2 checkpoint dict
(training/checkpoint.py), and the readers that turn the files of earlier versions into such a dict.

Networks in a Patch-DM checkpoint: ``denoiser`` (the PatchDM: U-Net + code source, official key layout) and, in a
*full* checkpoint (train_latent.py), ``code_ddpm`` (the latent MLP over semantic codes). Extra values: ``num_codes``,
``code_weights`` (which denoiser weights the code DDPM learned the codes of: a default load uses those), ``z_mean`` /
``z_std`` (the code statistics of --znormalize), ``official`` (converted from an official file).

Files of earlier formats that still load:
  patchdm-train-v1   train.py's last.pt: {format, config, step, samples, num_codes, model (raw), ema, opt, scaler}
  patchdm-full-v1    train_latent.py's last.pt: the latent MLP (latent = EMA, latent_raw) and the Patch-DM weights its
                     codes came from (patch_model, which = patch_weights); later also patch_model_raw, patch_step
  official           a Lightning file of the official code (model. / ema_model. weights, optionally latent_net.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configs import from_dict, get_preset, set_patch_size, to_dict
from runtime.errors import CheckpointError
from runtime.safe_load import read_checkpoint
from training import checkpoint as C
from training.checkpoint import warn_young_ema
from .builders import build_latent, build_patchdm
from .official import official_modules

FAMILY = "patchdm"
DENOISER, CODE_DDPM = "denoiser", "code_ddpm"
TRAIN_FORMAT, FULL_FORMAT = "patchdm-train-v1", "patchdm-full-v1"
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


# -- readers of earlier formats ------------------------------------------------------------------------------------

def read_v1(obj, path) -> dict | None:
    """A patchdm-train-v1 / patchdm-full-v1 file as a v2 dict (None for anything else)."""
    if not isinstance(obj, dict) or obj.get("format") not in (TRAIN_FORMAT, FULL_FORMAT):
        return None
    training = {"network": DENOISER if obj["format"] == TRAIN_FORMAT else CODE_DDPM, "opt": obj["opt"],
                "scaler": obj["scaler"]} if "opt" in obj else None
    if obj["format"] == TRAIN_FORMAT:
        samples = obj.get("samples", obj["step"] * from_dict(obj["config"]).training.batch_size)
        networks = {DENOISER: C.network_entry(obj["model"], obj["ema"], obj["step"], samples)}
        return C.make(FAMILY, obj["config"], networks, training, {"num_codes": obj.get("num_codes")})
    which = obj.get("patch_weights", "ema")
    raw = obj.get("patch_model_raw", obj["patch_model"] if which == "raw" else None)
    networks = {DENOISER: C.network_entry(raw, obj["patch_model"] if which == "ema" else None, obj.get("patch_step")),
                CODE_DDPM: C.network_entry(obj["latent_raw"], obj["latent"], obj.get("step"), obj.get("samples"))}
    extra = {"code_weights": which, "z_mean": obj.get("z_mean"), "z_std": obj.get("z_std"),
             "official": obj.get("official", False), "source": obj.get("patch_source")}
    return C.make(FAMILY, obj["config"], networks, training, extra)


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


def read_official(obj, path) -> dict | None:
    """An official checkpoint (already read) as a v2 dict: the denoiser with both the EMA (ema_model.) and the raw
    (model.) weights where the file has them, and the code DDPM when it holds a latent MLP. None for a file of some
    other format; CheckpointError for a file that is no Patch-DM checkpoint at all."""
    if isinstance(obj, dict) and "format" in obj:
        return None
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
    step = obj.get("global_step") if isinstance(obj, dict) else None
    step = step if isinstance(step, int) else None
    state = {which: _patchdm_state(m) for which, m in found.items()}
    extra = {"official": True, "code_weights": "ema"}
    if main.latent_net is None:
        networks = {DENOISER: C.network_entry(state.get("raw"), state.get("ema"), step)}
    else:
        # Faithful: the official latent MLP is sampled with its EMA (FAITHFULNESS.md: Latent DDPM). The denoiser's
        # weights for --raw are the model.* ones (the EMA where the file has no others).
        networks = {DENOISER: C.network_entry(state.get("raw", state["ema"] if "ema" in state else None),
                                              _patchdm_state(main)),
                    CODE_DDPM: C.network_entry(found.get("raw", main).latent_net.state_dict(),
                                               main.latent_net.state_dict(), step)}
    return C.make(FAMILY, to_dict(official_config(main)), networks, None, extra)


LEGACY_READERS = (read_v1, read_official)


# -- the Bundle ----------------------------------------------------------------------------------------------------

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


def denoiser_weights(ck: dict, raw: bool, path) -> tuple:
    """(state dict, 'raw' or 'ema') of the denoiser: the raw weights with ``raw``, else those the file samples with
    (the EMA, or in a full checkpoint the weights its code DDPM learned the codes of)."""
    extra = ck["extra"]
    which = "raw" if raw else extra.get("code_weights", "ema")
    sd = ck["networks"][DENOISER][which]
    if sd is not None:
        return sd, which
    if extra.get("official"):
        raise CheckpointError(f"{path} has no {'raw (model.*)' if raw else 'EMA (ema_model.*)'} weights: "
                              + ("drop --raw" if raw else "pass --raw"))
    raise CheckpointError(f"{path} holds only the {'ema' if raw else 'raw'} Patch-DM weights (written before full "
                          "checkpoints kept the raw ones): re-run train_latent.py on the train.py checkpoint, or drop "
                          "--raw")


def bundle_of(ck: dict, path, raw: bool = False) -> Bundle:
    """The Bundle of a Patch-DM v2 checkpoint dict. raw=True takes the raw weights of every network in the file
    (denoiser and code DDPM) instead of their EMA; a young EMA is reported on stderr."""
    cfg = from_dict(ck["config"])
    sd, which = denoiser_weights(ck, raw, path)
    full = CODE_DDPM in ck["networks"]
    step = ck["networks"][DENOISER]["step"]
    if which == "ema":
        warn_young_ema(path, step, cfg.training, " (Patch-DM network)" if full else "")
    net = build_patchdm(cfg.model, sd[TABLE_KEY].shape[0] if TABLE_KEY in sd else None)
    net.load_state_dict(sd)
    bundle = Bundle(net.eval(), cfg, step=step)
    if full:
        entry = ck["networks"][CODE_DDPM]
        if not raw:
            warn_young_ema(path, entry["step"], cfg.latent, " (latent MLP)")
        latent = build_latent(cfg.latent, cfg.model.code_dim)
        latent.load_state_dict(C.weights(ck, CODE_DDPM, raw, path))
        bundle.latent, bundle.kind = latent.eval(), "full"
        bundle.z_mean, bundle.z_std = ck["extra"].get("z_mean"), ck["extra"].get("z_std")
    return bundle
