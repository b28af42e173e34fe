"""Patch-DM networks and everything that makes them: the patch U-Net (unet, blocks), the patch grid and feature
collage (collage, canvas), the collage modes (collages), the denoiser over canvases and windows (denoiser), the
semantic-code sources (codes), the latent MLP (latent), code fitting for unseen images (fit_code), and checkpoints
(checkpoint: this project's files; official, safe_load: official files without pytorch-lightning)."""

from __future__ import annotations

from .codes import CodeTable, ImageEncoder, NullCode
from .denoiser import Denoiser
from .latent import LatentMLP
from .official import LoadedModel, load_official_checkpoint
from .patchdm import PatchDM
from .safe_load import CheckpointError, read_checkpoint
from .unet import PatchUNet

__all__ = ["PatchDM", "Denoiser", "build_patchdm", "PatchUNet", "ImageEncoder", "CodeTable", "NullCode", "LatentMLP",
           "LoadedModel", "CheckpointError", "load_official_checkpoint", "read_checkpoint", "build_unet",
           "build_encoder", "build_latent", "count_params", "unet_kwargs"]


def build_unet(m) -> PatchUNet:
    """PatchUNet from a ModelConfig."""
    return PatchUNet(**unet_kwargs(m))


def unet_kwargs(m) -> dict:
    return dict(model_channels=m.model_channels, channel_mult=tuple(m.channel_mult), num_res_blocks=m.num_res_blocks,
                attention_levels=tuple(m.attention_levels), embed_channels=m.embed_channels, code_dim=m.code_dim,
                pos_sinusoid=m.pos_sinusoid, dropout=m.dropout, use_position=getattr(m, "use_position", True))


def build_patchdm(m, num_codes: int | None = None, code_init=None) -> PatchDM:
    """PatchDM from a ModelConfig: a code table of ``num_codes`` rows (optionally initialised) or the encoder."""
    if m.code_source == "table":
        if num_codes is None:
            raise ValueError("a code-table model needs num_codes")
        source = CodeTable(num_codes, m.code_dim, code_init)
    elif m.code_source == "encoder":
        source = build_encoder(m)
    elif m.code_source == "none":
        source = NullCode(m.code_dim)
    else:
        raise ValueError(f"unknown code source {m.code_source!r}; choose table, encoder or none")
    return PatchDM(source, **unet_kwargs(m))


def build_encoder(m) -> ImageEncoder:
    """Image encoder from a ModelConfig (used when code_source == 'encoder')."""
    return ImageEncoder(model_channels=m.encoder_channels, channel_mult=tuple(m.encoder_mult),
                        num_res_blocks=m.num_res_blocks, attention_levels=tuple(m.encoder_attention_levels),
                        code_dim=m.code_dim, dropout=m.dropout)


def build_latent(lat, code_dim: int) -> LatentMLP:
    """Latent MLP from a LatentConfig."""
    return LatentMLP(code_dim=code_dim, hidden=lat.hidden, num_layers=lat.num_layers,
                     time_sinusoid=lat.time_sinusoid)


def count_params(module) -> int:
    """Number of distinct parameters (a tied Linear counts once)."""
    return sum(p.numel() for p in module.parameters())
