"""The Pyramid Diffusion Model's flow half (model/pyramid/ncsnpp.py, flow.py, flow_training.py): FIR resampling, the
Pyramid NCSN++'s shapes and branches, decreasing dropout, the latent scaler, the loss times and the loss, Euler and
RK45, and the train_latent -> test command lines."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from configs import get_preset, override
from diffusion import samplers as S
from diffusion.flow import FlowProcess
from diffusion.ode import rk45
from diffusion.weighting import TimeRecipe
from model import load
from model.pyramid.builders import build_autoencoder, build_flow
from model.pyramid.fir import down2, kernel, up2
from model.pyramid.flow import FlowLoss, LatentScaler
from model.pyramid.ncsnpp import PyramidNCSNpp, level_dropout
from runtime.errors import run_cli
from tests.conftest import randomize
from tests.helpers import load_script
from tests.test_pyramid import train_ae


def direct_upfirdn(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple) -> np.ndarray:
    """upfirdn on one 2-D array by its definition, with loops: zero insertion, padding, convolution, decimation."""
    h, w = x.shape
    u = np.zeros((h * up, w * up))
    u[::up, ::up] = x
    u = np.pad(u, ((pad[0], pad[1]), (pad[0], pad[1])))
    kh, kw = k.shape
    out = np.zeros((u.shape[0] - kh + 1, u.shape[1] - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = sum(u[i + a, j + b] * k[kh - 1 - a, kw - 1 - b] for a in range(kh) for b in range(kw))
    return out[::down, ::down]


def test_fir_resampling_matches_a_direct_upfirdn():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    up, down = up2(x), down2(x)
    assert up.shape == (2, 3, 8, 12) and down.shape == (2, 3, 2, 3)
    k4, k1 = kernel(gain=4.0).double().numpy(), kernel().double().numpy()
    for c in range(3):
        np.testing.assert_allclose(up[1, c].numpy(), direct_upfirdn(x[1, c].numpy(), k4, 2, 1, (2, 1)), atol=1e-12)
        np.testing.assert_allclose(down[1, c].numpy(), direct_upfirdn(x[1, c].numpy(), k1, 1, 2, (1, 1)), atol=1e-12)
    inner = up2(torch.ones(1, 1, 6, 6))[0, 0, 2:-2, 2:-2]
    assert torch.allclose(inner, torch.ones_like(inner))  # a constant stays constant away from the zero padding


def small_net(**over) -> PyramidNCSNpp:
    kw = dict(channels=8, channel_mult=(1, 2, 2), blocks=1, attention=(1, 2), branches=((1, 4), (2, 6)))
    kw.update(over)
    torch.manual_seed(0)
    return randomize(PyramidNCSNpp(2, **kw).eval(), std=0.1)


@pytest.mark.parametrize("progressive", ["res_skip", "output_skip", "residual", "none"])
@pytest.mark.parametrize("progressive_input", ["input_skip", "residual", "res_skip", "none"])
def test_every_latent_gets_its_velocity_on_2_to_1_latents(progressive, progressive_input):
    net = small_net(progressive=progressive, progressive_input=progressive_input)
    zs = (torch.randn(2, 2, 8, 16), torch.randn(2, 4, 4, 8), torch.randn(2, 6, 2, 4))
    out = net(zs, torch.tensor([10.0, 900.0]))
    assert [o.shape for o in out] == [z.shape for z in zs]
    assert all(o.abs().sum() > 0 for o in out)


@pytest.mark.parametrize("preset", ["pyramid_small", "pyramid_single", "pyramid_2k"])
def test_the_presets_flow_network_fits_their_latents(preset):
    cfg = get_preset(preset)
    if preset == "pyramid_2k":  # untrained and narrow: the shapes, not the cost
        cfg = override(cfg, ["autoencoder.channels=4", "flow.channels=8"])
    ae, flow = build_autoencoder(cfg.autoencoder), build_flow(cfg).eval()
    shapes = ae.latent_shapes(*cfg.sampling.image_size)
    zs = tuple(torch.randn(1, *s) for s in shapes)
    with torch.no_grad():
        out = flow(zs, torch.tensor([500.0]))
    assert [o.shape for o in out] == [z.shape for z in zs]
    assert len(flow.network.branches) == len(shapes) - 1


def test_with_the_branches_removed_it_is_the_plain_network():
    branched, plain = small_net(), small_net(branches=())
    backbone = {k: v for k, v in branched.state_dict().items() if not k.startswith(("branches.", "heads."))}
    plain.load_state_dict(backbone)  # strict: the branches add modules and change none of the backbone's
    assert len(backbone) < len(branched.state_dict())
    z, t = torch.randn(2, 2, 8, 16), torch.tensor([100.0, 700.0])
    with torch.no_grad():
        with_branches = branched((z, torch.randn(2, 4, 4, 8), torch.randn(2, 6, 2, 4)), t)[0]
        branched.branches, branched.heads, branched.branch_levels = torch.nn.ModuleList(), torch.nn.ModuleList(), ()
        assert torch.equal(branched(z, t), plain(z, t))
    assert not torch.allclose(with_branches, plain(z, t))  # the branches do reach the finest latent's velocity


def test_decreasing_dropout_falls_linearly_from_the_coarsest_level():
    assert level_dropout(0.35, 4) == pytest.approx([0.0, 0.35 / 3, 0.7 / 3, 0.35])
    assert level_dropout(0.35, 4, "constant") == [0.35] * 4
    net = PyramidNCSNpp(2, 8, (1, 2, 2, 2), 1, (), dropout=0.35, spectral_norm=False)
    rates = [level[0].res.block2[2].p for level in net.down]
    assert rates == pytest.approx([0.0, 0.35 / 3, 0.7 / 3, 0.35])
    assert net.mid[0].res.block2[2].p == 0.35 and [lv[0].res.block2[2].p for lv in net.up][::-1] == rates


def test_the_latent_scale_freezes_after_its_iterations_and_leaves_small_latents_alone():
    s = LatentScaler(2, iterations=100, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        s.observe((3 * torch.randn(64, 4, 4, 4, generator=g), 0.5 * torch.randn(64, 4, 4, 4, generator=g)))
    assert s.frozen and abs(float(s.std[0]) - 3) < 0.1 and abs(float(s.std[1]) - 0.5) < 0.05
    before = s.std.clone()
    s.observe((100 * torch.randn(8, 4, 4, 4), 100 * torch.randn(8, 4, 4, 4)))
    assert torch.equal(s.std, before)
    assert s.factors()[0] == pytest.approx(1 / float(before[0])) and s.factors()[1] == 1.0
    z = (torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4))
    assert all(torch.allclose(a, b) for a, b in zip(s.unscale(s.scale(z)), z))


def test_about_eps_of_the_loss_times_sit_at_the_data_end():
    t = FlowProcess(eps=0.1).draw_t(200_000, torch.Generator().manual_seed(0))
    assert float(t.min()) == 0.0 and float(t.max()) <= 0.9
    assert abs(float((t == 0).float().mean()) - 0.1) < 0.005
    assert FlowProcess(10, eps=0.1).time(9) == pytest.approx(0.9) and FlowProcess(10, eps=0.1).time(-1) == 0.0


class Oracle(torch.nn.Module):
    """A stand-in flow model returning fixed velocities."""

    def __init__(self, out):
        super().__init__()
        self.out, self.scaler = out, LatentScaler(len(out), iterations=0)

    def forward(self, zs, t):
        return self.out


def test_the_loss_is_zero_at_the_target_and_a_hand_computation_otherwise():
    process = FlowProcess(eps=1e-3)
    z = (torch.randn(3, 2, 4, 8), torch.randn(3, 4, 2, 4))
    noise = (torch.randn(3, 2, 4, 8), torch.randn(3, 4, 2, 4))
    t = torch.tensor([0.0, 0.5, 0.9])
    target = tuple(n - a for a, n in zip(z, noise))
    terms = FlowLoss(Oracle(target), process).eval()(z, t, noise)
    assert set(terms) == {"z0", "z1"} and all(float(v.abs().max()) == 0 for v in terms.values())
    zero = (torch.zeros(3, 2, 4, 8), torch.zeros(3, 4, 2, 4))
    terms = FlowLoss(Oracle(zero), process).eval()(z, t, noise)
    for i in range(2):
        hand = [float(((noise[i][b] - z[i][b]) ** 2).sum()) / z[i][b].numel() for b in range(3)]
        assert terms[f"z{i}"].tolist() == pytest.approx(hand, rel=1e-5)


def test_the_recipe_weights_each_sample_of_the_flow_loss():
    process = FlowProcess(eps=1e-3)
    z = (torch.randn(3, 2, 4, 8), torch.randn(3, 4, 2, 4))
    noise = (torch.randn(3, 2, 4, 8), torch.randn(3, 4, 2, 4))
    t, zero = torch.tensor([0.1, 0.5, 0.9]), (torch.zeros(3, 2, 4, 8), torch.zeros(3, 4, 2, 4))
    plain = FlowLoss(Oracle(zero), process).eval()(z, t, noise)
    weighted = FlowLoss(Oracle(zero), process, TimeRecipe(weight="min_snr", gamma=5.0)).eval()(z, t, noise)
    w = torch.tensor([min(0.81, 0.05), 0.25, 0.01])
    assert all(torch.allclose(weighted[k], plain[k] * w) for k in plain)


def point_mass_velocity(a: tuple):
    """The exact rectified-flow velocity when the data is the single point a: v = (x - a) / t (t > 0)."""
    def model_fn(x, t, i):
        tt = t[0].item() / 1000.0
        return tuple((xe - ae) / tt for xe, ae in zip(x, a))
    return model_fn


def gaussian_velocity(m: float, s: float):
    """The exact velocity when every value of the data is N(m, s^2): with x_t = (1 - t) z + t n,
    v = E[n - z | x_t] = (t - (1 - t) s^2) / var_t * (x - (1 - t) m) - m, var_t = (1 - t)^2 s^2 + t^2."""
    def model_fn(x, t, i):
        tt = t[0].item() / 1000.0
        var = (1 - tt) ** 2 * s * s + tt * tt
        return tuple((tt - (1 - tt) * s * s) / var * (xe - (1 - tt) * m) - m for xe in x)
    return model_fn


def gaussian_end(x_T: tuple, m: float, s: float, t: float) -> tuple:
    """Where the Gaussian flow's ODE takes x_T from time t to 0: the map is affine, m + s (x - (1 - t) m) / sd_t."""
    sd = ((1 - t) ** 2 * s * s + t * t) ** 0.5
    return tuple(m + s * (x - (1 - t) * m) / sd for x in x_T)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_euler_and_heun_are_exact_on_straight_paths(solver):
    a = (torch.randn(2, 3, 4, 8, dtype=torch.float64), torch.randn(2, 5, 2, 4, dtype=torch.float64))
    x_T = tuple(torch.randn_like(e) for e in a)
    end = S.sample(solver, point_mass_velocity(a), x_T, FlowProcess(7, eps=1e-3), clip_x0=False)
    assert all(torch.allclose(e, ae, atol=1e-10) for e, ae in zip(end, a))


