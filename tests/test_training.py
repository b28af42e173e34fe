"""The training pieces on their own: the EMA, the seed derivation, the optimizer step, and resuming."""

import copy

import pytest
import torch

from runtime.rng import PURPOSES, rng, seed_for
from tests.helpers import train_run
from training.ema import EMA
from training.loop import optimizer_step


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_ema_update_is_decay_times_average_plus_one_minus_decay_times_weights():
    net = _net()
    ema = EMA(net, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 3))  # moves the batch-norm running statistics (buffers: copied)
    now = {k: v.clone() for k, v in net.state_dict().items()}
    ema.update(net)
    buffers = {k for k, _ in net.named_buffers()}
    for k, v in ema.state_dict().items():
        if k not in buffers:
            assert torch.allclose(v, 0.9 * start[k] + 0.1 * now[k], atol=1e-6), k
        else:
            assert torch.equal(v, now[k]), k  # running statistics and num_batches_tracked are copied
    assert all(not p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_ema_of_a_spectral_normed_network_keeps_unit_power_iteration_vectors():
    """Spectral norm's u and v are buffers: copied, so the EMA network divides its averaged weight by a true norm."""
    from torch.nn.utils.parametrizations import spectral_norm
    torch.manual_seed(0)
    net = spectral_norm(torch.nn.Linear(6, 5)).train()
    ema = EMA(net, decay=0.5)
    for _ in range(5):
        with torch.no_grad():
            net.parametrizations.weight.original.mul_(1.5).add_(0.3)
        net(torch.randn(2, 6))  # a training forward runs the power iteration
        ema.update(net)
    u = ema.model.parametrizations.weight[0]._u
    assert abs(u.norm().item() - 1) < 1e-5
    w = ema.model.weight  # eval mode: the stored vectors
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1) < 0.05


def test_a_tied_linear_is_averaged_once_per_name_as_the_official_ema():
    from model.patchdm import LatentMLP
    net = LatentMLP(code_dim=4, hidden=8, num_layers=3, time_sinusoid=4)
    ema = EMA(net, decay=0.5)
    start = ema.model.layers[0].linear_emb.weight.clone()
    with torch.no_grad():
        net.layers[0].linear_emb.weight.add_(1.0)
    ema.update(net)
    now = net.layers[0].linear_emb.weight
    assert torch.allclose(ema.model.layers[0].linear_emb.weight, 0.25 * start + 0.75 * now, atol=1e-6)


def test_ema_state_round_trips_and_continues_identically():
    net = _net()
    ema = EMA(net, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1.1)
        ema.update(net)
    restored = EMA(_net(seed=5), decay=0.99)
    restored.load_state_dict(copy.deepcopy(ema.state_dict()))
    ema.update(net)
    restored.update(net)
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), restored.state_dict().values()))


def test_seeds_are_distinct_per_purpose_and_key_and_reproducible():
    seeds = {seed_for(0, p, k) for p in PURPOSES for k in range(50)}
    assert len(seeds) == len(PURPOSES) * 50
    assert seed_for(3, "noise", 7, 1) != seed_for(3, "noise", 1, 7) != seed_for(4, "noise", 7, 1)
    assert torch.equal(torch.randn(5, generator=rng(1, "image", 2)), torch.randn(5, generator=rng(1, "image", 2)))
    with pytest.raises(ValueError, match="purpose"):
        seed_for(0, "unknown")


def test_optimizer_step_clips_then_calls_the_hook_then_steps():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    seen = []
    norm = optimizer_step([w], opt, scaler, (w * torch.tensor([30.0, 40.0, 0.0])).sum(), 1.0,
                          after_clip=lambda: seen.append(w.grad.clone()))
    assert norm.item() == pytest.approx(50.0)
    assert torch.allclose(seen[0], torch.tensor([0.6, 0.8, 0.0]), atol=1e-6)  # clipped to norm 1 before the hook
    assert torch.allclose(w.detach(), torch.tensor([0.4, 0.2, 1.0]), atol=1e-6)


def test_sampling_uses_the_ema_weights_by_default(lmdb_path, codes, tmp_path):
    from model import load
    runs = tmp_path / "runs"
    assert train_run(lmdb_path, codes, runs, "exp", 3, "--set", "training.ema_decay=0.5") == 0
    ck = torch.load(runs / "exp" / "checkpoints" / "last.pt", weights_only=True)
    key = "out.2.weight"
    den = ck["networks"]["denoiser"]
    assert not torch.equal(den["ema"][key], den["raw"][key])
    assert torch.equal(load(runs / "exp" / "checkpoints" / "last.pt").net.state_dict()[key], den["ema"][key])
    assert torch.equal(load(runs / "exp" / "checkpoints" / "last.pt", raw=True).net.state_dict()[key],
                       den["raw"][key])
