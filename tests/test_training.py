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
    net.train()(torch.randn(8, 3))  # moves the batch-norm running statistics (buffers follow the same rule)
    now = {k: v.clone() for k, v in net.state_dict().items()}
    ema.update(net)
    for k, v in ema.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.9 * start[k] + 0.1 * now[k], atol=1e-6), k
        else:
            assert torch.equal(v, now[k]), k  # integer buffers (num_batches_tracked) are copied
    assert all(not p.requires_grad for p in ema.model.parameters()) and not ema.model.training


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
