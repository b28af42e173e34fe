"""Pinned values (diffusers-style) and device agreement. The pins catch silent numerical changes."""

import pytest
import torch

from configs import get_preset
from model.patchdm.api import canvas_eps, ddim_sample_canvas
from model.patchdm import build_unet
from tests.conftest import randomize

D = 512  # code width of the tiny preset (CLIP width, as every real preset)


def _fixed():
    unet = randomize(build_unet(get_preset("tiny").model), seed=7)
    g = torch.Generator().manual_seed(11)
    x, code = torch.randn(1, 3, 16, 24, generator=g), torch.randn(1, D, generator=g)
    return unet, x, code


def test_pinned_canvas_eps_and_sample():
    unet, x, code = _fixed()
    with torch.no_grad():
        eps = canvas_eps(unet, x, torch.tensor([321]), code, 8)
    sample = ddim_sample_canvas(unet, x, code, steps=5, patch_size=8)
    got = [eps.mean().item(), eps.abs().mean().item(), eps[0, 1, 9, 17].item(), sample.mean().item(),
           sample[0, 2, 5, 5].item()]
    assert got == pytest.approx(PINNED, rel=1e-4, abs=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_in_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    unet, x, code = _fixed()
    with torch.no_grad():
        cpu = canvas_eps(unet, x, torch.tensor([321]), code, 8)
        gpu = canvas_eps(unet.cuda(), x.cuda(), torch.tensor([321]).cuda(), code.cuda(), 8).cpu()
    assert ((gpu - cpu).norm() / cpu.norm()).item() < 1e-5


# Values of the current implementation (torch 2.14.1, CPU, fp32), checked against tests/official_style.py.
PINNED = [-0.058811530470848083, 0.5944550633430481, 0.06394937634468079, 0.017440762370824814, 0.994469165802002]
