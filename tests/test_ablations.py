"""Ablation switches (Fig. 2 / Table 4), wrap-around padding and known-region (inpainting) sampling."""

import copy

import pytest
import torch

from model.patchdm.api import canvas_eps, ddim_sample_canvas
from diffusion import make_process
from model.patchdm import Denoiser, Window, build_patchdm, build_unet
from model.patchdm.canvas import shifted_canvas_prediction
from model.patchdm.grid import pad_half, split, stitch, window_crop, wrap_axes
from model.patchdm.modes import collage_mode, pixel_shift

P = 8


def _codes(b, seed=1):
    return torch.randn(b, 512, generator=torch.Generator().manual_seed(seed))


def _no_pos(unet):
    net = copy.deepcopy(unet)
    net.use_position = False
    return net


def test_no_position_drops_every_position_and_keeps_the_parameters(tiny_cfg, tiny_unet):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.use_position = False
    net = build_unet(cfg.model)
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: v.shape for k, v in tiny_unet.state_dict().items()}
    net.load_state_dict(tiny_unet.state_dict())
    x, t, code = torch.randn(3, 3, P, P), torch.tensor([5, 500, 900]), _codes(3)
    pos_a, pos_b = torch.rand(3, 2) * 10, torch.rand(3, 2) * 10
    out = net(x, t, pos_a, code)
    assert torch.equal(out, net(x, t, pos_b, code))
    # the same as the full model with every position dropped (CFG's null position) ...
    assert torch.equal(out, tiny_unet(x, t, pos_a, code, pos_keep=torch.zeros(3)))
    # ... and not the same as the full model with positions
    assert not torch.allclose(out, tiny_unet(x, t, pos_a, code), atol=1e-4)


def test_no_code_model_has_no_code_parameters_and_zero_codes(tiny_cfg):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.code_source = "none"
    net = build_patchdm(cfg.model)
    table = build_patchdm(tiny_cfg.model, num_codes=5)
    unet_keys = {k for k in table.state_dict() if not k.startswith("encoder.")}  # the official file layout
    assert set(net.state_dict()) == unet_keys
    assert not net.uses_table and not net.needs_image
    code = net.codes(None, torch.tensor([0, 3]))
    assert code.shape == (2, 512) and not code.any()


def test_feature_collage_couples_patches_but_collage_none_does_not(tiny_unet):
    x = torch.randn(1, 3, 2 * P, 3 * P, generator=torch.Generator().manual_seed(0))
    t, code = torch.tensor([300]), _codes(1)
    y = x.clone()
    y[..., :P, :P] += 1.0  # perturb image patch (0, 0)
    for shifted, coupled in ((False, True), (True, False)):
        if shifted:
            a = shifted_canvas_prediction(tiny_unet, x, t, code, P, (0, 0))
            b = shifted_canvas_prediction(tiny_unet, y, t, code, P, (0, 0))
        else:
            a, b = canvas_eps(tiny_unet, x, t, code, P), canvas_eps(tiny_unet, y, t, code, P)
        changed = (a - b).abs().amax(dim=1)[0]
        assert changed[:P, :P].max() > 1e-3
        outside = torch.cat([changed[:P, P:].reshape(-1), changed[P:].reshape(-1)])
        assert (outside.max() > 1e-3) == coupled


