"""The training recipe beyond the paper (configs.common.Recipe): loss-time sampling and weighting
(diffusion/weighting.py), the EMA and learning-rate schedules and Adam's constants (training/recipe.py), snapshots;
each against its formula, and the paper's recipe untouched."""

import json
import math

import numpy as np
import pytest
import torch

from configs import from_dict, get_preset, override, preset_names, to_dict
from diffusion import make_process
from diffusion.flow import FlowProcess
from diffusion.weighting import TimeRecipe
from runtime.errors import run_cli
from training import checkpoint as C
from training.ema import EMA
from training.loop import LoopSettings, Trainer
from training.posthoc import combine, reconstruct
from training.recipe import EMASchedule, lr_scale, power_gamma
from tests.helpers import ROOT, losses, train_run
from tests.test_loop import Toy


# -- loss weights --------------------------------------------------------------------------------------------------

def _abar(t):
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    return np.cumprod(1 - betas)[t]


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_min_snr_weight_of_the_discrete_process_is_its_formula(objective):
    t = torch.tensor([0, 10, 120, 300, 999])
    abar = _abar(t.numpy())
    snr = abar / (1 - abar)
    want = np.minimum(snr, 5.0) / (snr if objective == "eps" else snr + 1)
    got = TimeRecipe(weight="min_snr", gamma=5.0).weights(make_process(objective), t)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert got[0] < 1 and got[-1] == pytest.approx(1.0 if objective == "eps" else snr[-1] / (snr[-1] + 1), rel=1e-5)


def test_min_snr_weight_of_the_flow_is_its_formula():
    t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9])
    want = [0.0, min(0.81, 3 * 0.01), min(0.49, 3 * 0.09), 0.25, 0.01]
    got = TimeRecipe(weight="min_snr", gamma=3.0).weights(FlowProcess(), t)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_min_snr_makes_every_objective_min_snr_times_the_x0_error(objective):
    """The one definition: weight x (target error)^2 = min(SNR, gamma) x (error of the x0 the output implies)^2."""
    g = torch.Generator().manual_seed(0)
    process = make_process(objective)
    t = torch.tensor([5, 80, 400, 900]) if objective != "flow" else torch.tensor([0.05, 0.2, 0.6, 0.95])
    x0, noise, out = (torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = process.corrupt(x0, t, noise).double()
    if objective == "flow":
        snr = ((1 - t) / t).double() ** 2
        x0_hat = x_t - t.double().reshape(-1, 1, 1, 1) * out
    else:
        abar = torch.from_numpy(_abar(t.numpy()))
        snr = abar / (1 - abar)
        x0_hat = process.to_x0(x_t, t, out)
    err_target = (out - process.target(x0, t, noise).double()).square().flatten(1).mean(1)
    err_x0 = (x0_hat - x0).square().flatten(1).mean(1)
    w = process.min_snr_weight(t, 5.0)
    torch.testing.assert_close(w * err_target, snr.clamp(max=5.0) * err_x0, rtol=1e-5, atol=1e-9)


def test_uniform_weights_leave_the_terms_alone_and_min_snr_scales_each_sample():
    terms = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}
    process, t = make_process("v"), torch.tensor([10, 900])
    assert TimeRecipe().weigh(terms, process, t) is terms
    w = process.min_snr_weight(t, 5.0).float()
    out = TimeRecipe(weight="min_snr").weigh(terms, process, t)
    assert all(torch.equal(out[k], terms[k] * w) for k in terms)


