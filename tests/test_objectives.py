"""The training objectives beyond the paper (v-prediction, rectified flow) next to the paper's eps: their loss targets
by hand, oracle sampling, the conversions, and every sampling path with each objective."""

import math

import numpy as np
import pytest
import torch

from configs import DiffusionConfig
from diffusion import FlowProcess, ddim, repaint
from diffusion.samplers import one_step
from model.patchdm import CanvasOptions, Denoiser, Window
from model.patchdm.grid import window_crop
from model.patchdm.sampling import image_process, per_image_noise, sample_canvas
from runtime.errors import run_cli
from tests.helpers import load_script, train_run

P, D = 8, 512
OBJECTIVES = ["eps", "v", "flow"]


def process(objective):
    return image_process(DiffusionConfig(objective=objective))


def hand_abar(t):
    """alphas_cumprod of the linear 1e-4..0.02 schedule at integer t, computed here in numpy float64."""
    return np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_target_by_hand(tiny_unet, objective):
    """Each objective's two window terms equal the collage mode's terms on a hand-made x_t and target: x_t with the
    padding zeroed, the network fed the objective's time input."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 16, 24, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 2 * P, 2 * P, generator=g)
    code = torch.randn(2, D, generator=g)
    window = (1, 1)
    x0_win, mask = window_crop(x0, window, P)
    if objective == "flow":
        t = torch.tensor([0.1, 0.85])
        tt = t[:, None, None, None]
        x_t, target, net_t = (1 - tt) * x0_win + tt * noise, noise - x0_win, t * 1000
    else:
        t = torch.tensor([10, 700])
        a = torch.tensor(hand_abar(t.numpy()), dtype=torch.float32)[:, None, None, None]
        x_t = a.sqrt() * x0_win + (1 - a).sqrt() * noise
        target = noise if objective == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0_win
        net_t = t
    den = Denoiser(tiny_unet, P)
    with torch.no_grad():
        mine = den.loss_terms(Window(x0_win, mask, noise, window), t, code, process(objective))
        hand = den.mode.loss_terms(tiny_unet, x_t * mask, target, mask, net_t, window, code, P)
        eps_terms = den.loss_terms(Window(x0_win, mask, noise, window), torch.tensor([10, 700]), code, process("eps"))
    for a_, b_ in zip(mine, hand):
        assert torch.allclose(a_, b_, rtol=1e-5, atol=1e-7), (objective, mine, hand)
    if objective != "eps":  # the target really changed
        assert not torch.allclose(mine[0], eps_terms[0], rtol=1e-2)


def test_eps_objective_is_the_schedule_of_earlier_versions():
    """The default process is the paper's: eps target, q_sample corruption, integer time input."""
    from diffusion import make_process
    s = process("eps")
    assert s is make_process() and s.prediction == "eps"
    x0, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([3, 900])
    assert torch.equal(s.corrupt(x0, t, noise), s.q_sample(x0, t, noise))
    assert s.target(x0, t, noise) is noise and s.net_t(t) is t


def test_v_to_eps_round_trip():
    s = process("v").respace(50)
    x_t, v = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    for i in (0, 17, 49):
        eps = s.to_eps(x_t, i, v)
        assert torch.allclose(s.v_from_eps(x_t, i, eps), v, atol=1e-5)
    # and the v target of a noised x0 converts back to its noise
    full = process("v")
    x0, noise, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8), torch.tensor([5, 990])
    v = full.target(x0, t, noise)
    x_t = full.corrupt(x0, t, noise)
    for k in range(2):
        assert torch.allclose(full.to_eps(x_t[k:k + 1], int(t[k]), v[k:k + 1]), noise[k:k + 1], atol=1e-4)


def oracle(objective, x0):
    """The network output that knows x0: eps, v or the velocity implied by x_t and x0 at the network time t."""
    def fn(x_t, t, i=None):
        if objective == "flow":
            s = (t.float() / 1000)[:, None, None, None]
            return (x_t - (1 - s) * x0) / s - x0
        a = torch.tensor(hand_abar(t.numpy()), dtype=torch.float32)[:, None, None, None]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if objective == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
    return fn


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_oracle_sampling_returns_x0(objective, clip, steps):
    x0 = torch.rand(2, 3, 16, 24) * 1.8 - 0.9
    out = ddim(oracle(objective, x0), torch.randn(2, 3, 16, 24), process(objective).respace(steps), clip_x0=clip)
    assert torch.allclose(out, x0, atol=1e-3), (out - x0).abs().max()


