import pytest
import torch

from configs import get_preset
from model import build_encoder, build_latent, build_unet


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Non-trivial weights everywhere (the real init zeroes output convs, which would hide most bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # norm scales near 1
                p.copy_(1 + std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture
def tiny_cfg():
    return get_preset("tiny")


@pytest.fixture
def tiny_unet(tiny_cfg):
    torch.manual_seed(0)
    return randomize(build_unet(tiny_cfg.model))


@pytest.fixture
def tiny_latent(tiny_cfg):
    torch.manual_seed(0)
    return randomize(build_latent(tiny_cfg.latent, tiny_cfg.model.code_dim), std=0.1)


@pytest.fixture
def tiny_encoder(tiny_cfg):
    torch.manual_seed(0)
    return randomize(build_encoder(tiny_cfg.model))