# -- loss times ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("process", [make_process("v"), FlowProcess(eps=1e-3)], ids=["vp", "flow"])
def test_uniform_sampling_is_the_process_own_draw(process):
    a = TimeRecipe().draw(process, 64, torch.Generator().manual_seed(3))
    b = process.draw_t(64, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_logit_normal_flow_times_have_the_stated_distribution():
    t = TimeRecipe("logit_normal", mean=0.5, std=0.8).draw(FlowProcess(), 200_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1
    logit = torch.log(t.double() / (1 - t.double()))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, abs=0.01)


def test_logit_normal_steps_of_the_discrete_process_follow_the_histogram():
    """Step index k has probability P(k/T <= sigmoid(N(m, s)) < (k+1)/T): checked in 10 bins of 100 steps."""
    n, m, s = 200_000, -0.3, 1.2
    t = TimeRecipe("logit_normal", mean=m, std=s).draw(make_process("v"), n, torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    counts = np.bincount(t.numpy() // 100, minlength=10) / n
    edges = np.linspace(0, 1, 11)
    with np.errstate(divide="ignore"):
        logits = np.log(edges / (1 - edges))
    cdf = 0.5 * (1 + np.vectorize(math.erf)((logits - m) / (s * math.sqrt(2))))
    np.testing.assert_allclose(counts, np.diff(cdf), atol=0.004)


# -- the EMA and learning-rate schedules -------------------------------------------------------------------------

def test_ema_decays_at_a_few_updates():
    assert EMASchedule("constant", 0.999).decay_at(1) == 0.999
    warm = EMASchedule("warmup", 0.999)
    assert [warm.decay_at(n) for n in (1, 10, 100)] == [2 / 11, 11 / 20, 101 / 110]
    assert warm.decay_at(100_000) == 0.999
    power = EMASchedule("power", std=0.05)
    assert power.decay_at(1) == 0.0
    assert power.decay_at(1000) == pytest.approx((1 - 1e-3) ** (power_gamma(0.05) + 1))


@pytest.mark.parametrize("std,gamma", [(0.05, 16.97), (0.10, 6.94)])
def test_power_gamma_solves_edm2_relation(std, gamma):
    g = power_gamma(std)
    assert g == pytest.approx(gamma, abs=0.01)
    assert (g + 1) / ((g + 2) ** 2 * (g + 3)) == pytest.approx(std ** 2, rel=1e-9)


def _profile(schedule, n):
    """The weight of each of the n steps' weights in the EMA after n updates (by linearity)."""
    w = np.zeros(n)
    for k in range(1, n + 1):
        d = schedule.decay_at(k)
        w *= d
        w[k - 1] += 1 - d
    return w


def test_power_ema_averages_with_the_stated_relative_width():
    n = 2000
    w = _profile(EMASchedule("power", std=0.1), n)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)  # the first update already replaces the initial weights
    tau = np.arange(1, n + 1) / n
    mean = (w * tau).sum()
    assert math.sqrt((w * tau ** 2).sum() - mean ** 2) == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("schedule", [EMASchedule("constant", 0.99), EMASchedule("warmup", 0.999),
                                      EMASchedule("power", std=0.05)], ids=lambda s: s.kind)
def test_initial_share_is_the_product_of_the_decays(schedule):
    n = 300
    assert schedule.initial_share(n) == pytest.approx(1 - _profile(schedule, n).sum(), abs=1e-12)


def test_the_ema_update_takes_the_decay_it_is_given():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, 0.9)
    start = ema.model.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, 0.25)
    torch.testing.assert_close(ema.model.weight, 0.25 * start + 0.75 * net.weight)


def test_lr_scale_warms_up_then_decays_as_inverse_square_root():
    assert [lr_scale(s, 4) for s in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
    assert [lr_scale(s, 0, 100) for s in (0, 100, 400)] == [1.0, 1.0, 0.5]
    assert lr_scale(1, 4, 1) == pytest.approx(0.5 / 1.0)
    assert lr_scale(7, 0, 0) == 1.0


def test_the_loop_logs_the_scheduled_learning_rate(tmp_path):
    s = LoopSettings(max_steps=6, batch_size=8, save_every=6, log_every=1, lr_warmup=4, lr_decay_start=4)
    Trainer(Toy(), s, tmp_path / "toy", torch.device("cpu")).run_loop()
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "toy" / "stats.jsonl").read_text().splitlines()
           if "lr" in json.loads(r)]
    np.testing.assert_allclose(lrs, [0.1 * lr_scale(s, 4, 4) for s in range(6)], rtol=1e-12)


# -- snapshots -----------------------------------------------------------------------------------------------------

