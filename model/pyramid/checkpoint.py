"""The Pyramid Diffusion Model's checkpoints: what a v2 checkpoint of the family builds (``Bundle``).

Networks: ``autoencoder`` (train.py --config pyramid_*) and, while it trains with the GAN, ``discriminator`` (its
optimizer state in extra["disc_opt"]); a full checkpoint (train_latent.py) holds the autoencoder it was trained on
and ``flow``, the flow model (the Pyramid NCSN++ and its latent scales). The family has no earlier formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configs import from_dict
from training import checkpoint as C
from training.checkpoint import warn_young_ema
from .builders import build_autoencoder, build_flow

FAMILY = "pyramid"
AUTOENCODER, DISCRIMINATOR, FLOW = "autoencoder", "discriminator", "flow"
LEGACY_READERS = ()


@dataclass
class Bundle:
    """What the scripts use: the pyramid autoencoder and, in a full checkpoint, the flow model (eval mode, CPU), the
    config and the autoencoder's training step."""
    autoencoder: torch.nn.Module
    cfg: object
    step: int | None = None
    kind: str = "autoencoder"
    flow: torch.nn.Module | None = None


def bundle_of(ck: dict, path, raw: bool = False) -> Bundle:
    """The Bundle of a pyramid v2 checkpoint dict; raw=True takes the raw weights instead of the EMA (a young EMA is
    reported on stderr)."""
    cfg = from_dict(ck["config"])
    entry = ck["networks"][AUTOENCODER]
    if not raw:
        warn_young_ema(path, entry["step"], cfg.ae_training, " (autoencoder)")
    ae = build_autoencoder(cfg.autoencoder)
    ae.load_state_dict(C.weights(ck, AUTOENCODER, raw, path))
    flow = None
    if FLOW in ck["networks"]:
        if not raw:
            warn_young_ema(path, ck["networks"][FLOW]["step"], cfg.flow_training, " (flow)")
        flow = build_flow(cfg)
        flow.load_state_dict(C.weights(ck, FLOW, raw, path))
        flow.eval()
    return Bundle(ae.eval(), cfg, entry["step"], "full" if flow is not None else "autoencoder", flow)
