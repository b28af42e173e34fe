import pytest
import torch

from diffusion import VPProcess, constant_beta_process, ddim, linear_betas, make_process, space_timesteps
from model.patchdm.api import canvas_eps, ddim_sample_canvas, ddim_sample_latent, guided_canvas_eps, latent_loss, patch_loss_terms
from tests import official_style as ref

D = 512  # code width of the tiny preset (CLIP width, as every real preset)
F64 = dict(dtype=torch.float64)  # band-vs-whole comparisons run in float64 (conftest.tiny_unet64)

P = 8  # tiny preset patch


def _ref_args(cfg, unet):
    sd = ref.annotate_updown(unet.state_dict(), len(cfg.model.channel_mult), cfg.model.num_res_blocks)
    return sd, dict(levels=len(cfg.model.channel_mult), time_dim=cfg.model.model_channels,
                    pos_dim=cfg.model.pos_sinusoid)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_respaced_timesteps_pinned():
    assert space_timesteps(1000, 50) == list(range(0, 1000, 20))
    assert space_timesteps(1000, 20) == list(range(0, 1000, 50))
    assert space_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, 999)
    sched = make_process().respace(50)
    assert sched.timestep_map[-1] == 980
    # the respaced schedule keeps alpha_bar at the kept timesteps
    assert torch.allclose(sched.alphas_cumprod, make_process().alphas_cumprod[::20], rtol=1e-12)


def test_linear_schedule_values():
    betas = linear_betas()
    assert betas.dtype == torch.float64 and betas[0] == 1e-4 and abs(betas[-1] - 0.02) < 1e-15
    ac = VPProcess(betas).alphas_cumprod
    assert abs(ac[-1].item() - 4.035e-5) < 1e-7  # alpha_bar_999 of the linear schedule
    lat = constant_beta_process().alphas_cumprod
    assert abs(lat[-1].item() - 0.992 ** 1000) < 1e-12


def test_canvas_eps_matches_official_structure(tiny_cfg, tiny_unet):
    sd, kw = _ref_args(tiny_cfg, tiny_unet)
    x = torch.randn(2, 3, 16, 24)
    t = torch.tensor([3, 870])
    code = torch.randn(2, D)
    with torch.no_grad():
        mine = canvas_eps(tiny_unet, x, t, code, P)
        theirs = ref.canvas_eps(sd, x, t, code, P, **kw)
    assert mine.shape == (2, 3, 16, 24)
    assert rel_err(mine, theirs) < 1e-5


def test_canvas_eps_is_deterministic_and_per_image(tiny_unet):
    x, t, code = torch.randn(3, 3, 16, 24), torch.tensor([5, 500, 999]), torch.randn(3, D)
    with torch.no_grad():
        full = canvas_eps(tiny_unet, x, t, code, P)
        again = canvas_eps(tiny_unet, x, t, code, P)
        single = canvas_eps(tiny_unet, x[1:2], t[1:2], code[1:2], P)
    assert torch.equal(full, again)
    assert torch.allclose(full[1:2], single, atol=1e-5)


def test_canvas_eps_rejects_indivisible_canvas(tiny_unet):
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        canvas_eps(tiny_unet, torch.randn(1, 3, 12, 24), torch.tensor([1]), torch.randn(1, D), P)


def test_positions_and_code_matter(tiny_unet):
    """Guards against a conditioning path that silently does nothing."""
    x, t, code = torch.randn(1, 3, 16, 24), torch.tensor([400]), torch.randn(1, D)
    with torch.no_grad():
        base = canvas_eps(tiny_unet, x, t, code, P)
        no_pos = canvas_eps(tiny_unet, x, t, code, P, pos_keep=torch.zeros(1))
        other_code = canvas_eps(tiny_unet, x, t, code + 1, P)
    assert (base - no_pos).abs().max() > 1e-3
    assert (base - other_code).abs().max() > 1e-3


def test_patch_loss_terms_match_official_structure(tiny_cfg, tiny_unet):
    sd, kw = _ref_args(tiny_cfg, tiny_unet)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 16, 24, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 24, 32, generator=g)
    t, code = torch.tensor([10, 700]), torch.randn(2, D, generator=g)
    ac = make_process().alphas_cumprod.numpy()
    for window in [(0, 0), (1, 2), (0, 1)]:
        with torch.no_grad():
            mine = patch_loss_terms(tiny_unet, x0, t, noise, window, code, P)
            theirs = ref.training_terms(sd, x0, t, noise, window, code, P, alphas_cumprod=ac, **kw)
        for a, b in zip(mine, theirs):
            assert abs(a.item() - b.item()) / b.item() < 1e-5, (window, mine, theirs)