def test_snapshots_keep_the_ema_at_the_asked_steps_and_survive_resume(tmp_path):
    run = tmp_path / "toy"
    s = LoopSettings(max_steps=4, batch_size=8, save_every=100, log_every=1, snapshot_every=2)
    Trainer(Toy(), s, run, torch.device("cpu")).run_loop()
    ck = C.read(run / "checkpoints" / "last.pt")
    s = LoopSettings(max_steps=6, batch_size=8, save_every=100, log_every=1, snapshot_every=3, snapshot_raw=True)
    Trainer(Toy(), s, run, torch.device("cpu"), resume=ck).run_loop()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.pt", "step-0000002.pt", "step-0000004.pt", "step-0000006.pt"]
    two, six = (C.read(run / "checkpoints" / f"step-000000{k}.pt") for k in (2, 6))
    assert two["networks"]["regressor"]["raw"] is None and two["training"] is None
    assert two["networks"]["regressor"]["step"] == 2
    last = C.read(run / "checkpoints" / "last.pt")["networks"]["regressor"]
    for kind in ("raw", "ema"):
        assert all(torch.equal(six["networks"]["regressor"][kind][k], last[kind][k]) for k in last[kind])


# -- configs and the command line ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in preset_names() if n not in ("tiny", "small")])
def test_every_paper_preset_keeps_the_paper_recipe(name):
    cfg = get_preset(name)
    section = cfg.training if cfg.family == "patchdm" else cfg.flow_training
    assert (section.t_sampling, section.loss_weight, section.ema_schedule, section.lr_decay_start) == \
        ("uniform", "uniform", "constant", 0)
    assert tuple(section.adam_betas) == (0.9, 0.999) and section.adam_eps == 1e-8
    assert section.lr_warmup == (0 if cfg.family == "patchdm" else 100)


def test_a_pyramid_config_written_before_the_rename_reads_its_warmup():
    d = to_dict(get_preset("pyramid_small"))
    d["flow_training"]["warmup"] = d["flow_training"].pop("lr_warmup") + 7
    assert from_dict(d).flow_training.lr_warmup == 107


@pytest.mark.parametrize("bad,match", [
    ("training.ema_schedule=fast", "training.ema_schedule='fast': choose constant, warmup, power"),
    ("training.ema_std=0.3", "training.ema_std=0.3: must be in"),
    ("training.t_sampling=beta", "choose uniform, logit_normal"),
    ("training.loss_weight=snr", "choose uniform, min_snr"),
    ("training.min_snr_gamma=0", "must be above 0"),
    ("training.adam_betas=[0.9,1.0]", "must be two numbers in"),
    ("training.lr_warmup=-1", "must be at least 0"),
    ("training.ema_posthoc=[0.05,0.05]", "must be distinct widths"),
    ("training.ema_posthoc=[0.3]", "must be distinct widths"),
])
def test_bad_recipe_values_are_refused(bad, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("(", r"\(")):
        override(get_preset("small"), [bad]).validate()


RECIPE = ["--set", "training.loss_weight=min_snr", "training.t_sampling=logit_normal", "training.t_mean=-0.5",
          "training.ema_schedule=power", "training.lr_warmup=3", "training.adam_betas=[0.9,0.99]",
          "training.ema_posthoc=[0.05,0.1]", "--objective", "v"]


def test_recipe_options_are_recorded_and_survive_resume_exactly(lmdb_path, codes, tmp_path):
    runs = tmp_path / "runs"
    assert train_run(lmdb_path, codes, runs, "straight", 4, *RECIPE) == 0
    assert train_run(lmdb_path, codes, runs, "split", 2, *RECIPE) == 0
    assert train_run(lmdb_path, codes, runs, "split", 4, "--objective", "v") == 0  # the run keeps its own recipe
    assert train_run(lmdb_path, codes, runs, "plain", 4, "--objective", "v") == 0
    assert losses(runs / "split") == losses(runs / "straight") != losses(runs / "plain")
    a, b = (torch.load(runs / n / "checkpoints" / "last.pt", weights_only=True) for n in ("straight", "split"))
    assert a["config"]["training"]["loss_weight"] == "min_snr" and a["config"]["training"]["t_mean"] == -0.5
    a, b = a["networks"]["denoiser"], b["networks"]["denoiser"]
    assert all(torch.equal(a[w][k], b[w][k]) for w in ("raw", "ema") for k in a["raw"])
    assert all(torch.equal(a["posthoc"]["widths"][s][k], b["posthoc"]["widths"][s][k])
               for s in ("0.05", "0.1") for k in a["raw"])
    assert json.loads((runs / "split" / "config.json").read_text())["training"]["ema_schedule"] == "power"