def test_flow_step_is_euler_and_clipping_only_thresholds():
    s = FlowProcess(4)
    x, v = torch.randn(1, 3, 4, 4) * 0.1, torch.randn(1, 3, 4, 4) * 0.1
    assert torch.allclose(s.step(x, 3, v, clip_x0=False), x - 0.25 * v)
    assert torch.allclose(s.step(x, 3, v, clip_x0=True), x - 0.25 * v, atol=1e-6)  # nothing to clip
    big = torch.full((1, 3, 4, 4), 3.0)  # x0 = x - t v far outside [-1, 1]
    assert not torch.allclose(s.step(big, 3, -big, clip_x0=True), big + 0.25 * big)


def test_flow_renoise_keeps_the_marginal():
    """RePaint's re-noising goes from t = i/N back to (i + 1)/N with the path's own marginal."""
    s = FlowProcess(5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.3)
    i = 2
    x_s = s.q_sample(x0, i - 1, torch.randn(x0.shape, generator=g))  # at t = i/N
    x_t = s.renoise(x_s, i, torch.randn(x0.shape, generator=g))
    t = s.time(i)
    assert abs(x_t.mean().item() - (1 - t) * 0.3) < 5e-3
    assert abs(x_t.std().item() - t) < 5e-3


@pytest.mark.parametrize("objective", ["v", "flow"])
@pytest.mark.parametrize("w,band", [(0.0, 1), (0.5, 2)])
def test_banded_streamed_sampling_equals_all_at_once(tiny_unet64, objective, w, band):
    sched = process(objective).respace(4)
    den = Denoiser(tiny_unet64, P)
    x_T, code = torch.randn(2, 3, 40, 16, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64)
    a = sample_canvas(den, x_T, code, sched, opts=CanvasOptions(w))
    b = sample_canvas(den, x_T, code, sched, opts=CanvasOptions(w, band_rows=band))
    c = sample_canvas(den, x_T, code, sched, opts=CanvasOptions(w, wrap="x"))
    assert (a - b).abs().max() < 1e-9  # float64: rounding is far below a band bug
    assert (a - c).abs().max() > 1e-2  # wrap changes the canvas edges: it ran


@pytest.mark.parametrize("objective", ["v", "flow"])
@pytest.mark.parametrize("collage", ["pixel_fixed", "pixel_random", "none"])
def test_ablation_samplers_follow_the_objective(tiny_unet64, objective, collage):
    den = Denoiser(tiny_unet64, P, collage)
    x_T, code = torch.randn(1, 3, 16, 24, dtype=torch.float64), torch.randn(1, D, dtype=torch.float64)
    out = sample_canvas(den, x_T, code, process(objective).respace(3), opts=CanvasOptions(seed=1))
    eps_out = sample_canvas(den, x_T, code, process("eps").respace(3), opts=CanvasOptions(seed=1))
    banded = sample_canvas(den, x_T, code, process(objective).respace(3), opts=CanvasOptions(seed=1, band_rows=1))
    assert torch.isfinite(out).all() and (out - eps_out).abs().max() > 1e-3
    assert (out - banded).abs().max() < 1e-9


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_repaint_keeps_known_pixels_for_every_objective(objective):
    sched = process(objective).respace(5)
    x0 = torch.rand(1, 3, 16, 24) * 2 - 1
    mask = torch.zeros(1, 1, 16, 24)
    mask[..., :, :12] = 1
    step = one_step(oracle(objective, x0), sched)
    out = repaint(step, torch.randn(1, 3, 16, 24), sched, x0, mask, resample=2)
    assert torch.equal(out[..., :12], x0[..., :12])
    assert torch.allclose(out, x0, atol=1e-3)  # the oracle also fills the rest with x0


@pytest.fixture(scope="module")
def trained(lmdb_path, codes, tmp_path_factory):
    runs = tmp_path_factory.mktemp("objective_runs")
    out = {}
    for objective in OBJECTIVES:
        assert train_run(lmdb_path, codes, runs, objective, 3, "--objective", objective) == 0
        out[objective] = runs / objective / "checkpoints" / "last.pt"
    return out


