"""Builders: Patch-DM's networks from the sections of its config (the only code that reads a config to make a
network; the modules take explicit arguments)."""

from __future__ import annotations

from .code_mlp import LatentMLP
from .codes import CodeTable, ImageEncoder, NullCode
from .network import PatchDM
from .unet import PatchUNet


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

