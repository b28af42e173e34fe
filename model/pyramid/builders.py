"""Builders: the Pyramid Diffusion Model's networks from the sections of its config (the only code that reads a config
to make a network)."""

from __future__ import annotations

from .autoencoder import PyramidAutoencoder, PyramidDecoder, PyramidEncoder
from .flow import LatentFlow, LatentScaler
from .ncsnpp import PyramidNCSNpp


def build_autoencoder(a) -> PyramidAutoencoder:
    """The pyramid autoencoder of an AutoencoderConfig."""
    shared = dict(channels=a.channels, channel_mult=tuple(a.channel_mult), blocks=a.blocks,
                  latent_levels=tuple(a.latent_levels), latent_channels=tuple(a.latent_channels), heads=a.heads,
                  dropout=a.dropout)
    return PyramidAutoencoder(PyramidEncoder(attention=tuple(a.encoder_attention), spectral_norm=a.spectral_norm,
                                             logvar_init=a.logvar_init, **shared),
                              PyramidDecoder(attention=tuple(a.decoder_attention),
                                             full_attention_max=a.full_attention_max, skip=a.decoder_skip, **shared))


def build_flow(cfg) -> LatentFlow:
    """The flow model of a PyramidConfig: the Pyramid NCSN++ on its autoencoder's latents (the finest in the
    backbone, one branch per coarser latent at its level) and the latent scaler."""
    f, a, t = cfg.flow, cfg.autoencoder, cfg.flow_training
    first = a.latent_levels[0]
    branches = tuple((l - first, c) for l, c in zip(a.latent_levels[1:], a.latent_channels[1:]))
    net = PyramidNCSNpp(a.latent_channels[0], f.channels, tuple(f.channel_mult), f.blocks, tuple(f.attention),
                        f.attention_kind, f.progressive, f.progressive_input, f.spectral_norm, f.dropout,
                        f.dropout_schedule, f.heads, f.full_attention_max, branches)
    return LatentFlow(net, LatentScaler(len(a.latent_levels), t.scale_iterations, t.scale_momentum))
