"""The fast samplers (diffusion/samplers.py, dpm_solver.py): oracle models, the exact ODE solution of a Gaussian toy, diffusers'
DPM-Solver++ where it is installed, banded = whole, and the command-line rules."""

import numpy as np
import pytest
import torch

from configs import DiffusionConfig
from diffusion import make_step, run_steps, spacing
from model.patchdm import CanvasOptions, Denoiser
from model.patchdm.sampling import image_process, sample_canvas, sampling_process
from runtime.errors import run_cli
from tests.helpers import load_script

P, D = 8, 512
VP_SAMPLERS = ["ddim", "dpmpp2m", "dpmpp3m"]
FLOW_SAMPLERS = ["euler", "heun", "dpmpp2m", "dpmpp3m"]
CASES = [(o, s) for o in ("eps", "v") for s in VP_SAMPLERS] + [("flow", s) for s in FLOW_SAMPLERS]


def process(objective, sampler, steps, how=None):
    return sampling_process(DiffusionConfig(objective=objective), sampler, steps, how)


def abar_at(t):
    return image_process(DiffusionConfig()).alphas_cumprod[t].float()


def alpha_sigma_at(objective, t):
    """(alpha, sigma) per sample at network time t (B,)."""
    if objective == "flow":
        s = t.float() / 1000
        return (1 - s), s
    a = abar_at(t)
    return a.sqrt(), (1 - a).sqrt()


def output_for(objective, x_t, t, x0):
    """The network output whose x0 prediction is x0."""
    al, si = (v[:, None, None, None] for v in alpha_sigma_at(objective, t))
    eps = (x_t - al * x0) / si
    if objective == "eps":
        return eps
    if objective == "v":
        return al * eps - si * x0
    return eps - x0


def sample(objective, sampler, steps, model, x_T, clip=True, how=None):
    sched = process(objective, sampler, steps, how)
    return run_steps(make_step(sampler, sched, lambda x, t, i: model(x, t), clip_x0=clip), x_T.clone(), sched)


