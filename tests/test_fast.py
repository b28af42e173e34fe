"""The opt-in speed switches compute the same function as the eager network."""

import copy

import pytest
import torch

from diffusion import canvas_eps, patch_loss_terms
from runtime.fast import compiled_parts, speed_up

P = 8


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_channels_last_and_compiled_blocks_equal_eager(tiny_unet):
    x, t, code = torch.randn(2, 3, 16, 24), torch.tensor([7, 600]), torch.randn(2, 512)
    with torch.no_grad():
        ref = canvas_eps(tiny_unet, x, t, code, P)
        cl = speed_up(copy.deepcopy(tiny_unet), channels_last=True)
        assert _rel(canvas_eps(cl, x, t, code, P), ref) < 1e-5
        # dynamo capture of every block (the 'eager' backend runs the captured graphs without code generation, so
        # this checks the blocks trace correctly on any machine; inductor's kernels are compared on the GPU)
        torch._dynamo.reset()
        comp = speed_up(copy.deepcopy(tiny_unet), "default", backend="eager")
        assert all(getattr(m, "_compiled_call_impl", None) is not None for m in compiled_parts(comp))
        assert _rel(canvas_eps(comp, x, t, code, P), ref) < 1e-6
        assert _rel(canvas_eps(comp, x, t, code, P, band_rows=1), ref) < 1e-5
    # and gradients (training) go through the compiled blocks
    noise = torch.randn(2, 3, 24, 32)
    loss = sum(patch_loss_terms(comp, x, t, noise, (1, 1), code, P))
    loss.backward()
    assert all(p.grad is not None for p in comp.parameters())
    with pytest.raises(ValueError, match="compile mode"):
        speed_up(tiny_unet, "fastest")