@pytest.mark.parametrize("solver, steps, tol", [("euler", 200, 2e-2), ("heun", 50, 5e-3), ("rk45", 0, 1e-4)])
def test_euler_and_rk45_reach_an_analytic_flows_end_point(solver, steps, tol):
    m, s = 0.7, 0.3
    x_T = (torch.randn(2, 3, 4, 8, dtype=torch.float64), torch.randn(2, 5, 2, 4, dtype=torch.float64))
    process = FlowProcess(max(steps, 1), eps=1e-3)
    if solver == "rk45":
        end, nfe = rk45(gaussian_velocity(m, s), x_T, process)
        assert 6 <= nfe < 200
    else:
        end = S.sample(solver, gaussian_velocity(m, s), x_T, process, clip_x0=False)
    exact = gaussian_end(x_T, m, s, 1 - 1e-3)
    err = max(float((e - x).abs().max()) for e, x in zip(end, exact))
    assert err < tol
    assert max(float((x - xt).abs().max()) for x, xt in zip(exact, x_T)) > 0.5  # the flow does move the state


# -- the command lines ---------------------------------------------------------------------------------------------

def train_flow(ae_ckpt, runs, name, steps, *extra):
    train_latent = load_script("train_latent")
    return run_cli(train_latent.main, ["-m", str(ae_ckpt), "-n", name, "--max_steps", str(steps), "--log_every", "1",
                                       "--device", "cpu", "--runs_dir", str(runs), *extra])


