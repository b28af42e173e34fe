"""Memory: the allocation estimator is exact on the CPU, banded sampling holds one canvas plus one band whatever the
canvas height, and the memory-saving switches compute the same function."""

import copy

import pytest
import torch

from benchmarks.memory_estimate import BLOCK, LiveBytes, fake_mode, sampling_peak, training_peak
from configs import get_preset
from model.patchdm.api import canvas_eps, ddim_sample_canvas
from model.patchdm import build_unet
from model.patchdm.fast import cast_weights

P = 8


def test_bands_cost_no_extra_arithmetic(tiny_unet):
    """The carried encoder row means a banded step does exactly the FLOPs of the all-at-once step (nothing is
    encoded twice); on the nature U-Net this count is 3.59 TFLOP per step at 512x1024, 179 TFLOP per image."""
    from torch.utils.flop_counter import FlopCounterMode
    x, t, code = torch.randn(2, 3, 32, 48), torch.tensor([7, 600]), torch.randn(2, 512)
    flops = []
    for rows, cols in [(None, None), (1, None), (2, None), (1, 2), (3, 5)]:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            canvas_eps(tiny_unet, x, t, code, P, band_rows=rows, band_cols=cols)
        flops.append(counter.get_total_flops())
    assert flops[0] > 1e6 and len(set(flops)) == 1


def test_live_bytes_counts_storages_from_allocation_to_release():
    with fake_mode():
        live = LiveBytes()
        with live:
            a = torch.empty(1000, device="cuda")  # 4000 bytes -> 8 blocks
            b = torch.empty(10, device="cuda")  # 40 bytes -> 1 block
            view = a[10:20]  # no new storage
            assert live.current == live.peak == 9 * BLOCK
            del a, view
            assert live.current == BLOCK and live.peak == 9 * BLOCK
            c = b + 1
            assert live.current == 2 * BLOCK and live.peak == 9 * BLOCK
        del b, c


def test_fake_estimate_equals_the_live_bytes_of_the_real_computation(tiny_cfg):
    """The same network on real CPU tensors and on fake CUDA tensors allocates the same storages for the same time."""

    def peak(device_type):
        torch.manual_seed(0)
        with torch.device("cuda" if device_type == "cuda" else "cpu"):
            u = build_unet(tiny_cfg.model).eval()
            x, code, t = torch.randn(2, 3, 16, 24), torch.randn(2, 512), torch.tensor([3, 700])
        live = LiveBytes(device_type).track(*u.parameters(), x, code, t)
        with live, torch.no_grad():
            canvas_eps(u, x, t, code, P, band_rows=1)
        return live.peak

    real = peak("cpu")
    with fake_mode():
        fake = peak("cuda")
    assert fake == real > 1e6


def test_banded_sampling_memory_grows_only_by_the_canvas_with_height():
    """With 1-row bands, a canvas 4x taller costs exactly the extra canvas (x is updated in place), with or without
    guidance; all at once, the features of every patch are live together and the peak grows ~50x faster."""
    canvas = 3 * 4 * 64  # bytes per pixel row of a 64-wide fp32 canvas
    short, tall = (16, 64), (64, 64)
    grow = sampling_peak("tiny", tall, 1, "fp32", "1") - sampling_peak("tiny", short, 1, "fp32", "1")
    grow_all = sampling_peak("tiny", tall, 1, "fp32", "off") - sampling_peak("tiny", short, 1, "fp32", "off")
    extra_canvas = canvas * (tall[0] - short[0])
    assert extra_canvas <= grow <= extra_canvas + 2 * BLOCK
    assert grow_all > 20 * grow
    # with guidance too: the doubled batch copies each band's rows, not the canvas
    grow_cfg = (sampling_peak("tiny", tall, 1, "fp32", "1", cfg_scale=0.5)
                - sampling_peak("tiny", short, 1, "fp32", "1", cfg_scale=0.5))
    assert extra_canvas <= grow_cfg <= extra_canvas + 2 * BLOCK