def test_loss_ignores_padding_noise(tiny_unet):
    x0 = torch.rand(2, 3, 16, 24) * 2 - 1
    noise = torch.randn(2, 3, 24, 32)
    t, code = torch.tensor([10, 700]), torch.randn(2, D)
    inside = torch.zeros(1, 1, 24, 32)
    inside[..., 4:-4, 4:-4] = 1
    noise_pad = noise + (1 - inside) * 5 * torch.randn_like(noise)
    noise_in = noise + inside * 0.5 * torch.randn_like(noise)
    with torch.no_grad():
        base = patch_loss_terms(tiny_unet, x0, t, noise, (0, 0), code, P)
        padded = patch_loss_terms(tiny_unet, x0, t, noise_pad, (0, 0), code, P)
        changed = patch_loss_terms(tiny_unet, x0, t, noise_in, (0, 0), code, P)
    assert torch.allclose(torch.stack(base), torch.stack(padded), rtol=1e-6)
    assert not torch.allclose(torch.stack(base), torch.stack(changed), rtol=1e-3)


def test_loss_rejects_bad_window(tiny_unet):
    with pytest.raises(ValueError, match="window"):
        patch_loss_terms(tiny_unet, torch.zeros(1, 3, 16, 24), torch.tensor([1]), torch.zeros(1, 3, 24, 32),
                         (2, 0), torch.zeros(1, D), P)


def test_ddim_with_oracle_eps_returns_x0():
    sched = make_process().respace(50)
    x0 = torch.rand(2, 3, 16, 24) * 1.8 - 0.9
    abar = make_process().alphas_cumprod

    def oracle(x_t, t, i=None):
        a = abar[t].float()[:, None, None, None]
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    out = ddim(oracle, torch.randn(2, 3, 16, 24), sched, clip_x0=True)
    assert torch.allclose(out, x0, atol=1e-4)


def test_ddim_canvas_matches_official_structure(tiny_cfg, tiny_unet):
    sd, kw = _ref_args(tiny_cfg, tiny_unet)
    x_T, code = torch.randn(1, 3, 16, 24), torch.randn(1, D)
    ac = make_process().alphas_cumprod.numpy()
    for w in (0.0, 0.5):
        mine = ddim_sample_canvas(tiny_unet, x_T, code, steps=5, patch_size=P, cfg_scale=w)
        theirs = ref.ddim_canvas(sd, x_T, code, P, alphas_cumprod=ac, use_t=set(range(0, 1000, 200)), cfg_w=w,
                                 **kw)
        assert rel_err(mine, theirs) < 1e-4
        assert mine.min() >= -1 and mine.max() <= 1


def test_cfg_zero_equals_conditional_and_formula(tiny_unet):
    x, t, code = torch.randn(2, 3, 16, 24), torch.tensor([100, 600]), torch.randn(2, D)
    with torch.no_grad():
        cond = canvas_eps(tiny_unet, x, t, code, P)
        uncond = canvas_eps(tiny_unet, x, t, torch.zeros_like(code), P, pos_keep=torch.zeros(2))
        assert torch.equal(guided_canvas_eps(tiny_unet, x, t, code, P, 0.0), cond)
        guided = guided_canvas_eps(tiny_unet, x, t, code, P, 0.5)
    assert torch.allclose(guided, 1.5 * cond - 0.5 * uncond, atol=1e-5)
    assert not torch.allclose(guided, cond, atol=1e-3)


def test_latent_ddim_matches_manual_loop(tiny_latent):
    z = torch.randn(4, D)
    out = ddim_sample_latent(tiny_latent, z, steps=5)
    # manual eta-0 DDIM without clipping, constant beta 0.008, stride 200
    abar = constant_beta_process().alphas_cumprod
    x = z.clone()
    ts = list(range(0, 1000, 200))
    with torch.no_grad():
        for k in reversed(range(5)):
            a = abar[ts[k]].float()
            a_prev = abar[ts[k - 1]].float() if k else torch.tensor(1.0)
            eps = tiny_latent(x, torch.full((4,), ts[k]))
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert rel_err(out, x) < 1e-4