def test_shifted_canvas_prediction_is_the_plain_network_on_each_shifted_patch(tiny_unet):
    x = torch.randn(2, 3, 2 * P, 3 * P, generator=torch.Generator().manual_seed(2))
    t, code = torch.tensor([100, 700]), _codes(2)
    # half-patch shift: the padded grid at integer positions, as the official un-shifted pass
    eps = shifted_canvas_prediction(tiny_unet, x, t, code, P, (P // 2, P // 2))
    patches = split(pad_half(x, P), P)
    rows, cols = 3, 4
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([r.reshape(-1), c.reshape(-1)], 1).float().repeat(2, 1)
    want = stitch(tiny_unet(patches, t.repeat_interleave(12), pos, code.repeat_interleave(12, 0)), (rows, cols))
    assert (eps - want[..., P // 2:-P // 2, P // 2:-P // 2]).abs().max() < 1e-4
    # any shift: one patch by hand, the one whose top-left is image pixel (8 - 3, 8 - 5), position (1+1/2-3/8, ...)
    eps = shifted_canvas_prediction(tiny_unet, x, t, code, P, (3, 5), max_patches=5)
    one = tiny_unet(x[:1, :, 5:13, 3:11], t[:1], torch.tensor([[1 + 0.5 - 3 / P, 1 + 0.5 - 5 / P]]), code[:1])
    assert (eps[:1, :, 5:13, 3:11] - one).abs().max() < 1e-4


def test_pixel_shift_schedules():
    assert collage_mode("feature").name == "feature"
    with pytest.raises(ValueError, match="collage"):
        collage_mode("pixel")
    assert [pixel_shift("none", k, P) for k in range(4)] == [(0, 0)] * 4
    assert [pixel_shift("pixel_fixed", k, P) for k in range(4)] == [(0, 0), (4, 4), (0, 0), (4, 4)]
    rnd = [pixel_shift("pixel_random", k, P, seed=3) for k in range(40)]
    assert rnd[::2] == [(0, 0)] * 20 and all(0 <= s < P for sh in rnd for s in sh)
    assert len(set(rnd[1::2])) > 5 and rnd == [pixel_shift("pixel_random", k, P, seed=3) for k in range(40)]


def test_loss_ablations_change_only_their_term(tiny_unet):
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(3, 3, 2 * P, 3 * P, generator=g) * 2 - 1
    window, t, code = (1, 2), torch.tensor([10, 400, 990]), _codes(3)
    noise = torch.randn(3, 3, 2 * P, 2 * P, generator=g)
    x_win, mask = window_crop(x0, window, P)

    def terms(collage, offset=None):
        return Denoiser(tiny_unet, P, collage).loss_terms(Window(x_win, mask, noise, window, offset), t, code,
                                                          make_process())

    feat, fixed, rnd, none = terms("feature"), terms("pixel_fixed"), terms("pixel_random", (1, 6)), terms("none")
    assert torch.equal(feat[1], fixed[1]) and torch.equal(feat[1], rnd[1])  # the un-shifted term is untouched
    assert not torch.allclose(feat[0], fixed[0]) and not torch.allclose(fixed[0], rnd[0])
    assert torch.equal(none[0], fixed[0]) and not none[1].any()
    assert torch.equal(terms("pixel_random", (P // 2, P // 2))[0], fixed[0])
    # pixel_fixed's shift term is the plain network on the window's centre patch at (row + 1/2, col + 1/2)
    xt = make_process().q_sample(x_win, t, noise) * mask
    pred = tiny_unet(xt[..., 4:12, 4:12], t, torch.tensor([[1.5, 2.5]]).repeat(3, 1), code)
    assert torch.allclose(fixed[0], ((noise[..., 4:12, 4:12] - pred) ** 2).mean(dim=(1, 2, 3)), atol=1e-6)


@pytest.mark.parametrize("collage", ["pixel_fixed", "pixel_random", "none"])
def test_ablation_samplers_run_and_chunk_equally(tiny_unet64, collage):
    net, code = tiny_unet64, _codes(2).double()  # float64: the band-vs-whole bound is not float32 rounding
    x_T = torch.randn(2, 3, 2 * P, 3 * P, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = ddim_sample_canvas(net, x_T, code, steps=4, patch_size=P, collage=collage, seed=1)
    b = ddim_sample_canvas(net, x_T, code, steps=4, patch_size=P, collage=collage, seed=1, band_rows=1)
    assert torch.isfinite(a).all() and (a - b).abs().max() < 1e-9
    feat = ddim_sample_canvas(net, x_T, code, steps=4, patch_size=P)
    assert not torch.allclose(a, feat, atol=1e-3)


# ------------------------------------------------------------------------------------------------- wrap-around
def test_wrap_axes_parsing():
    assert wrap_axes("") == (False, False) and wrap_axes("x") == (False, True)
    assert wrap_axes("y") == (True, False) and wrap_axes("XY") == (True, True) == wrap_axes("yx")
    with pytest.raises(ValueError, match="wrap"):
        wrap_axes("z")


@pytest.mark.parametrize("wrap,dims", [("x", (-1,)), ("y", (-2,)), ("xy", (-2, -1))])
def test_wrap_makes_the_canvas_a_torus(tiny_unet, wrap, dims):
    """Without positions, wrapped canvas_eps commutes with a circular shift by whole patches: no edge is special,
    so the result is seamless across the wrap. With zero padding it does not (the test can fail)."""
    net = _no_pos(tiny_unet)
    x = torch.randn(1, 3, 3 * P, 4 * P, generator=torch.Generator().manual_seed(6))
    t, code = torch.tensor([250]), _codes(1)
    shifts = tuple(P for _ in dims)
    rolled = canvas_eps(net, torch.roll(x, shifts, dims), t, code, P, wrap=wrap)
    assert torch.allclose(rolled, torch.roll(canvas_eps(net, x, t, code, P, wrap=wrap), shifts, dims), atol=1e-5)
    plain = canvas_eps(net, torch.roll(x, shifts, dims), t, code, P)
    assert not torch.allclose(plain, torch.roll(canvas_eps(net, x, t, code, P), shifts, dims), atol=1e-3)
    # the pixel-space sampler wraps too
    a = shifted_canvas_prediction(net, torch.roll(x, shifts, dims), t, code, P, (3, 5), wrap=wrap)
    b = torch.roll(shifted_canvas_prediction(net, x, t, code, P, (3, 5), wrap=wrap), shifts, dims)
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("wrap", ["x", "y", "xy"])
def test_wrapped_bands_equal_all_at_once(tiny_unet64, wrap):
    net, f64 = tiny_unet64, dict(dtype=torch.float64)  # float64: the bound is not float32 rounding
    x = torch.randn(2, 3, 3 * P, 4 * P, generator=torch.Generator().manual_seed(7), **f64)
    t, code = torch.tensor([60, 600]), _codes(2).double()
    whole = canvas_eps(net, x, t, code, P, wrap=wrap)
    for rows, cols in ((1, None), (2, 1), (1, 3)):
        banded = canvas_eps(net, x, t, code, P, band_rows=rows, band_cols=cols, wrap=wrap)
        assert torch.allclose(banded, whole, atol=1e-9), (rows, cols)
    # the streamed in-place sampler reads the first rows of the canvas for the last band: it must use their value
    # from before the step (with CFG too)
    x_T = torch.randn(2, 3, 3 * P, 4 * P, generator=torch.Generator().manual_seed(8), **f64)
    for w in (0.0, 0.5):
        ref = ddim_sample_canvas(net, x_T, code, steps=3, patch_size=P, wrap=wrap, cfg_scale=w)
        got = ddim_sample_canvas(net, x_T, code, steps=3, patch_size=P, wrap=wrap, cfg_scale=w, band_rows=1)
        assert (got - ref).abs().max() < 1e-9, w


# ------------------------------------------------------------------------------------------------- known region
def _known(b=2, seed=9):
    g = torch.Generator().manual_seed(seed)
    x_known = torch.rand(b, 3, 3 * P, 4 * P, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 3 * P, 4 * P)
    mask[..., :, :13] = 1  # keep the left 13 columns (not patch-aligned)
    return x_known, mask


@pytest.mark.parametrize("resample", [1, 3])
def test_known_region_comes_back_unchanged(tiny_unet, resample):
    x_known, mask = _known()
    x_T = torch.randn(x_known.shape, generator=torch.Generator().manual_seed(10))
    out = ddim_sample_canvas(tiny_unet, x_T, _codes(2), steps=4, patch_size=P, known=(x_known, mask),
                             resample=resample, seed=2)
    keep = mask.expand_as(x_known).bool()
    assert torch.equal(out[keep], x_known[keep])
    free = ddim_sample_canvas(tiny_unet, x_T, _codes(2), steps=4, patch_size=P)
    assert not torch.allclose(out[~keep], free[~keep], atol=1e-3)  # the known pixels steer the rest
    again = ddim_sample_canvas(tiny_unet, x_T, _codes(2), steps=4, patch_size=P, known=(x_known, mask),
                               resample=resample, seed=2)
    assert torch.equal(out, again)


def test_known_region_streamed_equals_whole(tiny_unet64):
    x_known, mask = _known()
    x_known, mask = x_known.double(), mask.double()  # float64: the bound is not float32 rounding
    x_T = torch.randn(x_known.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    kw = dict(steps=3, patch_size=P, known=(x_known, mask), resample=2, seed=4)
    a = ddim_sample_canvas(tiny_unet64, x_T, _codes(2).double(), **kw)
    b = ddim_sample_canvas(tiny_unet64, x_T, _codes(2).double(), band_rows=1, band_cols=2, **kw)
    assert (a - b).abs().max() < 1e-9


def test_canvases_beyond_the_training_size_extend_the_position_grid(tiny_unet):
    """Faithful: a larger canvas uses larger coordinates, no normalisation or wrapping of positions."""
    seen = []
    orig = tiny_unet.embed

    def spy(t, pos, pos_keep=None):
        seen.append(pos.clone())
        return orig(t, pos, pos_keep)

    tiny_unet.embed = spy
    try:
        canvas_eps(tiny_unet, torch.randn(1, 3, 4 * P, 6 * P), torch.tensor([3]), _codes(1), P)  # 2x the 2x3 grid
    finally:
        del tiny_unet.embed
    enc, dec = seen
    assert enc.shape == (5 * 7, 2) and enc[:, 0].max() == 4 and enc[:, 1].max() == 6 and enc.min() == 0
    assert dec.shape == (4 * 6, 2) and dec[:, 0].max() == 3.5 and dec[:, 1].max() == 5.5 and dec.min() == 0.5