def test_a_resumed_run_refuses_a_new_recipe(lmdb_path, codes, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_run(lmdb_path, codes, runs, "r", 2, "--objective", "v") == 0
    capsys.readouterr()
    assert train_run(lmdb_path, codes, runs, "r", 3, "--set", "training.loss_weight=min_snr") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "training.loss_weight" in err and len(err.splitlines()) == 1


# -- post-hoc EMA --------------------------------------------------------------------------------------------------

def _power_emas(theta, stds):
    """Each step's value of a power-function EMA of width std over the sequence theta, for each std."""
    out = {}
    for std in stds:
        schedule, e, seq = EMASchedule("power", std=std), 0.0, []
        for n, v in enumerate(theta, start=1):
            d = schedule.decay_at(n)
            e = d * e + (1 - d) * v
            seq.append(e)
        out[std] = seq
    return out


@pytest.mark.parametrize("std,step", [(0.075, 1000), (0.15, 1000), (0.075, 700)])
def test_posthoc_reconstruction_matches_the_ema_run_with_that_profile(std, step):
    g = np.random.default_rng(0)
    theta = np.cumsum(g.normal(size=1000)) * 0.1 + np.sin(np.arange(1000) / 40)  # a wandering weight
    tracked = _power_emas(theta, (0.05, 0.10))
    snaps = [(t, {s: {"w": torch.tensor([tracked[s][t - 1]])} for s in tracked}) for t in range(50, step + 1, 50)]
    sd, x = reconstruct(snaps, step, std)
    direct = _power_emas(theta[:step], (std,))[std][-1]
    assert abs(float(sd["w"]) - direct) < 2e-3 * np.std(theta)
    assert abs(float(sd["w"]) - tracked[0.05][step - 1]) > 0.02 * np.std(theta)  # not merely a stored average


def test_buffers_are_copied_from_the_last_snapshot_not_combined():
    states = [{"w": torch.tensor([1.0]), "u": torch.tensor([1.0, 0.0])},
              {"w": torch.tensor([3.0]), "u": torch.tensor([0.0, 1.0])}]
    out = combine(states, [0.5, 0.5], buffers={"u"})
    assert torch.equal(out["w"], torch.tensor([2.0])) and torch.equal(out["u"], torch.tensor([0.0, 1.0]))


class Drift(Toy):
    """A one-weight task whose optimum wanders with the step, so every average of its weight differs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.network = torch.nn.Linear(1, 1, bias=False)

    def loss_module(self):
        net = self.network

        class Loss(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, goal):
                return {"err": (self.net.weight.sum() - goal) ** 2 * torch.ones(2)}

        return Loss()

    def batch(self, step):
        return dict(goal=float(3 * math.sin(step / 15) + step / 40)), []

    def quartile(self, batch):
        return None


def test_posthoc_ema_from_a_runs_snapshots_matches_a_run_with_that_ema(tmp_path, capsys):
    import posthoc_ema
    kw = dict(max_steps=300, batch_size=1, save_every=1000, log_every=1000)
    Trainer(Drift(), LoopSettings(posthoc=(0.05, 0.1), snapshot_every=10, **kw), tmp_path / "ph",
            torch.device("cpu")).run_loop()
    Trainer(Drift(), LoopSettings(ema=EMASchedule("power", std=0.075), **kw), tmp_path / "direct",
            torch.device("cpu")).run_loop()
    out = tmp_path / "ema.pt"
    assert run_cli(posthoc_ema.main, ["-r", str(tmp_path / "ph"), "--std", "0.075", "-o", str(out)]) == 0
    assert "profile error" in capsys.readouterr().out
    got = C.read(out)["networks"]["regressor"]
    want = C.read(tmp_path / "direct" / "checkpoints" / "last.pt")["networks"]["regressor"]["ema"]["weight"]
    tracked = C.read(tmp_path / "ph" / "checkpoints" / "last.pt")["networks"]["regressor"]["posthoc"]["widths"]
    spread = float((tracked["0.05"]["weight"] - tracked["0.1"]["weight"]).abs())
    assert got["step"] == 300 and got["raw"] is None and "posthoc" not in got
    assert float((got["ema"]["weight"] - want).abs()) < 0.05 * spread


def test_posthoc_ema_refuses_bad_input_in_one_line(tmp_path, capsys):
    import posthoc_ema
    run = tmp_path / "plain"
    Trainer(Toy(), LoopSettings(max_steps=4, batch_size=8, save_every=4, snapshot_every=2), run,
            torch.device("cpu")).run_loop()
    (tmp_path / "taken.pt").write_bytes(b"mine")
    for argv, match in [(["-r", str(tmp_path / "nothing")], "is not a run folder"),
                        (["-r", str(run)], "holds no post-hoc averages"),
                        (["-r", str(run), "--step", "3"], "is not a snapshot's step"),
                        (["-r", str(run), "--std", "0.5"], "--std"),
                        (["-r", str(run), "-o", str(tmp_path / "taken.pt")], "already exists")]:
        argv = argv + (["--std", "0.1"] if "--std" not in argv else []) + (["-o", str(tmp_path / "x.pt")]
                                                                            if "-o" not in argv else [])
        capsys.readouterr()
        assert run_cli(posthoc_ema.main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and match in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "taken.pt").read_bytes() == b"mine" and not (tmp_path / "x.pt").exists()


# -- the small preset's recipe for v and flow ----------------------------------------------------------------------

def _dry(capsys, *argv):
    import train
    assert run_cli(train.main, ["--config", "small", "--dry_run", "--device", "cpu", *argv]) == 0
    return json.loads(capsys.readouterr().out)["training"]


@pytest.mark.parametrize("objective,lr", [("v", 1e-3), ("flow", 6e-4)])
def test_a_new_small_v_or_flow_run_takes_its_small_recipe_and_set_still_wins(capsys, objective, lr):
    from configs.patchdm import SMALL_RECIPES
    assert set(SMALL_RECIPES) == {"v", "flow"}
    recipe = SMALL_RECIPES[objective]
    assert (recipe["ema_schedule"], recipe["ema_std"], recipe["t_sampling"]) == ("power", 0.05, "logit_normal")
    got = _dry(capsys, "--objective", objective)
    assert {k: got[k] for k in recipe} == recipe and got["lr"] == lr
    assert got["code_lr_scale"] == (30.0 if objective == "v" else 1.0)
    assert _dry(capsys, "--objective", objective, "--set", "training.ema_schedule=constant")["ema_schedule"] == \
        "constant"


@pytest.mark.parametrize("objective", [None, "eps"])
def test_eps_flow_and_a_resumed_small_run_keep_their_recipe(capsys, objective):
    import train
    paper = json.loads(json.dumps(to_dict(get_preset("small"))["training"]))
    got = _dry(capsys, *(["--objective", objective] if objective else []))
    assert got == paper
    saved = get_preset("small")
    saved.diffusion.objective = "v"  # a v run made before the small recipe existed
    args = train.build_parser().parse_args(["--objective", "v", "--device", "cpu"])
    cfg, _ = train.resolve_config(args, "cpu", saved)
    assert to_dict(cfg.training) == to_dict(get_preset("small").training)


def test_the_patchdm_window_loss_is_weighted_per_image(tiny_cfg):
    from model.patchdm.builders import build_patchdm
    from model.patchdm.training import LossStep
    torch.manual_seed(0)
    net = build_patchdm(tiny_cfg.model, 4).eval()
    p, (h, w) = tiny_cfg.model.patch_size, tiny_cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, h, w, generator=g), torch.randn(2, 3, 2 * p, 2 * p, generator=g)
    t, process = torch.tensor([30, 700]), make_process("v")
    args = dict(x0=x0, index=torch.tensor([0, 3]), t=t, noise=noise, window=(0, 1))
    plain = LossStep(net, p, (h, w), process)(**args)
    weighted = LossStep(net, p, (h, w), process, weighting=TimeRecipe(weight="min_snr"))(**args)
    w8 = process.min_snr_weight(t, 5.0).float()
    assert all(torch.allclose(weighted[k], plain[k] * w8) for k in plain) and not torch.allclose(w8, torch.ones(2))


def test_the_quick_start_samples_the_ema_only_when_it_is_usable(tmp_path):
    """scripts/quickstart.py: EMA weights for a small v run (power EMA), raw ones where the EMA is still young."""
    import importlib.util
    from configs.patchdm import recipe_defaults
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    qs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qs)
    for objective, steps, usable in [("v", 2000, True), ("v", 20, True), ("eps", 2000, False), ("eps", 40000, True)]:
        run = tmp_path / f"{objective}{steps}"
        run.mkdir()
        cfg = get_preset("small")
        cfg.diffusion.objective = objective
        recipe_defaults(cfg)
        (run / "config.json").write_text(json.dumps(to_dict(cfg)))
        assert qs.usable_ema(run, steps) is usable, (objective, steps)