def test_latent_loss_is_l1(tiny_latent):
    z0, noise, t = torch.randn(5, D), torch.randn(5, D), torch.tensor([0, 1, 500, 998, 999])
    sched = constant_beta_process()
    with torch.no_grad():
        pred = tiny_latent(sched.q_sample(z0, t, noise), t)
        assert torch.allclose(latent_loss(tiny_latent, z0, t, noise), (noise - pred).abs().mean())


def test_window_and_cfg_masks_are_seeded_and_in_range():
    from model.patchdm.training import cfg_keep_masks, sample_window
    wins = {sample_window(16, 24, 8, torch.Generator().manual_seed(s)) for s in range(200)}
    assert wins == {(r, c) for r in range(2) for c in range(3)}
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert sample_window(512, 1024, 64, g1) == sample_window(512, 1024, 64, g2)
    code_keep, pos_keep = cfg_keep_masks(20000, generator=torch.Generator().manual_seed(0))
    assert abs(code_keep.mean().item() - 0.9) < 0.01 and abs(pos_keep.mean().item() - 0.5) < 0.015
    assert set(code_keep.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("band", [1, 2, 3])
def test_banded_canvas_equals_all_at_once(tiny_unet64, band):
    x, t, code = torch.randn(2, 3, 32, 24, **F64), torch.tensor([40, 700]), torch.randn(2, D, **F64)  # 4x3, 5x4 padded
    with torch.no_grad():
        full = canvas_eps(tiny_unet64, x, t, code, P)
        banded = canvas_eps(tiny_unet64, x, t, code, P, band_rows=band)
        keep = torch.tensor([1.0, 0.0])
        assert torch.allclose(canvas_eps(tiny_unet64, x, t, code, P, pos_keep=keep, band_rows=band),
                              canvas_eps(tiny_unet64, x, t, code, P, pos_keep=keep), atol=1e-9)
    assert rel_err(banded, full) < 1e-10


def test_banded_encoder_sees_each_padded_row_once(tiny_unet):
    calls = []
    real = tiny_unet.encode
    tiny_unet.encode = lambda x, *a: (calls.append(x.shape[0]), real(x, *a))[1]
    with torch.no_grad():
        canvas_eps(tiny_unet, torch.randn(1, 3, 32, 24), torch.tensor([5]), torch.randn(1, D), P, band_rows=1)
    assert calls == [2 * 4, 4, 4, 4]  # 5 padded rows of 4 patches: 2 rows first, then 1 new row per band


def test_banded_ddim(tiny_unet64):
    x_T, code = torch.randn(1, 3, 24, 16, **F64), torch.randn(1, D, **F64)
    a = ddim_sample_canvas(tiny_unet64, x_T, code, steps=3, patch_size=P)
    b = ddim_sample_canvas(tiny_unet64, x_T, code, steps=3, patch_size=P, band_rows=1, cfg_scale=0.0)
    assert (a - b).abs().max() < 1e-9


def test_window_crop_equals_slicing_the_padded_canvas():
    from model.patchdm.grid import pad_half, window_crop, window_slice
    x0 = torch.randn(2, 3, 16, 24)
    for r in range(2):
        for c in range(3):
            crop, mask = window_crop(x0, (r, c), P)
            rs, cs = window_slice((r, c), P)
            assert torch.equal(crop, pad_half(x0, P)[..., rs, cs])
            assert torch.equal(mask[0, 0], pad_half(torch.ones(1, 1, 16, 24), P)[0, 0, rs, cs])


def test_window_loss_equals_full_canvas_loss(tiny_unet):
    from model.patchdm import Denoiser, Window
    from model.patchdm.grid import window_crop, window_slice
    x0 = torch.rand(2, 3, 16, 24) * 2 - 1
    noise = torch.randn(2, 3, 24, 32)
    t, code = torch.tensor([10, 700]), torch.randn(2, D)
    with torch.no_grad():
        for window in [(0, 0), (1, 2)]:
            full = patch_loss_terms(tiny_unet, x0, t, noise, window, code, P, per_image=True)
            rs, cs = window_slice(window, P)
            x_win, m_win = window_crop(x0, window, P)
            win = Denoiser(tiny_unet, P).loss_terms(Window(x_win, m_win, noise[..., rs, cs], window), t, code,
                                                    make_process())
            assert all(torch.equal(a, b) for a, b in zip(full, win))


@pytest.mark.parametrize("w,band", [(0.0, 2), (0.5, 1), (0.5, 3)])
def test_streamed_banded_ddim_equals_all_at_once(tiny_unet64, w, band):
    x_T, code = torch.randn(2, 3, 40, 16, **F64), torch.randn(2, D, **F64)  # 5 tile rows
    a = ddim_sample_canvas(tiny_unet64, x_T, code, steps=4, patch_size=P, cfg_scale=w)
    before = x_T.clone()
    b = ddim_sample_canvas(tiny_unet64, x_T, code, steps=4, patch_size=P, cfg_scale=w, band_rows=band)
    assert (a - b).abs().max() < 1e-9
    assert torch.equal(x_T, before)  # the caller's x_T is not updated in place


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 2), (3, 1), (None, 2)])
def test_column_chunked_bands_equal_all_at_once(tiny_unet64, rows, cols):
    x, t, code = torch.randn(2, 3, 32, 40, **F64), torch.tensor([40, 700]), torch.randn(2, D, **F64)  # 4x5 tiles
    net = tiny_unet64
    with torch.no_grad():
        full = canvas_eps(net, x, t, code, P)
        chunked = canvas_eps(net, x, t, code, P, band_rows=rows, band_cols=cols)
    assert rel_err(chunked, full) < 1e-10
    a = ddim_sample_canvas(net, x, code, steps=3, patch_size=P, cfg_scale=0.5)
    b = ddim_sample_canvas(net, x, code, steps=3, patch_size=P, cfg_scale=0.5, band_rows=rows, band_cols=cols)
    assert (a - b).abs().max() < 1e-9