def test_column_chunks_lower_the_peak_of_wide_canvases():
    hw = (16, 256)
    assert sampling_peak("tiny", hw, 1, "fp32", "1x4") < 0.7 * sampling_peak("tiny", hw, 1, "fp32", "1")


def test_training_estimate_counts_model_gradients_adam_and_ema():
    cfg = get_preset("tiny")
    params = sum(p.numel() for p in build_unet(cfg.model).parameters()) * 4
    peak = training_peak("tiny", 2, "fp32", num_codes=4)
    # weights, gradients, two Adam moments and the EMA: at least 5 copies of the U-Net
    assert peak > 5 * params
    every = training_peak("tiny", 2, "fp32", checkpointing=True, num_codes=4)
    top = training_peak("tiny", 2, "fp32", checkpointing=True, num_codes=4, checkpoint_levels=1)
    assert every < top < peak


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_weights_compute_exactly_what_autocast_computes(tiny_unet, precision, dtype):
    x, t, code = torch.randn(2, 3, 16, 24), torch.tensor([7, 600]), torch.randn(2, 512)
    half = cast_weights(copy.deepcopy(tiny_unet), precision)
    for m in half.modules():  # convolutions and linear layers in half precision, normalisation in fp32
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm)):
            want = torch.float32 if isinstance(m, torch.nn.GroupNorm) else dtype
            assert {p.dtype for p in m.parameters()} == {want}
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        ref = canvas_eps(tiny_unet, x, t, code, P)
        assert ref.abs().mean() > 1e-3
        assert torch.equal(canvas_eps(half, x, t, code, P), ref)
        assert torch.equal(canvas_eps(half, x, t, code, P, band_rows=1, band_cols=2), ref)
    assert cast_weights(tiny_unet, "fp32") is tiny_unet
    assert all(p.dtype == torch.float32 for p in tiny_unet.parameters())


def test_in_place_sampling_overwrites_x_T_only_when_asked(tiny_unet):
    x_T, code = torch.randn(1, 3, 16, 24), torch.randn(1, 512)
    keep = x_T.clone()
    ref = ddim_sample_canvas(tiny_unet, x_T, code, steps=3, patch_size=P, band_rows=1)
    assert torch.equal(x_T, keep)
    out = ddim_sample_canvas(tiny_unet, x_T, code, steps=3, patch_size=P, band_rows=1, in_place=True)
    assert out is x_T and torch.equal(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_estimate_against_the_cuda_allocator_and_half_weights_on_cuda():
    """On a GPU: the estimate is within 20% below the allocator's peak (it cannot see the cuBLAS/cuDNN workspaces;
    5% above is allowed for kernel choices the trace cannot know), and the half-precision weights give the same eps
    as autocast under the CUDA kernels."""
    from benchmarks.common import timed
    device = torch.device("cuda")
    cfg = get_preset("nature")
    p, hw = cfg.model.patch_size, (256, 512)
    est = sampling_peak("nature", hw, 1, "bf16", "1x4")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)  # whatever earlier tests left on the device
    torch.manual_seed(0)
    unet = cast_weights(build_unet(cfg.model).to(device).eval(), "bf16")
    x, code = torch.randn(1, 3, *hw, device=device), torch.randn(1, cfg.model.code_dim, device=device)
    row = {}
    with timed(device, row), torch.autocast("cuda", dtype=torch.bfloat16):
        ddim_sample_canvas(unet, x, code, steps=2, patch_size=p, band_rows=1, band_cols=4, in_place=True)
    measured = row["peak_gib"] * 2 ** 30 - before
    assert 0.8 * measured <= est <= 1.05 * measured
    del unet, x
    cfg = get_preset("small")
    p, hw = cfg.model.patch_size, (64, 128)
    code = torch.randn(2, cfg.model.code_dim, device=device)
    ref = build_unet(cfg.model).to(device).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.05)
    half = cast_weights(copy.deepcopy(ref), "bf16")
    x_t, t = torch.randn(2, 3, *hw, device=device), torch.tensor([5, 900], device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(canvas_eps(half, x_t, t, code, p), canvas_eps(ref, x_t, t, code, p))
