"""The collage modes: how the patches of a canvas are made to agree (paper Fig. 2, Table 4). Each mode is one small
object that owns its canvas prediction and its two-term training loss; the model's config names the mode and every
sampler and trainer asks it.

  feature       the official feature collage: the decoder sees the stitched, half-shifted encoder features.
  pixel_fixed   pixel-space collage with a fixed half-patch shift: plain per-patch network; sampling alternates the
                image grid and the half-shifted grid step by step (Fig. 2b).
  pixel_random  the same with a random shift (a random crop of the window in training, a seeded random grid shift at
                odd sampling steps).
  none          independent patches on the image grid (Fig. 2a).

The pixel-space modes are this project's reading of the paper (it gives no more detail): docs/FAITHFULNESS.md.
"""

from __future__ import annotations

import torch

from configs import COLLAGES as COLLAGE_NAMES
from runtime.rng import rng
from .canvas import canvas_prediction, decode_collaged, encode_grid, shifted_canvas_prediction
from .grid import crop_half, split, stitch, window_origin
from .seamless import combine


def _plain_term(unet, h, skips, emb, code_p, target, mask, p, b):
    """The un-shifted term: the plain decoder on the four window patches, padding masked out of the mean over all
    3 p^2 elements (Faithful: the official masked mean divides by every element). Per image, (B,)."""
    pred = unet.decode(h, skips, emb, code_p)
    mask_p = split(mask.expand(b, -1, -1, -1), p)
    return (((split(target, p) - pred.float()) ** 2) * mask_p).reshape(b, -1).mean(dim=1)