@pytest.mark.parametrize("objective,sampler", CASES)
def test_oracle_model_returns_x0(objective, sampler):
    x0 = torch.rand(2, 3, 8, 8) * 1.8 - 0.9
    out = sample(objective, sampler, 10, lambda x, t: output_for(objective, x, t, x0), torch.randn(2, 3, 8, 8))
    assert torch.allclose(out, x0, atol=1e-3), (out - x0).abs().max()


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_gaussian_toy_exact_solution(objective):
    """Data N(0, s^2): the probability-flow ODE maps x_T to x_T s / sqrt(alpha_T^2 s^2 + sigma_T^2); the
    2nd/3rd-order solvers get much closer than the first-order step at the same number of steps, and converge.
    The VP solvers run on the linspace spacing here: this variance's ODE moves at high noise, where log-SNR steps
    are sparse (the image-like variance below is the case for the default)."""
    s2 = 4.0  # a large variance: the final step's jump to the posterior mean is then nearly the ODE's end
    x_T = torch.randn(4096, 1, 1, 1, dtype=torch.float64).float()

    def model(x, t):  # the exact posterior mean E[x0 | x_t] = alpha s^2 / (alpha^2 s^2 + sigma^2) x_t
        al, si = (v[:, None, None, None] for v in alpha_sigma_at(objective, t))
        x0 = al * s2 / (al ** 2 * s2 + si ** 2) * x
        return output_for(objective, x, t, x0)

    def exact(sampler, steps, how):
        sched = process(objective, sampler, steps, how)
        al, si = sched.alpha_sigma(sched.num_timesteps - 1)
        return x_T * np.sqrt(s2) / np.sqrt(al ** 2 * s2 + si ** 2)

    first = "euler" if objective == "flow" else "ddim"
    err = {}
    for sampler in [first, "dpmpp2m", "dpmpp3m"] + (["heun"] if objective == "flow" else []):
        how = "linspace" if sampler.startswith("dpmpp") and objective != "flow" else None
        for steps in (5, 10, 20):
            out = sample(objective, sampler, steps, model, x_T, clip=False, how=how)
            err[sampler, steps] = (out - exact(sampler, steps, how)).abs().max().item()
    for sampler in ("dpmpp2m", "dpmpp3m") + (("heun",) if objective == "flow" else ()):
        assert err[sampler, 10] < 0.5 * err[first, 10], err
        assert err[sampler, 20] < err[sampler, 5], err
    assert err[first, 20] < err[first, 5]


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_gaussian_toy_image_like_variance(objective):
    """Data N(0, 0.1), about the pixel variance of photos in [-1, 1]: here the x0 prediction keeps changing down to
    t = 0, so a last evaluation far from t = 0 costs accuracy. The recommended fast setting (DPM-Solver++(2M), 20
    steps, log-SNR spacing) lands closer to the ODE's exact end than DDIM-50 (measured: 0.014 vs 0.079 relative
    RMS); with diffusers' linspace spacing it is farther (0.128)."""
    s2 = 0.1
    x_T = torch.randn(4096, 1, 1, 1, generator=torch.Generator().manual_seed(0))

    def model(x, t):
        al, si = (v[:, None, None, None] for v in alpha_sigma_at(objective, t))
        return output_for(objective, x, t, al * s2 / (al ** 2 * s2 + si ** 2) * x)

    def err(sampler, steps):
        sched = process(objective, sampler, steps)
        al, si = sched.alpha_sigma(sched.num_timesteps - 1)
        exact = x_T * np.sqrt(s2) / np.sqrt(al ** 2 * s2 + si ** 2)
        return (sample(objective, sampler, steps, model, x_T, clip=False) - exact).pow(2).mean().sqrt().item()

    ddim50 = err("ddim", 50)
    assert err("dpmpp2m", 20) < 0.5 * ddim50 and err("dpmpp3m", 20) < 0.5 * ddim50, ddim50


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("order,clip", [(2, True), (2, False), (3, True), (3, False)])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("how", ["logsnr", "linspace"])
def test_dpmpp_matches_diffusers(prediction, order, clip, steps, how):
    """Our steps and spacings against diffusers': linspace is its default spacing; logsnr (the default) picks the
    timesteps of its use_lu_lambdas, but where diffusers then steps between the unrounded log-SNR values, ours steps
    between those of the timesteps the network is told (alpha_bar there), so the solver runs are compared on our
    timesteps given to diffusers as a custom list."""
    diffusers = pytest.importorskip("diffusers")
    objective = "eps" if prediction == "epsilon" else "v"
    sampler = f"dpmpp{order}m"
    sched = process(objective, sampler, steps, how)

    def scheduler(**kw):
        return diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=order,
            prediction_type=prediction, algorithm_type="dpmsolver++", thresholding=clip, sample_max_value=1.0,
            dynamic_thresholding_ratio=1.0, **kw)

    sch = scheduler(use_lu_lambdas=how == "logsnr")
    sch.set_timesteps(steps)
    assert sched.timestep_map[::-1] == sch.timesteps.tolist()
    if how == "logsnr":
        sch = scheduler()
        sch.set_timesteps(timesteps=sched.timestep_map[::-1])
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3, generator=g) * 0.3

    def net(x, t):  # a smooth random function of x and t
        return torch.tanh(torch.einsum("ij,bjhw->bihw", w, x) + t.float()[:, None, None, None] / 1000)

    x_T = torch.randn(2, 3, 8, 8, generator=g)
    x = x_T.clone()
    for t in sch.timesteps:
        x = sch.step(net(x, t.repeat(2)), t, x).prev_sample
    mine = sample(objective, sampler, steps, net, x_T, clip=clip, how=how)
    assert (mine - x).abs().max() < 2e-3, (mine - x).abs().max()


@pytest.mark.parametrize("objective,sampler", [("eps", "dpmpp2m"), ("v", "dpmpp3m"), ("flow", "dpmpp2m"),
                                               ("flow", "heun")])
@pytest.mark.parametrize("band", [1, 2])
def test_banded_equals_whole(tiny_unet64, objective, sampler, band):
    den = Denoiser(tiny_unet64, P)
    x_T, code = torch.randn(2, 3, 40, 16, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64)
    sched = process(objective, sampler, 5)
    a = sample_canvas(den, x_T, code, sched, sampler)
    b = sample_canvas(den, x_T, code, sched, sampler, CanvasOptions(band_rows=band))
    c = sample_canvas(den, x_T, code, sched, sampler, CanvasOptions(0.5, band_rows=band))
    assert (a - b).abs().max() < 1e-9  # float64 rounding; a band bug (a stale history band) is O(0.1)
    assert (a - c).abs().max() > 1e-2  # guidance reaches the solver


def test_solvers_keep_ddim_official():
    """--sampler ddim keeps the official respacing; the solvers start at T - 1 and end at 0."""
    assert spacing("ddim") == "official" and process("eps", "ddim", 50).timestep_map[-1] == 980
    assert process("eps", "dpmpp2m", 20).timestep_map[-1] == 999
    assert process("eps", "dpmpp2m", 20).num_timesteps == 20 and process("eps", "dpmpp2m", 20).timestep_map[0] == 0


