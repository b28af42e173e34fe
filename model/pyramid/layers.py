"""Building blocks of the Pyramid Diffusion Model's networks: the ResBlock, resampling, the image paths of the skip
architectures (StyleGAN2's input / output skips; the paper's res-skip), and spectral norm.

The skip architectures, as this project reads the paper's Fig. 4 (docs/PYRAMID.md, "Res-skip"):

  output skip   an RGB image y is carried up beside the features: at the coarsest level y = toRGB(h), at each finer
                level y = up(y) + toRGB(h); the output is y (StyleGAN2's 'skip' generator, NCSN++'s output_skip).
  residual      a feature pyramid p is carried up beside h: p = upconv(p); p = h = (p + h) / sqrt(2) at each finer
                level (StyleGAN2's 'resnet', NCSN++'s 'residual' progressive output).
  res-skip      both at once: the residual pyramid feeds h, and every level's h adds its toRGB to the image y.

Down the network, input skip brings the image in at every level: x_l = down(x_{l-1}), h = h + fromRGB(x_l).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .attention import norm
from .fir import down2, up2


def conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    """GN -> SiLU -> [resample] -> conv3x3 [+ time embedding] -> GN -> SiLU -> dropout -> conv3x3, plus the input
    (resampled alike, through a 1x1 conv when the width changes or it is resampled); with ``skip_rescale`` the sum is
    divided by sqrt(2). With the time embedding, FIR resampling ("up" / "down") and skip_rescale it is NCSN++'s
    BigGAN block (ResnetBlockBigGANpp)."""

    def __init__(self, cin: int, cout: int | None = None, dropout: float = 0.0, emb_dim: int = 0,
                 skip_rescale: bool = False, resample: str | None = None):
        super().__init__()
        cout = cout or cin
        self.block1 = nn.Sequential(norm(cin), nn.SiLU(), conv3(cin, cout))
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.block2 = nn.Sequential(norm(cout), nn.SiLU(), nn.Dropout(dropout), conv3(cout, cout))
        self.skip = nn.Identity() if cin == cout and resample is None else nn.Conv2d(cin, cout, 1)
        self.resample = {None: None, "up": up2, "down": down2}[resample]
        self.rescale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        gn, act, conv = self.block1
        h = act(gn(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = conv(h)
        if self.emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        return (self.skip(x) + self.block2(h)) * self.rescale


class Down(nn.Module):
    """2x2 average pooling (the paper's Fig. 4 pools in the encoder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


class Up(nn.Module):
    """Nearest x2, then a 3x3 conv (the decoder's up-sampling, latent-diffusion's)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def up_image(y: torch.Tensor) -> torch.Tensor:
    """The image path's up-sampling (bilinear: smooth, like StyleGAN2's FIR filter; no parameters)."""
    return F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)


class ToRGB(nn.Sequential):
    """GN -> SiLU -> conv3x3 to the image channels (NCSN++'s output-skip head)."""

    def __init__(self, channels: int, out_channels: int = 3):
        super().__init__(norm(channels), nn.SiLU(), conv3(channels, out_channels))


class FromRGB(nn.Conv2d):
    """1x1 conv from the image channels (input skip: h = h + fromRGB(x_l); NCSN++'s Combine 'sum')."""

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__(in_channels, channels, 1)


class UpPath(nn.Module):
    """The image / feature paths beside h on the way up (module docstring), ``mode`` output_skip, residual, res_skip
    or none; their state (y, p) travels with the caller: ``start(h)`` at the coarsest level, ``step(k, h, state)`` at
    finer level k (1 = the next finer; returns the new h and state), ``output(h, state)`` the image. ``fir``: NCSN++'s
    resampling (the image by the FIR filter, the feature pyramid by the FIR filter and a conv) instead of the
    decoder's (bilinear; nearest and a conv). ``zero_init`` starts the image convs at zero."""

    def __init__(self, widths: list, mode: str, out_channels: int = 3, fir: bool = False, zero_init: bool = False):
        super().__init__()
        self.mode = mode
        skip, res = mode in ("output_skip", "res_skip"), mode in ("residual", "res_skip")
        # widths: the channels of h at each level, coarsest first
        self.to_rgb = nn.ModuleList(ToRGB(w, out_channels) for w in widths) if skip else None
        self.res_start = nn.Sequential(norm(widths[0]), nn.SiLU(), conv3(widths[0], widths[0])) if res else None
        upsample = FIRUp() if fir else nn.Upsample(scale_factor=2.0, mode="nearest")
        self.res_up = nn.ModuleList(nn.Sequential(upsample, conv3(a, b))
                                    for a, b in zip(widths, widths[1:])) if res else None
        self.head = None if skip else ToRGB(widths[-1], out_channels)
        self.up_image = up2 if fir else up_image
        if zero_init:
            for m in [*(self.to_rgb or []), self.head]:
                if m is not None:
                    nn.init.zeros_(m[-1].weight)
                    nn.init.zeros_(m[-1].bias)

    def start(self, h: torch.Tensor) -> tuple:
        y = self.to_rgb[0](h) if self.to_rgb is not None else None
        p = self.res_start(h) if self.res_start is not None else None
        return y, p

    def step(self, k: int, h: torch.Tensor, state: tuple) -> tuple:
        y, p = state
        if p is not None:
            p = h = (self.res_up[k - 1](p) + h) / math.sqrt(2)
        if y is not None:
            y = self.up_image(y) + self.to_rgb[k](h)
        return h, (y, p)

    def output(self, h: torch.Tensor, state: tuple) -> torch.Tensor:
        return state[0] if self.head is None else self.head(h)


class FIRUp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return up2(x)


class FIRDown(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return down2(x)


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral norm (torch's parametrization, one power iteration per training step) on every conv and linear layer
    of ``module``: each weight, reshaped to (out, in * k * k), is divided by its largest singular value."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            spectral_norm(m)
    return module