def test_auto_band():
    from model.patchdm.canvas import auto_band
    assert auto_band(1, 8, 16) == (None, None)        # 512x1024 (patch 64): all at once
    assert auto_band(4, 8, 16) == (None, None)        # at batch 4 too (512 tiles)
    assert auto_band(8, 8, 16) == (1, 8)              # batch 8: one row, 8 columns of each image per band
    assert auto_band(1, 16, 32) == (None, None)       # 1024x2048: 512 tiles, all at once
    assert auto_band(1, 32, 32) == (2, None)          # 2048x2048: bands of two full rows (64 tiles)
    assert auto_band(1, 64, 128) == (1, 64)           # 4096x8192: one row, 64 columns at a time
    assert auto_band(2, 64, 128) == (1, 32)


@pytest.mark.parametrize("dtype,budget", [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
def test_half_precision_canvas_eps_against_the_fp32_reference(dtype, budget):
    """The fast path's precision (issue 4), on the CPU with the `small` architecture (patch 16, 32-64 channels;
    default init with the zero output convs re-initialised, so eps is not trivially 0), banded and with CFG.

    Measured: fp16 ~0.3%, bf16 ~2% here; for the patch-64 nature U-Net 0.2% / 1.6% (rounding only the weights to
    bf16 already gives 0.6%), so the 1e-2 bf16 budget of issue 4 is out of reach of bf16 autocast itself with random
    weights; fp16 meets it. See docs/BENCHMARKS.md."""
    from configs import get_preset
    from model.patchdm import build_unet
    m = get_preset("small").model
    torch.manual_seed(0)
    net = build_unet(m).eval()
    for mod in net.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv1d)) and not mod.weight.any():
            torch.nn.init.kaiming_uniform_(mod.weight, a=5 ** 0.5)
    p = m.patch_size
    x, t, code = torch.randn(2, 3, 2 * p, 3 * p), torch.tensor([30, 800]), torch.randn(2, D)
    with torch.no_grad():
        ref = guided_canvas_eps(net, x, t, code, p, cfg_scale=0.5)
        with torch.autocast("cpu", dtype=dtype):
            fast = guided_canvas_eps(net, x, t, code, p, cfg_scale=0.5)
            banded = guided_canvas_eps(net, x, t, code, p, cfg_scale=0.5, band_rows=1, band_cols=2)
    assert fast.dtype == dtype
    assert 0 < rel_err(fast.float(), ref) < budget and rel_err(banded.float(), ref) < budget
