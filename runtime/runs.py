"""Reading this project's run files: code tables and checkpoints, with one-line errors."""

from __future__ import annotations

import torch

from configs import from_dict, to_dict
from model.safe_load import read_checkpoint
from .errors import CLIError


def load_code_table(path) -> torch.Tensor:
    """The [N, D] table of an initialize.py file ({'model_state_dict': {'semantic_enc.weight': T}}, the official
    layout), of {'semantic_enc.weight': T}, or a bare tensor."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if isinstance(obj, dict):
        obj = obj.get("semantic_enc.weight", obj.get("encoder.semantic_enc.weight"))
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        raise CLIError(f"{path} holds no [N, D] code table (expected {{'model_state_dict': "
                       "{'semantic_enc.weight': tensor}}, as initialize.py writes)")
    return obj.float()


def _diff(a: dict, b: dict, prefix: str = "") -> list:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        seqs = isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple))
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (seqs and list(va) == list(vb)):
            out.append(f"{prefix}{k}={va!r} in the checkpoint, {vb!r} now")
    return out


def compatible_or_raise(ckpt: dict, cfg, fmt: str, path) -> None:
    """Refuse to resume a checkpoint of another format, architecture or image size (naming the fields)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CLIError(f"{path} is not a {fmt} checkpoint of this project")
    saved = to_dict(from_dict(ckpt["config"]))  # fields added since the checkpoint take their defaults
    now = to_dict(cfg)
    problems = _diff({"model": saved["model"], "data.image_size": saved["data"]["image_size"]},
                     {"model": now["model"], "data.image_size": now["data"]["image_size"]})
    if problems:
        raise CLIError(f"{path} was trained with other settings ({'; '.join(problems[:6])}); use the same settings "
                       "or another --name")


def config_of(ckpt: dict):
    return from_dict(ckpt["config"])


TRAIN_FORMAT = "patchdm-train-v1"
FULL_FORMAT = "patchdm-full-v1"


def official_config(loaded):
    """A config describing an official checkpoint's architecture (the nature preset's other settings)."""
    from configs import get_preset, set_patch_size
    cfg = set_patch_size(get_preset("nature"), loaded.patch_size)
    cfg.model.code_source = "table" if loaded.encoder is None else "encoder"
    return cfg


def warn_young_ema(path, step: int, decay: float, limit: float = 0.05) -> None:
    """Say so on stderr when an EMA still holds more than ``limit`` of the initial weights (decay ** step): with the
    zero-initialised output convs such weights sample noise (the official constant 0.9999 needs ~30k steps)."""
    import sys
    left = decay ** step
    if left > limit:
        print(f"warning: {path} is at step {step}; its EMA (decay {decay}) still holds {left:.0%} of the initial "
              "weights, so samples from it can be noise. Use the raw weights (test.py / paint.py --raw, "
              "train_latent.py --weights raw) or train longer.", file=sys.stderr)


def load_patch_model(path, ema: bool = True):
    """(net, cfg, ckpt) from this project's train.py checkpoint or an official Patch-DM checkpoint.

    net is a PatchDM (U-Net + code table or image encoder) in eval mode on the CPU, with the EMA weights unless
    ema=False; ckpt is the raw dict for this project's files, None for official ones.
    """
    from model import PatchDM, build_patchdm, load_official_checkpoint
    from model.encoder import CodeTable
    from model.official import UNET_PREFIXES
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        cfg = config_of(obj)
        sd = obj["ema" if ema else "model"]
        if ema:
            warn_young_ema(path, obj["step"], cfg.training.ema_decay)
        n = sd["encoder.semantic_enc.weight"].shape[0] if "encoder.semantic_enc.weight" in sd else None
        net = build_patchdm(cfg.model, n)
        net.load_state_dict(sd)
        return net.eval(), cfg, obj
    if isinstance(obj, dict) and obj.get("format") == FULL_FORMAT:
        raise CLIError(f"{path} is a latent (full) checkpoint; pass the Patch-DM checkpoint from train.py")
    del obj
    loaded = load_official_checkpoint(path, ema=ema)
    cfg = official_config(loaded)
    if loaded.encoder is None and loaded.codes is None:
        raise CLIError(f"{path} has neither a code table nor an image encoder")
    enc = loaded.encoder if loaded.encoder is not None else CodeTable(*loaded.codes.shape, init=loaded.codes)
    from model import unet_kwargs
    net = PatchDM(enc, **unet_kwargs(cfg.model))
    net.load_state_dict({**loaded.unet.state_dict(), **{"encoder." + k: v for k, v in enc.state_dict().items()}})
    assert all(k.startswith(UNET_PREFIXES) or k.startswith("encoder.") for k in net.state_dict())
    return net.eval(), cfg, None


def models_from_full(obj: dict, raw: bool = False):
    """(net: PatchDM, cfg, latent_net, z_mean, z_std) of a train_latent.py full checkpoint dict (eval mode, CPU).

    raw=True takes the latent model's raw weights instead of its EMA."""
    from model import build_latent, build_patchdm
    cfg = from_dict(obj["config"])
    sd = obj["patch_model"]
    n = sd["encoder.semantic_enc.weight"].shape[0] if "encoder.semantic_enc.weight" in sd else None
    net = build_patchdm(cfg.model, n)
    net.load_state_dict(sd)
    latent = build_latent(cfg.latent, cfg.model.code_dim)
    latent.load_state_dict(obj["latent_raw" if raw else "latent"])
    return net.eval(), cfg, latent.eval(), obj.get("z_mean"), obj.get("z_std")


def restore_training(ckpt: dict, model, ema, opt, scaler, model_key: str, ema_key: str) -> int:
    """Load model, EMA, optimizer and scaler states from a checkpoint dict; returns its step."""
    model.load_state_dict(ckpt[model_key])
    ema.load_state_dict(ckpt[ema_key])
    opt.load_state_dict(ckpt["opt"])
    scaler.load_state_dict(ckpt["scaler"])
    return ckpt["step"]
