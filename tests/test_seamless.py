"""Seamless sampling (model/patchdm/seamless.py): moved and combined patch grids remove a planted per-tile bias
without moving it to another grid, reduce to the plain sampler with zero offsets, give the same images banded and
whole, and stay within the memory of banded sampling."""

import math

import numpy as np
import pytest
import torch

from diffusion import make_process
from metrics.seams import seam_ratio
from model.patchdm import CanvasOptions, Denoiser
from model.patchdm.canvas import canvas_prediction
from model.patchdm.sampling import sample_canvas, sampling_process
from model.patchdm.seamless import Seamless, evaluations, merge_bands, parse

P = 8


class BiasedOracle:
    """A Patch-DM network stand-in that knows the data: each pixel is N(texture(y, x), 0.2^2), so its eps is the
    posterior mean's, computed from the tile's own x_t pixels (the decoder's collaged input) and the pixel
    coordinates its position input implies (y = (row - 1/2) p + i). Each decoder tile adds a planted bias to its x0,
    a smooth function of its position times the noise level: neighbouring tiles of a grid disagree, as a young
    model's do."""

    def __init__(self, bias: float = 0.6):
        self.full, self.bias, self.s2 = make_process("eps"), bias, 0.04

    def embed(self, t, pos, pos_keep=None):
        return torch.cat([t[:, None].double(), pos.double()], dim=1)

    def encode(self, x, emb, code):
        return x, [x]

    def decode(self, h, skips, emb, code):
        t, pos = emb[:, 0].long(), emb[:, 1:]
        ys = (pos[:, 0, None] - 0.5) * P + torch.arange(P)
        xs = (pos[:, 1, None] - 0.5) * P + torch.arange(P)
        mean = texture(ys[:, None, :, None], xs[:, None, None, :]).expand_as(h).to(h.dtype)
        a = self.full.sqrt_alphas_cumprod[t].to(h.dtype).reshape(-1, 1, 1, 1)
        s = self.full.sqrt_one_minus_alphas_cumprod[t].to(h.dtype).reshape(-1, 1, 1, 1)
        x0 = mean + a * self.s2 / (a * a * self.s2 + s * s) * (h - a * mean)  # the posterior mean
        tint = torch.sin(3.7 * pos[:, 0] + 2.3 * pos[:, 1]).to(h.dtype).reshape(-1, 1, 1, 1)
        x0 = x0 + self.bias * s * tint
        return (h - a * x0) / s


def texture(y, x):
    return 0.5 * torch.sin(0.45 * y) * torch.cos(0.3 * x)


def sample(den, seamless=None, sampler="dpmpp2m", steps=20, hw=(48, 64), batch=2, bands=(None, None), seed=0,
           wrap="", cfg=0.0, dtype=torch.float64):
    process = sampling_process(make_process_cfg(), sampler, steps)
    x_T = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    code = torch.randn(batch, 512, generator=torch.Generator().manual_seed(1), dtype=dtype)
    opts = CanvasOptions(cfg, *bands, wrap=wrap, seed=seed, clip_x0=False, seamless=seamless)
    return sample_canvas(den, x_T, code, process, sampler, opts)


def make_process_cfg():
    from configs import get_preset
    return get_preset("tiny").diffusion


def ratios(images, offset):
    return float(np.mean([seam_ratio(img.permute(1, 2, 0).numpy(), P, offset) for img in images]))


@pytest.fixture(scope="module")
def oracle_samples():
    den = Denoiser(BiasedOracle(), P)
    out = {name: sample(den, spec) for name, spec in
           [("plain", None), ("shift", Seamless("shift")), ("average", Seamless("average", 2)),
            ("blend", Seamless("blend", 2))]}
    out["clean"] = sample(Denoiser(BiasedOracle(bias=0.0), P))
    return out