class FeatureCollage:
    """The official mode. Its canvas prediction can be computed band by band, so samplers may update the canvas in
    place (``streams``)."""

    name, streams, random_offset = "feature", True, False

    def predict(self, unet, p, x_t, t, code, opts, pos_keep=None, step=0):
        """The prediction over canvases (opts: a CanvasOptions; bands bound memory with the same result); with
        opts.seamless, the grids of sampling step ``step`` (k = 0 first) combined."""
        if opts.seamless is None:
            return canvas_prediction(unet, x_t, t, code, p, pos_keep, opts.band_rows, opts.band_cols, opts.wrap)
        offsets = opts.seamless.offsets(step, p, opts.seed)
        preds = [canvas_prediction(unet, x_t, t, code, p, pos_keep, opts.band_rows, opts.band_cols, opts.wrap, o)
                 for o in offsets]
        return combine(preds, offsets, opts.seamless, 0, p)

    def loss_terms(self, unet, x_t, target, mask, t, window, code, p, pos_keep=None, offset=None):
        """(shift, noshift) per image for one window: x_t, target (B, 3, (R+1)p, (C+1)p) and mask (1 or B, 1, ...) are
        the window of the padded canvas (the paper's: 2x2 patches, R = C = 1). shift: the collaged pass for the
        window's R x C inner tiles against the centre of ``target``, padding masked out of the mean over all its
        elements (the paper's centre tile always lies on the image); noshift: ``_plain_term`` over the window's
        patches, from the same encoder pass. ``window``: (row, col) or the samples' pixel tops (grid.window_origin)."""
        pred, encoded = self.window_prediction(unet, x_t, t, window, code, p, pos_keep)
        noshift = _plain_term(unet, *encoded, target, mask, p, x_t.shape[0])
        err = (crop_half(target, p) - pred.float()) ** 2 * crop_half(mask, p)
        return err.mean(dim=(1, 2, 3)), noshift

    @staticmethod
    def window_prediction(unet, x_t, t, window, code, p, pos_keep=None):
        """The collaged prediction (B, 3, Rp, Cp) of a training window x_t (B, 3, (R+1)p, (C+1)p) at ``window``
        (grid.window_origin), and its encoder pass (h, skips, emb, code_patch) for the un-shifted term. Tile (i, j)
        equals the tile of a canvas evaluation whose grid puts it over the same pixels (tests/test_windows.py)."""
        grid = (x_t.shape[-2] // p, x_t.shape[-1] // p)
        origin = window_origin(window, p)
        encoded = encode_grid(unet, split(x_t, p), grid, origin, t, code, pos_keep)
        h, skips = encoded[:2]
        pred = stitch(decode_collaged(unet, h, skips, grid, origin, t, code, pos_keep), (grid[0] - 1, grid[1] - 1))
        return pred, encoded


class PixelCollage:
    """Pixel-space collage: the plain per-patch network on shifted grids instead of shifted features."""

    streams = False

    def __init__(self, name: str):
        self.name = name
        self.random_offset = name == "pixel_random"  # training draws the crop's offset inside the window

    def shift(self, k: int, p: int, seed: int = 0) -> tuple:
        """The grid shift (sy, sx) of sampling step k (k = 0 first): the image grid at even steps; at odd steps half
        a patch (pixel_fixed) or uniform in 0..p-1 per axis, a function of (seed, k) only (pixel_random)."""
        if k % 2 == 0:
            return 0, 0
        if self.name == "pixel_fixed":
            return p // 2, p // 2
        sy, sx = torch.randint(p, (2,), generator=rng(seed, "shift", k)).tolist()
        return sy, sx

    def predict(self, unet, p, x_t, t, code, opts, pos_keep=None, step=0):
        """The canvas prediction of independent patches on the shifted grid of sampling step ``step`` (k = 0 first);
        bands only bound how many patches one forward sees (the patches are independent, so the result is the
        same)."""
        max_patches, rows, cols = None, opts.band_rows, opts.band_cols
        if rows is not None or cols is not None:
            max_patches = x_t.shape[0] * (rows or x_t.shape[-2] // p + 1) * (cols or x_t.shape[-1] // p + 1)
        return shifted_canvas_prediction(unet, x_t, t, code, p, self.shift(step, p, opts.seed), pos_keep, opts.wrap,
                                         max_patches)

    def shifted_term(self, unet, x_t, target, mask, t, window, code, p, pos_keep=None, offset=None):
        """The plain network on the p x p crop at ``offset`` (dy, dx) inside the window (pixel_random; the centre
        patch, offset (p/2, p/2), otherwise) at position (row + dy/p, col + dx/p), padding masked. Per image."""
        b = x_t.shape[0]
        dy, dx = offset if self.name == "pixel_random" else (p // 2, p // 2)
        if not (0 <= dy < p and 0 <= dx < p):
            raise ValueError(f"pixel shift offset {(dy, dx)} outside 0..{p - 1}")
        rs, cs = slice(dy, dy + p), slice(dx, dx + p)
        pos = torch.tensor([[window[0] + dy / p, window[1] + dx / p]], device=t.device).repeat(b, 1)
        pred = unet(x_t[..., rs, cs], t, pos, code, pos_keep)
        err = (target[..., rs, cs] - pred.float()) ** 2
        return (err * mask[..., rs, cs]).reshape(b, -1).mean(dim=1)

    def loss_terms(self, unet, x_t, target, mask, t, window, code, p, pos_keep=None, offset=None):
        """(shifted term, the un-shifted term of the feature mode) per image."""
        h, skips, emb, code_p = encode_grid(unet, split(x_t, p), (2, 2), window, t, code, pos_keep)
        noshift = _plain_term(unet, h, skips, emb, code_p, target, mask, p, x_t.shape[0])
        return self.shifted_term(unet, x_t, target, mask, t, window, code, p, pos_keep, offset), noshift


class NoCollage(PixelCollage):
    """Independent patches: always the image grid; the loss is pixel_fixed's shifted term alone (the window's centre
    patch is an image-grid patch), the un-shifted term is 0."""

    def __init__(self):
        super().__init__("none")

    def shift(self, k: int, p: int, seed: int = 0) -> tuple:
        return 0, 0

    def loss_terms(self, unet, x_t, target, mask, t, window, code, p, pos_keep=None, offset=None):
        shift = self.shifted_term(unet, x_t, target, mask, t, window, code, p, pos_keep)
        return shift, torch.zeros(x_t.shape[0], device=x_t.device)


_MODES = {"feature": FeatureCollage(), "pixel_fixed": PixelCollage("pixel_fixed"),
          "pixel_random": PixelCollage("pixel_random"), "none": NoCollage()}


def collage_mode(name: str):
    """The mode object of a collage name; ValueError naming the choices otherwise."""
    if name not in _MODES:
        raise ValueError(f"collage {name!r}: choose one of {', '.join(COLLAGE_NAMES)}")
    return _MODES[name]


def pixel_shift(name: str, k: int, p: int, seed: int = 0) -> tuple:
    """The grid shift of sampling step k of a pixel-space mode (``PixelCollage.shift``)."""
    mode = collage_mode(name)
    if not isinstance(mode, PixelCollage):
        raise ValueError("the feature collage has no pixel shift")
    return mode.shift(k, p, seed)
