"""The opt-in speed switches compute the same function as the eager network."""

import copy

import pytest
import torch

from model.patchdm.api import canvas_eps, patch_loss_terms
from model.patchdm.fast import compiled_parts, speed_up

P = 8


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_channels_last_equals_eager(tiny_unet):
    x, t, code = torch.randn(2, 3, 16, 24), torch.tensor([7, 600]), torch.randn(2, 512)
    with torch.no_grad():
        ref = canvas_eps(tiny_unet, x, t, code, P)
        cl = speed_up(copy.deepcopy(tiny_unet), channels_last=True)
        assert _rel(canvas_eps(cl, x, t, code, P), ref) < 1e-5
        assert _rel(canvas_eps(cl, x, t, code, P, band_rows=1), ref) < 1e-5
    with pytest.raises(ValueError, match="compile mode"):
        speed_up(tiny_unet, "fastest")


@pytest.mark.parametrize("scope", ["blocks", "halves"])
def test_every_compiled_part_runs_compiled(tiny_unet, scope):
    """Compiled equals eager, forward (whole and banded) and backward, and no part falls back to eager: every
    ResBlock and attention block shares one forward, so dynamo needs far more than its default 8 entries for it
    (speed_up raises the limit); the halves capture without graph breaks. The 'eager' backend runs the captured
    graphs without code generation, so this checks the capture on any machine (inductor: docs/BENCHMARKS.md)."""
    from torch._dynamo.utils import counters
    x, t, code = torch.randn(2, 3, 16, 24), torch.tensor([7, 600]), torch.randn(2, 512)
    with torch.no_grad():
        ref = canvas_eps(tiny_unet, x, t, code, P)
        torch._dynamo.reset()
        counters.clear()
        comp = speed_up(copy.deepcopy(tiny_unet), "default", backend="eager", scope=scope)
        assert _rel(canvas_eps(comp, x, t, code, P), ref) < 1e-6
        assert _rel(canvas_eps(comp, x, t, code, P, band_rows=1, band_cols=1), ref) < 1e-5
    frames = counters["frames"]
    assert frames["total"] == frames["ok"] > 0
    assert not counters["unimplemented"] and not counters["graph_break"]
    if scope == "blocks":  # one graph per block signature and batch size, well over 8
        assert all(getattr(m, "_compiled_call_impl", None) is not None for m in compiled_parts(comp))
        assert counters["stats"]["unique_graphs"] > 8
    noise = torch.randn(2, 3, 24, 32)
    sum(patch_loss_terms(comp, x, t, noise, (1, 1), code, P)).backward()
    assert all(p.grad is not None for p in comp.parameters())
    with pytest.raises(ValueError, match="compile scope"):
        speed_up(tiny_unet, "default", scope="everything")


@pytest.mark.parametrize("levels", [0, 1])
def test_activation_checkpointing_gives_the_same_gradients(tiny_cfg, levels):
    """Non-trivial weights everywhere (the real init's zero output convs would leave all but the output head without a
    gradient) and dropout on, so the recomputed forward must replay the same dropout masks: a recomputation with
    other masks gives other gradients (checked below with another dropout seed)."""
    from model.patchdm import build_unet
    from model.patchdm.blocks import Checkpointable
    from model.patchdm.fast import set_checkpointing
    from tests.conftest import randomize
    tiny_cfg.model.dropout = 0.3
    net = randomize(build_unet(tiny_cfg.model), seed=3).train()
    ckpt = set_checkpointing(copy.deepcopy(net), levels=levels)
    blocks = [m for m in ckpt.modules() if isinstance(m, Checkpointable)]
    on = [m for m in blocks if m.grad_checkpoint]
    assert on == (blocks if levels == 0 else [m for m in blocks if m.level == 0]) and 0 < len(on)
    x0, t, code = torch.rand(3, 3, 16, 24) * 2 - 1, torch.tensor([5, 400, 999]), torch.randn(3, 512)
    noise = torch.randn(3, 3, 24, 32)

    def grads(model, dropout_seed):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(dropout_seed)
        sum(patch_loss_terms(model, x0, t, noise, (1, 0), code, P)).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain, checkpointed, other_masks = grads(net, 1), grads(ckpt, 1), grads(net, 2)
    assert all(g.abs().sum() > 0 for g in plain)  # every parameter takes part
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert not all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(plain, other_masks))
    with torch.no_grad():  # inference is unaffected
        assert torch.equal(canvas_eps(net.eval(), x0, t, code, P), canvas_eps(ckpt.eval(), x0, t, code, P))


def test_blocks_know_their_resolution_level(tiny_cfg):
    """Encoder: num_res_blocks + a down block per level (none at the last); decoder: num_res_blocks + 1 per level
    plus an up block below the first; the middle at the deepest level."""
    from model.patchdm import build_unet
    from model.patchdm.blocks import ResBlock
    net = build_unet(tiny_cfg.model)
    m = tiny_cfg.model
    levels = len(m.channel_mult)
    count = [sum(isinstance(b, ResBlock) and b.level == lv for b in net.modules()) for lv in range(levels)]
    expected = [2 * m.num_res_blocks + 2 + (lv > 0) for lv in range(levels)]
    expected[-1] += 2 - 1  # the middle's two ResBlocks; no down block at the last level
    assert count == expected
    assert all(b.level == levels - 1 for b in net.middle_block)