@pytest.fixture(scope="module")
def tiny_ae(lmdb_path, tmp_path_factory):
    runs = tmp_path_factory.mktemp("ae_runs")
    assert train_ae(lmdb_path, runs, "ae", 2) == 0
    return runs / "ae" / "checkpoints" / "last.pt"


def test_train_latent_then_generate_through_the_command_lines(tiny_ae, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_flow(tiny_ae, runs, "flow", 4) == 0
    run = runs / "flow"
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all({"z0", "z1", "std0", "std1"} <= set(r) for r in rows)
    assert (run / "samples" / "0000004.png").exists()
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(ck["networks"]) == {"autoencoder", "flow"}
    bundle = load(run / "checkpoints" / "last.pt", raw=True)  # the scales and settings come from the checkpoint
    assert bundle.kind == "full" and int(bundle.flow.scaler.seen) == 3  # pyramid_tiny estimates over 3 steps
    assert torch.equal(bundle.flow.scaler.std, ck["networks"]["flow"]["raw"]["scaler.std"])
    assert bundle.cfg.flow_training.eps == 1e-3
    test = load_script("test")
    for sampler in ("euler", "rk45"):
        out = tmp_path / sampler
        capsys.readouterr()
        assert run_cli(test.main, ["-f", str(run / "checkpoints" / "last.pt"), "-g", str(out), "--img_num", "3",
                                   "-b", "2", "--device", "cpu", "--sampler", sampler, "--raw"]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png", "generation.json"]
        assert Image.open(out / "0.png").size == (24, 16)
        if sampler == "rk45":
            assert "rk45 used" in capsys.readouterr().out
    big = tmp_path / "big"
    assert run_cli(test.main, ["-f", str(run / "checkpoints" / "last.pt"), "-g", str(big), "--img_num", "1",
                               "--device", "cpu", "--image_size", "32x64", "--steps", "2"]) == 0
    assert Image.open(big / "0.png").size == (64, 32)


FLOW_RECIPES = {"paper": [], "recipe": ["--set", "flow_training.loss_weight=min_snr",
                                      "flow_training.t_sampling=logit_normal", "flow_training.ema_schedule=power",
                                      "flow_training.lr_decay_start=2"]}


@pytest.mark.parametrize("recipe", FLOW_RECIPES)
def test_resume_is_exact(tiny_ae, tmp_path, recipe):
    runs, extra = tmp_path / "runs", FLOW_RECIPES[recipe]
    assert train_flow(tiny_ae, runs, "straight", 5, *extra) == 0
    assert train_flow(tiny_ae, runs, "cut", 2, *extra) == 0
    assert train_flow(tiny_ae, runs, "cut", 5) == 0  # the run keeps its own recipe
    rows = {n: [json.loads(line)["loss"] for line in (runs / n / "stats.jsonl").read_text().splitlines()]
            for n in ("straight", "cut")}
    assert rows["cut"] == rows["straight"]
    a, b = (torch.load(runs / n / "checkpoints" / "last.pt", weights_only=True)["networks"]["flow"]
            for n in ("straight", "cut"))
    assert all(torch.equal(a[w][k], b[w][k]) for w in ("raw", "ema") for k in a[w])


def test_bad_input_gets_one_line(tiny_ae, tmp_path, capsys, photos):
    runs = tmp_path / "runs"
    assert train_flow(tiny_ae, runs, "flow", 1) == 0
    full = runs / "flow" / "checkpoints" / "last.pt"
    test = load_script("test")
    cases = [
        (load_script("train_latent").main, ["-m", str(tiny_ae), "-n", "x", "--objective", "v", "--runs_dir",
                                            str(runs)], "Patch-DM setting"),
        (load_script("train_latent").main, ["-m", str(full), "-n", "y", "--runs_dir", str(runs)], "full checkpoint"),
        (load_script("train_latent").main, ["-m", str(tiny_ae), "-n", "z", "--runs_dir", str(runs), "--set",
                                            "autoencoder.channels=4"], "autoencoder's settings"),
        (load_script("train_latent").main, ["-m", str(tiny_ae), "-n", "w", "--runs_dir", str(runs), "--set",
                                            "flow.progressive=sideways"], "flow.progressive"),
        (test.main, ["-f", str(tiny_ae), "-g", str(tmp_path / "o1")], "train_latent.py"),
        (test.main, ["-f", str(full), "-g", str(tmp_path / "o2"), "--codes", "0", "--raw"], "Patch-DM option"),
        (test.main, ["-f", str(full), "-g", str(tmp_path / "o2"), "--seamless", "--raw"], "Patch-DM option"),
        (test.main, ["-f", str(full), "-g", str(tmp_path / "o3"), "--sampler", "ddim", "--raw"], "euler, heun or rk45"),
        (test.main, ["-f", str(full), "-g", str(tmp_path / "o4"), "--image_size", "15x24", "--raw"], "image size"),
        (load_script("paint").main, ["outpaint", "-f", str(full), "-i", str(photos / "img0.jpg"), "--canvas",
                                     "32x64", "-o", str(tmp_path / "o5.png")], "only patchdm checkpoints can paint"),
    ]
    for main, argv, words in cases:
        capsys.readouterr()
        assert run_cli(main, argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and words in err[0], (argv, err)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5)) and not (tmp_path / "o5.png").exists()
    assert not any((runs / n).exists() for n in ("x", "y", "z", "w"))
