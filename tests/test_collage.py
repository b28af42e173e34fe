import pytest
import torch

from model.patchdm.grid import collage, crop_half, grid_positions, pad_half, split, stitch
from tests import official_style as ref


def test_split_stitch_round_trip_non_square():
    x = torch.randn(2, 5, 3 * 4, 5 * 4)
    patches = split(x, 4)
    assert patches.shape == (2 * 3 * 5, 5, 4, 4)
    assert torch.equal(stitch(patches, (3, 5)), x)


def test_split_order_is_image_row_col():
    x = torch.randn(2, 3, 8, 12)
    patches = split(x, 4)
    # patch (image 1, row 1, col 2) is number 1*6 + 1*3 + 2
    assert torch.equal(patches[1 * 6 + 1 * 3 + 2], x[1, :, 4:8, 8:12])
    assert torch.equal(patches, ref.patchify(x, 4))


@pytest.mark.parametrize("grid,s", [((3, 4), 4), ((2, 2), 8), ((4, 2), 2)])
def test_collage_equals_naive_stitch_crop_recut(grid, s):
    b = 2
    feats = torch.randn(b * grid[0] * grid[1], 3, s, s)
    out = collage(feats, grid)
    assert out.shape == (b * (grid[0] - 1) * (grid[1] - 1), 3, s, s)
    assert torch.equal(out, ref.collage(feats, *grid))


def test_collage_tile_straddles_four_patches():
    s = 4
    feats = torch.arange(2 * 3, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 1, s, s).contiguous()
    out = collage(feats, (2, 3))  # one image, 2x3 padded grid -> 1x2 tiles
    # tile (0, 0) takes the bottom-right quarter of patch 0, bottom-left of 1, top-right of 3, top-left of 4
    tile = out[0, 0]
    assert tile[0, 0] == 0 and tile[0, -1] == 1 and tile[-1, 0] == 3 and tile[-1, -1] == 4


def test_pad_crop_half():
    x = torch.randn(1, 3, 8, 16)
    padded = pad_half(x, 8)
    assert padded.shape == (1, 3, 16, 24)
    assert padded[..., :4, :].abs().sum() == 0 and padded[..., :, -4:].abs().sum() == 0
    assert torch.equal(crop_half(padded, 8), x)


def test_split_rejects_indivisible():
    with pytest.raises(ValueError, match="not divisible"):
        split(torch.randn(1, 3, 10, 16), 4)


def test_grid_positions():
    pos = grid_positions(2, 3, offset=0.5)
    assert pos.tolist() == [[0.5, 0.5], [0.5, 1.5], [0.5, 2.5], [1.5, 0.5], [1.5, 1.5], [1.5, 2.5]]
