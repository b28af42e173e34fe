"""Attention of the Pyramid Diffusion Model: linear attention (the encoder's), and spatial-channel attention (the
decoder's and the flow network's), the paper's Eq. (8).

Spatial-channel attention normalises its input once and runs two branches in parallel: spatial attention over the
H*W pixels (tokens of C channels, score scale C^-1/2, as NCSN++'s AttnBlockpp) and channel attention over the C
channels (tokens of H*W values; L2-normalised queries and keys with a learned temperature, as Restormer's MDTA, with
1x1 projections only). Their outputs are re-weighted by the share of pixels and channels,

    out = x + a * spatial(h) + b * channel(h),   a = HW / (HW + C),   b = C / (HW + C),

computed from the feature map's own shape, so a + b = 1 and the residual may sit inside each branch alike. Above
``full_attention_max`` pixels the spatial branch is linear attention (quadratic attention over 8192 pixels is what a
CPU cannot afford; the paper does not say what it did). Output projections start at zero when ``zero_init``, so a new
block is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (the largest count that divides the channels), eps 1e-6 (NCSN++'s)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


def sc_weights(pixels: int, channels: int) -> tuple:
    """(a, b) of Eq. (8): the spatial and channel weights of a map with ``pixels`` = H*W and ``channels`` = C."""
    return pixels / (pixels + channels), channels / (pixels + channels)


def _proj(cin: int, cout: int, zero_init: bool) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    if zero_init:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, heads, C / heads, H * W)."""
    b, c = t.shape[:2]
    return t.reshape(b, heads, c // heads, -1)


def spatial_attention(q, k, v, heads: int) -> torch.Tensor:
    """Softmax attention over pixels: q, k, v (B, C, H, W) -> (B, C, H, W), scale (C / heads)^-1/2."""
    b, c, h, w = q.shape
    q, k, v = (_heads(t, heads).transpose(-1, -2) for t in (q, k, v))  # (B, heads, HW, c)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(-1, -2).reshape(b, c, h, w)


def linear_attention(q, k, v, heads: int) -> torch.Tensor:
    """Linear attention over pixels (Shen et al.; lucidrains' denoising-diffusion's LinearAttention): queries
    softmaxed over channels, keys over pixels, context = k v^T (c x c per head), out = context^T q; cost linear in
    H*W."""
    b, c, h, w = q.shape
    q, k, v = (_heads(t, heads) for t in (q, k, v))  # (B, heads, c, HW)
    q = q.softmax(dim=-2) * (q.shape[-2] ** -0.5)
    k = k.softmax(dim=-1)
    context = torch.einsum("bhdn,bhen->bhde", k, v)
    return torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, c, h, w)


class LinearAttention(nn.Module):
    """x + proj(linear_attention(GN(x))): the encoder's attention."""

    def __init__(self, channels: int, heads: int = 1, zero_init: bool = True):
        super().__init__()
        self.heads = heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _proj(channels, channels, zero_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        return x + self.proj(linear_attention(q, k, v, self.heads))


class SpatialAttention(nn.Module):
    """x + proj(softmax attention over pixels of GN(x)) (NCSN++'s AttnBlockpp): the ablation of spatial-channel
    attention. Linear above ``full_attention_max`` pixels."""

    def __init__(self, channels: int, heads: int = 1, full_attention_max: int = 4096, zero_init: bool = True):
        super().__init__()
        self.heads, self.full_max = heads, full_attention_max
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _proj(channels, channels, zero_init)

    def spatial(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(h).chunk(3, dim=1)
        attend = spatial_attention if h.shape[-2] * h.shape[-1] <= self.full_max else linear_attention
        return self.proj(attend(q, k, v, self.heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.spatial(self.norm(x))


class SpatialChannelAttention(SpatialAttention):
    """The paper's spatial-channel attention (module docstring)."""

    def __init__(self, channels: int, heads: int = 1, full_attention_max: int = 4096, zero_init: bool = True):
        super().__init__(channels, heads, full_attention_max, zero_init)
        self.cqkv = nn.Conv2d(channels, 3 * channels, 1)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.cproj = _proj(channels, channels, zero_init)

    def channel(self, h: torch.Tensor) -> torch.Tensor:
        """Attention among the channels (tokens of H*W values): (B, C, H, W) -> (B, C, H, W)."""
        b, c, hh, ww = h.shape
        q, k, v = (_heads(t, self.heads) for t in self.cqkv(h).chunk(3, dim=1))  # (B, heads, c, HW)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-1, -2) * self.temperature).softmax(dim=-1)  # (B, heads, c, c)
        return self.cproj((attn @ v).reshape(b, c, hh, ww))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        a, b = sc_weights(x.shape[-2] * x.shape[-1], x.shape[1])
        return x + a * self.spatial(h) + b * self.channel(h)


ATTENTIONS = {"spatial_channel": SpatialChannelAttention, "spatial": SpatialAttention}