def test_the_oracle_plants_a_visible_grid(oracle_samples):
    """The planted bias makes seams on the image grid (the decoder tiles) and none on the half-shifted grid; without
    it the same sampler has none."""
    assert ratios(oracle_samples["plain"], 0) > 1.7
    assert ratios(oracle_samples["clean"], 0) < 1.2
    assert ratios(oracle_samples["plain"], P // 2) < 1.2


@pytest.mark.parametrize("method", ["shift", "average", "blend"])
def test_seamless_removes_the_planted_grid_without_moving_it(oracle_samples, method):
    """Every method lowers the image grid's seam ratio well below the plain sampler's, and none raises the
    half-shifted grid's above the clean samples' by more than a little (the seams are not just moved)."""
    plain, clean, got = oracle_samples["plain"], oracle_samples["clean"], oracle_samples[method]
    assert ratios(got, 0) < 1 + 0.5 * (ratios(plain, 0) - 1)
    assert ratios(got, P // 2) < ratios(clean, P // 2) + 0.15


def test_positions_follow_the_image_under_a_moved_grid(oracle_samples):
    """The oracle reads the pixel coordinates from the position input: with the grid moved, the samples still carry
    the texture where it belongs (a grid-indexed position would misplace it by up to a patch)."""
    clean = oracle_samples["clean"]
    for name in ["shift", "blend"]:
        err = (oracle_samples[name] - clean).abs().mean().item()
        assert err < 0.75 * (oracle_samples["plain"] - clean).abs().mean().item()


@pytest.mark.parametrize("real", [False, True])
def test_a_moved_grid_sees_the_canvas_where_it_is(tiny_unet64, real):
    """One evaluation on a grid moved by (dy, dx) equals the official evaluation of the canvas placed (dy, dx) pixels
    into a canvas a patch larger, cut back out, with positions moved back by (dy, dx) / p: the same tiles over the
    same pixels, at the same image positions (encoder and decoder: the real network reads both)."""
    net = tiny_unet64 if real else BiasedOracle()
    x = torch.randn(1, 3, 24, 32, dtype=torch.float64)
    t = torch.tensor([500])
    code = torch.randn(1, 512, dtype=torch.float64) if real else None
    for dy, dx in [(3, 5), (7, 0), (0, 4)]:
        moved = canvas_prediction(net, x, t, code, P, offset=(dy, dx))
        big = torch.zeros(1, 3, 24 + P, 32 + P, dtype=torch.float64)
        big[..., dy:dy + 24, dx:dx + 32] = x
        ref = canvas_prediction(_Shifted(net, (dy / P, dx / P)), big, t, code, P)[..., dy:dy + 24, dx:dx + 32]
        torch.testing.assert_close(moved, ref, rtol=0, atol=1e-12)
        assert (moved - canvas_prediction(net, x, t, code, P)).abs().max() > 1e-3


class _Shifted:
    """The oracle with its positions moved back by ``d`` patches."""

    def __init__(self, net, d):
        self.net, self.d = net, torch.tensor(d, dtype=torch.float32)

    def embed(self, t, pos, pos_keep=None):
        return self.net.embed(t, pos - self.d, pos_keep)

    def encode(self, x, emb, code):
        return self.net.encode(x, emb, code)

    def decode(self, h, skips, emb, code):
        return self.net.decode(h, skips, emb, code)


@pytest.mark.parametrize("sampler,bands", [("dpmpp2m", (None, None)), ("dpmpp2m", (1, None)), ("ddim", (2, 3))])
def test_zero_offsets_reproduce_the_plain_sampler_exactly(tiny_unet, sampler, bands):
    """With every grid offset zero (one view, no jitter) the option is the plain sampler, whole and streamed."""
    den = Denoiser(tiny_unet, P)
    plain = sample(den, None, sampler, 4, (16, 24), bands=bands, dtype=torch.float32)
    zero = sample(den, Seamless("shift", jitter=False), sampler, 4, (16, 24), bands=bands, dtype=torch.float32)
    assert torch.equal(plain, zero)
    # and the jittered grids do change the images (the comparison above can fail)
    moved = sample(den, Seamless("shift"), sampler, 4, (16, 24), bands=bands, dtype=torch.float32)
    assert (moved - plain).abs().max() > 1e-3


@pytest.mark.parametrize("spec", [Seamless("shift"), Seamless("average", 2), Seamless("blend", 3)])
@pytest.mark.parametrize("bands,wrap,cfg", [((1, None), "", 0.0), ((2, 2), "xy", 0.5), ((1, 2), "y", 0.0)])
def test_banded_equals_whole(tiny_unet64, spec, bands, wrap, cfg):
    """Streamed bands (the canvas updated in place as the merged grids pass) give the whole-canvas images, with
    wrap-around and guidance."""
    den = Denoiser(tiny_unet64, P)
    whole = sample(den, spec, "dpmpp2m", 3, (24, 32), wrap=wrap, cfg=cfg)
    banded = sample(den, spec, "dpmpp2m", 3, (24, 32), bands=bands, wrap=wrap, cfg=cfg)
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-9)


def test_merge_bands_yields_each_row_once_after_every_grid_passed_it():
    """Rows come out in order, each once, only when every stream has yielded them, and a stream is resumed only when
    nothing past its own rows has been yielded (so its next reads are of rows not yet updated)."""
    done = [0]

    def stream(k, cuts):
        last = 0
        for c in cuts:
            assert done[0] <= last  # no row this stream has not yet produced was handed out
            yield slice(last, c), torch.full((1, 1, c - last, 2), float(k))
            last = c

    spec = Seamless("average", 2)
    rows = []
    for r, o in merge_bands([stream(0, [3, 8, 10]), stream(1, [5, 10])], [(0, 0), (4, 4)], spec, P):
        assert torch.equal(o, torch.full((1, 1, r.stop - r.start, 2), 0.5))
        rows.append((r.start, r.stop))
        done[0] = r.stop
    assert rows == [(0, 3), (3, 5), (5, 8), (8, 10)]


def test_blend_weights_are_tents_that_cover_each_others_borders():
    spec = Seamless("blend", 2, jitter=False)
    offs = spec.offsets(0, P)
    assert offs == [(0, 0), (4, 4)]
    w0, w1 = (spec.weights(o, 0, 16, 16, P)[0, 0] for o in offs)
    assert w0.min() > 0 and math.isclose(w0.max().item(), (1 - 1 / P) ** 2)
    assert w0[3, 3] == w0.max() and w0[0, 0] == w0.min()  # highest at the tile centres, lowest at the corners
    # on the first grid's tile borders the second grid's weight is at its highest along that axis
    assert (w1[:, 0] > 3 * w0[:, 0]).float().mean() > 0.7


def test_offsets_are_a_function_of_seed_and_step():
    spec = Seamless("average", 4)
    a, b = spec.offsets(3, 64, seed=5), spec.offsets(3, 64, seed=5)
    assert a == b and len(a) == 4 and a != spec.offsets(4, 64, seed=5)
    assert all(0 <= dy < 64 and 0 <= dx < 64 for dy, dx in a)
    assert {(a[j][0] - a[0][0]) % 64 for j in range(4)} == {0, 16, 32, 48}


def test_parse():
    assert parse(None) is None and parse("off") is None
    assert parse("blend") == Seamless("blend", 2) and parse("average", 3) == Seamless("average", 3)
    assert parse("shift", below=math.inf).below == math.inf and parse("shift").below == 0.5
    for bad in [("zigzag", None), ("shift", 2), ("blend", 0), (None, 2), (None, None, 0.5), ("shift", None, -1.0)]:
        with pytest.raises(ValueError):
            parse(*bad)


def test_the_grids_move_only_below_the_noise_ratio(tiny_unet):
    """High-noise steps keep the official grid (they lay out the image); the grids move where sigma/alpha <= below,
    and the evaluations count only those steps' extra views."""
    process = sampling_process(make_process_cfg(), "dpmpp2m", 10)
    spec = Seamless("blend", 3, below=0.5)
    moved = [spec.active(process, i) for i in range(9, -1, -1)]
    ratio = [process.alpha_sigma(i)[1] / process.alpha_sigma(i)[0] for i in range(9, -1, -1)]
    assert moved == [r <= 0.5 for r in ratio] and 0 < sum(moved) < 10
    den, calls = Denoiser(tiny_unet, P), []
    predict = den.predict
    den.predict = lambda x, t, code, opts, pos_keep=None, step=0: (calls.append(opts.seamless is not None),
                                                                     predict(x, t, code, opts, pos_keep, step))[1]
    sample(den, spec, "dpmpp2m", 10, (16, 24), dtype=torch.float32)
    assert calls == moved
    assert evaluations(spec, process, "dpmpp2m") == 10 + 2 * sum(moved)
    assert evaluations(None, process, "dpmpp2m") == 10
    assert evaluations(Seamless("shift", below=math.inf), process, "dpmpp2m") == 10
    flow = make_process("flow").respace(6)
    assert evaluations(Seamless("average", 2, below=math.inf), flow, "heun") == 2 * 11


def test_config_refusals():
    from configs import get_preset
    for field, value, collage, says in [("seamless", "zigzag", "feature", "choose shift, average, blend"),
                                        ("seamless_views", 2, "feature", "average or blend"),
                                        ("seamless", "shift", "pixel_fixed", "pixel-space collages")]:
        cfg = get_preset("tiny")
        cfg.model.collage = collage
        if field == "seamless_views":
            cfg.sampling.seamless = "shift"
        setattr(cfg.sampling, field, value)
        with pytest.raises(ValueError, match=says):
            cfg.validate()


def test_moved_grids_keep_banded_memory_bounded():
    """Streamed with 1-row bands, the moved and blended grids cost a fixed extra (a band per grid) that does not grow
    with the canvas: a canvas 4x taller costs only its extra pixels, as without the option. So the 4096x8192 estimate
    is the plain one plus that constant (docs/EVALUATION.md, "Seamless sampling": 2.72 GiB in bf16 for shift, 3.06
    for a 2-view blend, against 2.72 without the option)."""
    from benchmarks.memory_estimate import BLOCK, sampling_peak
    canvas = 3 * 4 * 64  # bytes per pixel row of a 64-wide fp32 canvas, and of each dpmpp2m history canvas
    short, tall = (16, 64), (64, 64)
    for spec in [Seamless("shift", below=math.inf), Seamless("blend", 3, below=math.inf)]:
        peak = {hw: sampling_peak("tiny", hw, 1, "fp32", "1", sampler="dpmpp2m", seamless=spec) for hw in (short, tall)}
        plain = {hw: sampling_peak("tiny", hw, 1, "fp32", "1", sampler="dpmpp2m") for hw in (short, tall)}
        grow = peak[tall] - peak[short]
        assert grow <= plain[tall] - plain[short] + 4 * BLOCK
        assert grow >= 2 * canvas * (tall[0] - short[0])  # x and the history canvas, at least
        assert peak[tall] - plain[tall] < 0.2 * plain[tall]


def test_the_run_config_is_the_default_and_the_command_line_overrides_it():
    """sampling.seamless (with its views and threshold) is what previews and test.py use when no flag is given; a
    flag replaces it, and --seamless off turns a configured blend off without tripping over its views."""
    from configs import get_preset
    from model.patchdm.seamless import configured
    s = get_preset("tiny").sampling
    assert configured(s) is None
    s.seamless, s.seamless_views, s.seamless_below = "blend", 3, 0.3
    assert configured(s) == Seamless("blend", 3, below=0.3)
    assert configured(s, "off") is None
    assert configured(s, None, 4, 1.0) == Seamless("blend", 4, below=1.0)