def test_cli_samplers_and_refusals(lmdb_path, codes, tmp_path, capsys):
    from tests.helpers import train_run
    runs = tmp_path / "runs"
    assert train_run(lmdb_path, codes, runs, "e", 2) == 0
    ck = str(runs / "e" / "checkpoints" / "last.pt")
    test = load_script("test")
    base = ["-f", ck, "--codes", "0,1", "--raw", "--device", "cpu"]
    assert run_cli(test.main, [*base, "-g", str(tmp_path / "a"), "--sampler", "dpmpp2m", "--steps", "7"]) == 0
    assert (tmp_path / "a" / "1.png").exists()
    capsys.readouterr()
    assert run_cli(test.main, [*base, "-g", str(tmp_path / "b"), "--sampler", "heun"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "flow" in err[0], err
    assert not (tmp_path / "b").exists()
    paint = load_script("paint")
    from PIL import Image
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "src.png")
    m = np.zeros((16, 24), np.uint8)
    m[:, 12:] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    assert run_cli(paint.main, ["inpaint", "-f", ck, "-i", str(tmp_path / "src.png"), "-m", str(tmp_path / "mask.png"),
                                "-o", str(tmp_path / "o.png"), "--raw", "--device", "cpu", "--code", "index:0",
                                "--sampler", "dpmpp2m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ddim" in err[0], err
    assert not (tmp_path / "o.png").exists()


def test_multistep_history_costs_one_canvas_per_order():
    """The streamed solvers keep order - 1 x0 canvases (the oldest is reused for the newest), nothing more."""
    from benchmarks.memory_estimate import sampling_peak
    canvas = 3 * 128 * 192 * 4  # fp32 x0
    peak = {s: sampling_peak("tiny", (128, 192), 1, "fp32", "1", sampler=s) for s in VP_SAMPLERS}
    assert 0.9 < (peak["dpmpp2m"] - peak["ddim"]) / canvas < 1.2, peak
    assert 1.9 < (peak["dpmpp3m"] - peak["ddim"]) / canvas < 2.2, peak


@pytest.mark.parametrize("steps", [1, 2, 10, 20])
def test_spacings_endpoints(steps):
    """linspace: N steps from T - 1 down to about (T - 1)/N (diffusers'); linspace0 and logsnr (the solvers'
    default; its grid is checked against diffusers' in test_dpmpp_matches_diffusers): N distinct steps from T - 1
    down to 0; all keep alpha_bar at the kept timesteps; an unknown spacing is refused."""
    full = image_process(DiffusionConfig())
    for how, last in (("linspace", round(999 / steps)), ("linspace0", 0 if steps > 1 else 999)):
        sched = full.respace(steps, how)
        keep = sched.timestep_map
        assert len(keep) == steps and keep[-1] == 999 and keep[0] == last, (how, keep)
        assert np.allclose(sched.alphas_cumprod, full.alphas_cumprod[keep])
        assert sampling_process(DiffusionConfig(), "dpmpp2m", steps, how).timestep_map == keep
    sched = full.respace(steps, "logsnr")
    keep = sched.timestep_map
    assert len(keep) == steps and keep[-1] == 999 and keep[0] == (0 if steps > 1 else 999), keep
    assert keep == sorted(set(keep))
    assert np.allclose(sched.alphas_cumprod, full.alphas_cumprod[keep])
    assert sampling_process(DiffusionConfig(), "dpmpp2m", steps).timestep_map == keep  # the solvers' default
    assert full.respace(1000, "logsnr").timestep_map == list(range(1000))  # crowded at t = 0, still distinct
    with pytest.raises(ValueError, match="logsnr"):
        full.respace(10, "trailing")


@pytest.mark.parametrize("objective,sampler", CASES)
def test_a_tuple_state_is_sampled_as_its_parts(objective, sampler):
    """A state of several tensors (a pyramid of latents) passes through every sampler element by element: sampling
    the tuple equals sampling each part on its own with the same model."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 3, generator=g) * 0.3

    def part(x, t):  # any smooth function of the part and t
        return torch.tanh(torch.einsum("ij,bj...->bi...", w, x) + t.float().reshape(-1, *[1] * (x.ndim - 1)) / 1000)

    x_T = (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, generator=g))
    sched = process(objective, sampler, 6)
    both = run_steps(make_step(sampler, sched, lambda x, t, i: tuple(part(e, t) for e in x), clip_x0=False),
                     x_T, sched)
    for k in range(2):
        alone = run_steps(make_step(sampler, sched, lambda x, t, i: part(x, t), clip_x0=False), x_T[k], sched)
        assert torch.equal(both[k], alone)
    assert not torch.allclose(both[0], x_T[0])
