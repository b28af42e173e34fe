"""The shared training loop with a task that is no Patch-DM at all (a toy regression with two loss terms): any family's
task trains, logs every term, checkpoints in the v2 format, resumes exactly and stops on a non-finite loss."""

import json

import pytest
import torch
from torch import nn

from runtime.errors import CLIError
from runtime.rng import rng
from training import checkpoint as C
from training.loop import LoopSettings, Task, Trainer
from training.recipe import EMASchedule


class Toy(Task):
    name, family = "regressor", "toy"

    def __init__(self, poison_at=None):
        torch.manual_seed(0)
        self.network = nn.Linear(4, 2)
        self.target = nn.Linear(4, 2)
        self.poison_at = poison_at

    def config_dict(self):
        return {"family": "toy", "lr": 0.1}

    def optimizer(self):
        return torch.optim.SGD(self.network.parameters(), lr=0.1)

    def loss_module(self):
        net, target = self.network, self.target

        class Loss(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x, scale):
                err = (self.net(x) - target(x).detach()) ** 2
                return {"first": err[:, 0] * scale, "second": err[:, 1]}

        return Loss()

    def batch(self, step):
        x = torch.randn(8, 4, generator=rng(0, "noise", step))
        scale = float("nan") if step == self.poison_at else 1.0
        return dict(x=x, scale=scale), ([{"note": "first batch"}] if step == 0 else [])

    def quartile(self, batch):
        return torch.arange(8) % 4

    def checkpoint_base(self):
        return C.make(self.family, self.config_dict(), {}, extra={"answer": 42})


def settings(steps, **recipe):
    recipe.setdefault("ema", EMASchedule(decay=0.5))
    return LoopSettings(max_steps=steps, batch_size=8, save_every=2, log_every=1, unit="things", **recipe)


def rows(run):
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_any_task_trains_logs_every_term_and_checkpoints(tmp_path):
    run = tmp_path / "toy"
    assert Trainer(Toy(), settings(4), run, torch.device("cpu")).run_loop() == 4
    logged = rows(run)
    assert logged[0] == {**logged[0], "step": 0, "note": "first batch"}
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and steps[-1]["samples"] == 32
    for r in steps:
        assert r["loss"] == pytest.approx(r["first"] + r["second"], rel=1e-6)
        assert len(r["loss_q"]) == 4 and "things_per_s" in r
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns
    ck = C.read(run / "checkpoints" / "last.pt")
    assert ck["family"] == "toy" and ck["extra"] == {"answer": 42} and ck["training"]["network"] == "regressor"
    entry = ck["networks"]["regressor"]
    assert entry["step"] == 4 and entry["samples"] == 32 and not torch.equal(entry["raw"]["weight"],
                                                                              entry["ema"]["weight"])
    assert json.loads((run / "config.json").read_text()) == {"family": "toy", "lr": 0.1}


RECIPES = {"paper": {}, "schedules": dict(ema=EMASchedule("power", std=0.1), lr_warmup=4, lr_decay_start=2,
                                           snapshot_every=2, posthoc=(0.05, 0.1))}


@pytest.mark.parametrize("recipe", RECIPES)
def test_resume_is_exact(tmp_path, recipe):
    recipe = RECIPES[recipe]
    Trainer(Toy(), settings(6, **recipe), tmp_path / "straight", torch.device("cpu")).run_loop()
    Trainer(Toy(), settings(3, **recipe), tmp_path / "cut", torch.device("cpu")).run_loop()
    ck = C.read(tmp_path / "cut" / "checkpoints" / "last.pt")
    Trainer(Toy(), settings(6, **recipe), tmp_path / "cut", torch.device("cpu"), resume=ck).run_loop()
    a, b = (C.read(tmp_path / n / "checkpoints" / "last.pt")["networks"]["regressor"] for n in ("straight", "cut"))
    assert all(torch.equal(a[w][k], b[w][k]) for w in ("raw", "ema") for k in a["raw"])
    if recipe.get("posthoc"):
        assert all(torch.equal(a["posthoc"]["widths"][s][k], b["posthoc"]["widths"][s][k])
                   for s in ("0.05", "0.1") for k in a["raw"])
    assert [r["loss"] for r in rows(tmp_path / "cut") if "loss" in r] == \
        [r["loss"] for r in rows(tmp_path / "straight") if "loss" in r]


def test_a_nonfinite_loss_stops_without_saving(tmp_path):
    run = tmp_path / "toy"
    Trainer(Toy(), settings(2), run, torch.device("cpu")).run_loop()
    before = (run / "checkpoints" / "last.pt").read_bytes()
    ck = C.read(run / "checkpoints" / "last.pt")
    with pytest.raises(CLIError, match="non-finite loss before step 3"):
        Trainer(Toy(poison_at=2), settings(6), run, torch.device("cpu"), resume=ck).run_loop()
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
