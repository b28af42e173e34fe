"""Training windows beyond the paper (docs/EVALUATION.md, "Training windows"): random pixel offsets, larger windows,
several windows of an image per batch, the code table's learning rate. The geometry is checked against the canvas
evaluation that seamless sampling uses: a window at any pixel offset is exactly the moved grid's tiles over the same
pixels, and the paper's windows and draws are unchanged."""

import pytest
import torch

from configs import get_preset
from model.patchdm.canvas import canvas_prediction
from model.patchdm.grid import crop_half, window_crop, window_origin, window_region, window_regions
from model.patchdm.modes import collage_mode
from model.patchdm.training import (LossStep, draw, offset_window, sample_window, sample_window_at, step_windows,
                                    window_at)
from runtime.data import StepBatchSampler
from runtime.images import region_bounds
from runtime.rng import rng
from tests.helpers import losses, train_run

P, H, W = 8, 24, 32  # the tiny preset's patch on a 3x4 grid
FEATURE = collage_mode("feature")


def tops(u, v):
    """The padded window's top-left pixel for collaged tiles starting at pixel (u, v), as a (1, 2) tensor."""
    return torch.tensor([[u - P // 2, v - P // 2]])


@pytest.mark.parametrize("tiles,u,v", [((1, 1), 3, 5), ((1, 1), -7, 17), ((2, 3), -2, -5), ((1, 2), 16, 9),
                                       ((3, 4), -1, -6), ((2, 2), 0, 8)])
def test_a_window_at_any_offset_is_the_moved_grid_over_the_same_pixels(tiny_unet64, tiles, u, v):
    """The collaged tiles of a window whose tiles start at pixel (u, v) equal, exactly, the tiles of the canvas
    evaluation with the grid moved by (-u mod p, -v mod p) over those pixels (seamless sampling's geometry): the same
    encoder patches at the same image-aligned positions."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    t, code = torch.tensor([400]), torch.randn(1, 512, dtype=torch.float64)
    window = tops(u, v)
    crop, mask = window_crop(x, window, P, tiles)
    pred, _ = FEATURE.window_prediction(tiny_unet64, crop, t, window, code, P)
    canvas = canvas_prediction(tiny_unet64, x, t, code, P, offset=((-u) % P, (-v) % P))
    rows, cols, pad = region_bounds(H, W, u, v, tiles[0] * P, tiles[1] * P)
    inside = pred[..., pad[2]:pred.shape[-2] - pad[3], pad[0]:pred.shape[-1] - pad[1]]
    torch.testing.assert_close(inside, canvas[..., rows, cols], rtol=0, atol=1e-12)
    # the mask of the collaged tiles is 1 exactly on the image
    inner = crop_half(mask, P)
    assert inner.sum() == (rows.stop - rows.start) * (cols.stop - cols.start) and inner.max() == 1
    # and the geometry matters: the same window read at the plain grid's positions is another prediction
    wrong, _ = FEATURE.window_prediction(tiny_unet64, crop, t, window_origin(window, P).round(), code, P)
    assert (wrong - pred).abs().max() > 1e-3


def test_a_window_on_the_grid_is_the_papers_window_bit_for_bit(tiny_unet):
    """A pixel-top window that lies on the patch grid gives the paper's (row, col) window's losses bit for bit."""
    torch.manual_seed(1)
    x0 = torch.randn(2, 3, H, W)
    noise = torch.randn(2, 3, 2 * P, 2 * P)
    t, code = torch.tensor([100, 800]), torch.randn(2, 512)
    step = LossStep(tiny_unet, P, (H, W))
    step.net.codes = lambda x, index: code
    for row, col in [(0, 0), (1, 2), (2, 3)]:
        official = step(x0, None, t, noise, (row, col))
        pixel = step(x0, None, t, noise, torch.tensor([[row * P - P // 2, col * P - P // 2]] * 2))
        for k in official:
            assert torch.equal(official[k], pixel[k]), (row, col, k)


def test_padding_is_left_out_of_the_collaged_term(tiny_unet64):
    """A window reaching past the image: the tiles' loss ignores what the target says off the image."""
    torch.manual_seed(2)
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    t, code = torch.tensor([300]), torch.randn(1, 512, dtype=torch.float64)
    window = tops(-5, 27)  # 5 rows above the image, 5 columns past its right edge
    crop, mask = window_crop(x, window, P, (1, 1))
    pred, _ = FEATURE.window_prediction(tiny_unet64, crop, t, window, code, P)
    target = torch.randn_like(crop) * 0
    target[..., P // 2:P // 2 + P, P // 2:P // 2 + P] = pred + 100 * (1 - crop_half(mask, P))  # wrong off the image
    shift, _ = FEATURE.loss_terms(tiny_unet64, crop, target, mask, t, window, code, P)
    assert shift.item() < 1e-12  # float32 rounding of the prediction (the loss casts it); an error off the image: 1e4
    target[..., P // 2 + 5, P // 2 + 4] += 1.0  # one pixel on the image (its row 0, column 31) now wrong
    shift, _ = FEATURE.loss_terms(tiny_unet64, crop, target, mask, t, window, code, P)
    assert shift.item() == pytest.approx(3 / (3 * P * P), rel=1e-6)  # its 3 channels, over all 3p^2 elements


def test_a_larger_window_is_its_tiles_windows_together(tiny_unet64):
    """The collaged term of an R x C window is the mean of the R*C one-tile windows' terms (each tile sees the same
    four encoder patches)."""
    torch.manual_seed(3)
    x0 = torch.randn(1, 3, H, W, dtype=torch.float64)
    noise = torch.randn(1, 3, 4 * P, 4 * P, dtype=torch.float64)
    t, code = torch.tensor([600]), torch.randn(1, 512, dtype=torch.float64)
    u, v = -3, 2
    big = LossStep(tiny_unet64, P, (H, W), tiles=(3, 3))
    small = LossStep(tiny_unet64, P, (H, W))
    for s in (big, small):
        s.net.codes = lambda x, index: code
    whole = big(x0, None, t, noise, tops(u, v))["shift"]
    parts = [small(x0, None, t, noise[..., i * P:(i + 2) * P, j * P:(j + 2) * P], tops(u + i * P, v + j * P))["shift"]
             for i in range(3) for j in range(3)]
    torch.testing.assert_close(whole, sum(parts) / 9, rtol=1e-12, atol=0)


def test_the_papers_draws_are_unchanged():
    """The default config draws the window as before: one (row, col) for the batch, from (seed, step)."""
    cfg = get_preset("tiny")
    for step in range(20):
        want = sample_window(16, 24, P, rng(0, "window", step))  # the tiny preset: 16x24
        assert window_at(cfg, step) == want == step_windows(cfg, step, 0, 4) == sample_window_at(cfg, step, 3)
    assert {window_at(cfg, s) for s in range(200)} == {(r, c) for r in range(2) for c in range(3)}


def test_random_windows_are_deterministic_and_cover_every_offset():
    cfg = get_preset("tiny")
    cfg.training.window_offset = "random"
    cfg.data.image_size = (H, W)
    a = [sample_window_at(cfg, s, k) for s in range(40) for k in range(8)]
    assert a == [sample_window_at(cfg, s, k) for s in range(40) for k in range(8)]
    assert len(set(a)) > 100  # each sample its own window
    assert torch.equal(step_windows(cfg, 5, 2, 3), torch.tensor([sample_window_at(cfg, 5, k) for k in (2, 3, 4)]))
    g = torch.Generator().manual_seed(0)
    for tiles in [(1, 1), (2, 3), (3, 4)]:
        seen = [offset_window(H, W, P, tiles, g) for _ in range(3000)]
        us = {y + P // 2 for y, _ in seen}
        vs = {x + P // 2 for _, x in seen}
        # every first-tile position from p-1 above the image to the last one that keeps every tile on the image
        assert us == set(range(-(P - 1), H - (tiles[0] - 1) * P))
        assert vs == set(range(-(P - 1), W - (tiles[1] - 1) * P))
        assert {(-u) % P for u in us} == set(range(P))


def test_draw_gives_each_sample_its_window_and_window_sized_noise():
    cfg = get_preset("tiny")
    cfg.training.window_offset, cfg.training.window_tiles = "random", (2, 3)
    window, t, noise, _, _ = draw(cfg, 7, 1, 2, 2, "cpu")  # rank 1 of 2: samples 2 and 3
    assert torch.equal(window, torch.tensor([sample_window_at(cfg, 7, 2), sample_window_at(cfg, 7, 3)]))
    assert noise.shape == (2, 3, 3 * P, 4 * P)
    regions = window_regions(window, P, (2, 3))
    assert regions[0][2:] == (3 * P, 4 * P) and len(regions) == 2
    assert window_region((1, 2), P) == (P - P // 2, 2 * P - P // 2, 2 * P, 2 * P)


def test_several_windows_of_each_image_per_batch():
    one = StepBatchSampler(10, 4, seed=3)
    two = StepBatchSampler(10, 4, seed=3, region_of=lambda s, k: (s, k, 1, 1), per_image=2)
    for step in range(12):
        b = two.batch_at(step)
        images = [i for i, _ in b]
        assert images[0] == images[1] and images[2] == images[3] and images[0] != images[2]
        assert [r[1] for _, r in b] == [0, 1, 2, 3]  # each sample its own view
    assert one.steps_per_epoch == 2 and two.steps_per_epoch == 5
    assert [one.batch_at(s) for s in range(4)] == [StepBatchSampler(10, 4, seed=3).batch_at(s) for s in range(4)]
    with pytest.raises(Exception, match="cannot hold"):
        StepBatchSampler(10, 4, per_image=3)


def test_the_code_table_learns_at_its_own_rate(lmdb_path, codes, tmp_path):
    from model.patchdm.training import DenoiserTask
    from runtime import dist as D
    cfg = get_preset("tiny")
    cfg.data.path, cfg.data.code_table = str(lmdb_path), str(codes)
    task = DenoiserTask(cfg, tmp_path / "a", D.Dist(), torch.device("cpu"))
    assert len(task.optimizer().param_groups) == 1
    cfg.training.code_lr_scale = 10.0
    groups = task.optimizer().param_groups
    assert [g["lr"] for g in groups] == [cfg.training.lr, 10 * cfg.training.lr]
    assert groups[1]["params"] == [task.network.code_source.weight]
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in task.network.parameters())


def test_a_run_with_the_window_options_resumes_exactly(lmdb_path, codes, tmp_path):
    opts = ["--set", "training.window_offset=random", "training.window_tiles=[2,2]", "training.windows_per_image=2",
            "training.code_lr_scale=5"]
    train_run(lmdb_path, codes, tmp_path / "runs", "straight", 4, *opts)
    train_run(lmdb_path, codes, tmp_path / "runs", "resumed", 2, *opts)
    train_run(lmdb_path, codes, tmp_path / "runs", "resumed", 4, *opts)
    assert losses(tmp_path / "runs" / "resumed") == pytest.approx(losses(tmp_path / "runs" / "straight"), rel=1e-6)


@pytest.mark.parametrize("field,value,says", [
    ("training.window_tiles", [3, 1], "at most the image's grid"),
    ("training.window_tiles", [0, 1], "at least 1"),
    ("training.window_offset", "any", "choose grid, random"),
    ("training.windows_per_image", 3, "must divide the batch size"),
    ("training.code_lr_scale", 0.0, "must be above 0"),
])
def test_window_settings_are_checked(field, value, says):
    from configs.fields import assign
    cfg = get_preset("tiny")
    assign(cfg, field, value)
    with pytest.raises(ValueError, match=says):
        cfg.validate()


def test_the_pixel_space_collages_keep_the_papers_windows():
    cfg = get_preset("tiny")
    cfg.model.collage, cfg.training.window_offset = "pixel_fixed", "random"
    with pytest.raises(ValueError, match="pixel-space collages keep"):
        cfg.validate()