def test_objective_is_stored_and_followed_by_test_py(trained, tmp_path):
    """train -> sample per objective through the CLIs: test.py reads the objective from the checkpoint (its images
    are the ones the stored objective's process gives, and differ from what the eps process would give)."""
    from model import load
    test = load_script("test")
    for objective, ckpt in trained.items():
        bundle = load(ckpt, raw=True)
        assert bundle.cfg.diffusion.objective == objective
        out = tmp_path / objective
        assert run_cli(test.main, ["-f", str(ckpt), "-g", str(out), "--codes", "1,0", "--raw", "--device", "cpu",
                                   "--steps", "4", "--bands", "off"]) == 0
        png = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "0.png"))
        _, x_T = per_image_noise(0, 0, bundle.cfg.model.code_dim, tuple(bundle.cfg.sampling.image_size))
        code = bundle.net.codes(None, torch.tensor([1]))
        den = Denoiser(bundle.net, bundle.cfg.model.patch_size)
        with torch.no_grad():
            mine = sample_canvas(den, x_T[None], code, image_process(bundle.cfg.diffusion).respace(4))
            other = sample_canvas(den, x_T[None], code, process("flow" if objective == "eps" else "eps").respace(4))
        as_png = lambda x: ((x[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy()  # noqa: E731
        assert np.abs(as_png(mine) - png).max() <= 1
        assert np.abs(as_png(other) - png).max() > 1


def test_codes_flag_errors_are_one_line(trained, tmp_path, capsys):
    test = load_script("test")
    ck = str(trained["v"])
    for codes, msg in [("0,99", "rows"), ("a.png", "indices"), ("", "empty")]:
        args = ["-f", ck, "-g", str(tmp_path / "x"), "--codes", codes, "--raw", "--device", "cpu"]
        assert run_cli(test.main, args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], err
    assert not (tmp_path / "x").exists()
    # without --codes a train.py checkpoint has no latent model: the error says what to do
    assert run_cli(test.main, ["-f", ck, "-g", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "--codes" in capsys.readouterr().err


def test_paint_follows_the_objective(trained, tmp_path):
    """Inpainting (RePaint) with a flow model through paint.py keeps the known pixels."""
    from PIL import Image
    paint = load_script("paint")
    src = tmp_path / "src.png"
    Image.fromarray((np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8)).save(src)
    mask = tmp_path / "mask.png"
    m = np.zeros((16, 24), np.uint8)
    m[:, 12:] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "out.png"
    assert run_cli(paint.main, ["inpaint", "-f", str(trained["flow"]), "-i", str(src), "-m", str(mask), "-o",
                                str(out), "--device", "cpu", "--steps", "4", "--resample", "2", "--raw",
                                "--code", "index:0"]) == 0
    a, b = np.asarray(Image.open(src)), np.asarray(Image.open(out))
    assert np.array_equal(a[:, :12], b[:, :12])


def test_resume_refuses_another_objective(trained, lmdb_path, codes, capsys):
    runs = trained["v"].parents[2]
    assert train_run(lmdb_path, codes, runs, "v", 4, "--objective", "flow") == 2
    assert "diffusion.objective" in capsys.readouterr().err


def test_flow_time_input_is_scaled():
    s = process("flow")
    assert math.isclose(float(s.net_t(torch.tensor(0.25))), 250.0)
    assert s.respace(10).model_t(9, 2, "cpu").tolist() == [1000.0, 1000.0]
    assert s.respace(10).model_t(0, 1, "cpu").tolist() == [100.0]


# -- the latent DDPM's objective (beyond the paper: v on its constant-beta schedule) ------------------------------

def latent_abar(t):
    """alphas_cumprod of the latent schedule (constant beta 0.008, T = 1000) at integer t, by hand."""
    return (1 - 0.008) ** (np.asarray(t) + 1.0)


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_latent_loss_target_by_hand(objective):
    from model.patchdm.api import latent_loss
    from diffusion import constant_beta_process
    g = torch.Generator().manual_seed(5)
    z0, noise = torch.randn(4, 16, generator=g) * 3, torch.randn(4, 16, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    w = torch.randn(16, 16, generator=g) / 4
    net = lambda z, t: z @ w + t[:, None].float() / 1000  # noqa: E731  (any function of z_t and t)
    a = torch.tensor(latent_abar(t.numpy()), dtype=torch.float32)[:, None]
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    target = noise if objective == "eps" else a.sqrt() * noise - (1 - a).sqrt() * z0
    hand = (target - net(z_t, t)).abs().mean()
    mine = latent_loss(net, z0, t, noise, constant_beta_process(prediction=objective))
    assert torch.allclose(mine, hand, rtol=1e-5), (mine, hand)
    if objective == "v":
        assert not torch.allclose(mine, latent_loss(net, z0, t, noise, constant_beta_process()), rtol=1e-3)


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_latent_oracle_returns_the_code(objective, sampler):
    """An MLP that knows z0 (its eps or v for the latent schedule) is sampled back to z0, without clipping."""
    from model.patchdm.api import ddim_sample_latent
    from diffusion import constant_beta_process
    z0 = torch.randn(3, 16) * 4  # codes are not in [-1, 1]: the latent sampler must not clip

    def fn(z_t, t, i=None):
        a = torch.tensor(latent_abar(t.numpy()), dtype=torch.float32)[:, None]
        eps = (z_t - a.sqrt() * z0) / (1 - a).sqrt()
        return eps if objective == "eps" else a.sqrt() * eps - (1 - a).sqrt() * z0
    out = ddim_sample_latent(fn, torch.randn(3, 16), 20, constant_beta_process(prediction=objective), sampler=sampler)
    assert torch.allclose(out, z0, atol=1e-3), (out - z0).abs().max()


def test_latent_objective_is_stored_and_followed_by_test_py(trained, tmp_path, monkeypatch):
    """train_latent.py --objective v: the full checkpoint records it, and test.py samples the codes through the v
    schedule (it hands the latent sampler a v schedule, and its image is the one made from the v-sampled code)."""
    from diffusion import constant_beta_process
    from model import load
    from model.patchdm import sampling as patchdm_sampling
    from model.patchdm.api import ddim_sample_latent
    tl, test = load_script("train_latent"), load_script("test")
    runs = tmp_path / "runs"
    assert run_cli(tl.main, ["-m", str(trained["v"]), "-n", "lat", "--max_steps", "3", "--device", "cpu",
                             "--runs_dir", str(runs), "--objective", "v", "--weights", "raw"]) == 0
    full = runs / "lat" / "checkpoints" / "last.pt"
    b = load(full, raw=True)
    assert b.cfg.latent.objective == "v"
    seen = []

    def spy(net, z_T, steps, schedule, **kw):
        seen.append(schedule.prediction)
        return ddim_sample_latent(net, z_T, steps, schedule, **kw)
    monkeypatch.setattr(patchdm_sampling, "sample_codes", spy)
    out = tmp_path / "imgs"
    assert run_cli(test.main, ["-f", str(full), "-g", str(out), "--img_num", "1", "--raw", "--device", "cpu",
                               "--steps", "3", "--bands", "off"]) == 0
    assert seen == ["v"]
    png = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "0.png")).astype(float)
    z_T, x_T = per_image_noise(0, 0, b.cfg.model.code_dim, tuple(b.cfg.sampling.image_size))
    lc = b.cfg.latent
    with torch.no_grad():
        code = ddim_sample_latent(b.latent, z_T[None], b.cfg.sampling.latent_steps,
                                  constant_beta_process("v", lc.num_timesteps, lc.beta))
        x = sample_canvas(Denoiser(b.net, b.cfg.model.patch_size), x_T[None], code,
                          image_process(b.cfg.diffusion).respace(3))
    assert np.abs(((x[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy() - png).max() <= 1


def test_latent_objective_flag_errors(trained, tmp_path, capsys):
    tl = load_script("train_latent")
    args = ["-m", str(trained["v"]), "-n", "lat", "--max_steps", "2", "--device", "cpu", "--weights", "raw",
            "--runs_dir", str(tmp_path / "runs")]
    assert run_cli(tl.main, [*args, "--set", "latent.objective=flow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "latent.objective" in err[0], err
    assert not (tmp_path / "runs").exists()
