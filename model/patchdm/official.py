"""Loading official Patch-DM checkpoints (Lightning files with ``model.`` / ``ema_model.`` prefixes).

Key names and shapes: ``tests/data/official-state-dict-*.tsv``. The architecture (patch 64 / 128 / 256, table
or image encoder, latent MLP) is recognised from the tensors; every key must map to a parameter and every
parameter must be filled, or a CheckpointError names the offending keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from configs import PATCH_ARCH
from .codes import ImageEncoder
from .code_mlp import LatentMLP
from runtime.safe_load import CheckpointError, read_checkpoint, tensor_dict
from .unet import PatchUNet

UNET_PREFIXES = ("time_embed.", "input_blocks.", "middle_block.", "output_blocks.", "out.")
TABLE_KEY = "encoder.semantic_enc.weight"
# Buffers of the official LitModel that live outside model./ema_model. and are not needed here.
IGNORED_TOP_LEVEL = {"x_T", "conds_mean", "conds_std"}


@dataclass
class LoadedModel:
    unet: PatchUNet
    encoder: ImageEncoder | None
    latent_net: LatentMLP | None
    codes: torch.Tensor | None
    patch_size: int


def split_official_state(state: dict, ema: bool) -> dict:
    """Select the ``ema_model.`` (or ``model.``) weights and strip the prefix; a bare state dict passes through."""
    prefixes = ("model.", "ema_model.")
    if not any(k.startswith(prefixes) for k in state):
        return dict(state)
    want = "ema_model." if ema else "model."
    other = [k for k in state if not k.startswith(prefixes) and k not in IGNORED_TOP_LEVEL]
    if other:
        raise CheckpointError(f"unexpected keys outside model./ema_model.: {', '.join(other[:8])}")
    picked = {k[len(want):]: v for k, v in state.items() if k.startswith(want)}
    if not picked:
        raise CheckpointError(f"no {want}* weights in this checkpoint" + (" (pass ema=False for the raw weights)"
                                                                          if ema else ""))
    # Faithful: the official latent script renames a legacy table key (FAITHFULNESS.md: Latent DDPM).
    legacy = "semantic_enc.semantic_enc.weight"
    if legacy in picked and TABLE_KEY not in picked:
        picked[TABLE_KEY] = picked.pop(legacy)
    return picked


def _shape_mismatch(module: nn.Module, sd: dict) -> list:
    """Human-readable differences between a module's state dict and ``sd`` (missing, unexpected, shapes)."""
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in own]
    problems += [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    return problems


def _load_strict(module: nn.Module, sd: dict, what: str) -> nn.Module:
    problems = _shape_mismatch(module, sd)
    if problems:
        raise CheckpointError(f"{what} does not match ({len(problems)} problems): {'; '.join(problems[:8])}")
    module.load_state_dict(sd, strict=True)
    return module.float().eval()


def _recognise(build, candidates: dict, sd: dict, what: str):
    """Build each candidate on the meta device; return (key, module) of the one whose keys and shapes fit."""
    best = None
    for key, kwargs in candidates.items():
        with torch.device("meta"):
            module = build(**kwargs)
        problems = _shape_mismatch(module, sd)
        if not problems:
            return key, build(**kwargs)
        if best is None or len(problems) < len(best[1]):
            best = (key, problems)
    raise CheckpointError(f"{what} matches no official architecture; closest is {best[0]} with {len(best[1])} "
                          f"problems: {'; '.join(best[1][:8])}")


def _code_dim(unet_sd: dict) -> int:
    return unet_sd["input_blocks.1.0.cond_emb_layers.1.weight"].shape[1]


def _check_tied(latent_sd: dict) -> None:
    for k in latent_sd:
        if k.endswith(".linear_emb.weight") or k.endswith(".linear_emb.bias"):
            twin = k.replace(".linear_emb.", ".cond_layers.1.")
            if twin in latent_sd and not torch.equal(latent_sd[k], latent_sd[twin]):
                raise CheckpointError(f"latent_net keys {k} and {twin} are one tied Linear in the official MLP "
                                      "but differ in this file")


def load_official_checkpoint(path, ema: bool = True, trust_pickle: bool = False) -> LoadedModel:
    """Load an official Patch-DM (or latent "full") checkpoint into this project's modules.

    Returns a LoadedModel with ``.unet``, ``.encoder`` (image encoder or None), ``.latent_net`` (or None),
    ``.codes`` ([N, 512] or None) and ``.patch_size``; modules in eval mode, fp32, on the CPU.
    Deviation: ema=True (the default) takes the ``ema_model.`` weights; the official test.py used ``model.``.
    """
    return official_modules(read_checkpoint(path, trust_pickle=trust_pickle), path, ema)


def official_modules(ckpt, path, ema: bool = True) -> LoadedModel:
    """``load_official_checkpoint`` on an already-read file (``read_checkpoint``), so callers read it once."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    sd = tensor_dict(split_official_state(tensor_dict(state, f"{path}: state_dict"), ema), f"{path}: weights")
    sd = {k: v.float() for k, v in sd.items()}
    groups = {"unet": {}, "encoder": {}, "latent": {}}
    codes, unknown = None, []
    for k, v in sd.items():
        if k == TABLE_KEY:
            codes = v.clone()
        elif k.startswith(UNET_PREFIXES):
            groups["unet"][k] = v
        elif k.startswith("encoder."):
            groups["encoder"][k[len("encoder."):]] = v
        elif k.startswith("latent_net."):
            groups["latent"][k[len("latent_net."):]] = v
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{path}: keys that belong to no Patch-DM module: {', '.join(unknown[:8])}")
    if not groups["unet"]:
        raise CheckpointError(f"{path}: no U-Net weights (time_embed.*, input_blocks.*, ...) in this checkpoint")

    code_dim = _code_dim(groups["unet"])
    unet_candidates = {p: dict(model_channels=ch, channel_mult=mult, code_dim=code_dim)
                       for p, (ch, mult, _) in PATCH_ARCH.items()}
    patch_size, unet = _recognise(PatchUNet, unet_candidates, groups["unet"], f"{path}: U-Net")
    _load_strict(unet, groups["unet"], f"{path}: U-Net")

    encoder = None
    if groups["encoder"]:
        ch, _, enc_mult = PATCH_ARCH[patch_size]
        encoder = ImageEncoder(model_channels=ch, channel_mult=enc_mult, code_dim=code_dim)
        _load_strict(encoder, groups["encoder"], f"{path}: image encoder")

    latent_net = None
    if groups["latent"]:
        lat = groups["latent"]
        _check_tied(lat)
        if "layers.0.linear.weight" not in lat:
            raise CheckpointError(f"{path}: latent_net weights lack layers.0.linear.weight")
        n_layers = len({k.split(".")[1] for k in lat if k.startswith("layers.")})
        latent_net = LatentMLP(code_dim=code_dim, hidden=lat["layers.0.linear.weight"].shape[0],
                               num_layers=n_layers, time_sinusoid=lat["time_embed.0.weight"].shape[1])
        _load_strict(latent_net, lat, f"{path}: latent MLP")

    if codes is not None and (codes.ndim != 2 or codes.shape[1] != code_dim):
        raise CheckpointError(f"{path}: code table has shape {tuple(codes.shape)}, expected [N, {code_dim}]")
    return LoadedModel(unet=unet, encoder=encoder, latent_net=latent_net, codes=codes, patch_size=patch_size)
