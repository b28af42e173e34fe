"""The Pyramid NCSN++: the flow network on the pyramid latents (the paper's Fig. 6), in this project's own code.

The backbone is NCSN++ (Song et al. 2021) on the finest latent: BigGAN residual blocks with the time embedding and
FIR resampling, ``blocks`` per level down and ``blocks + 1`` up with U-Net skips, attention at chosen levels, a mid
block, and NCSN++'s progressive paths, down (``progressive_input``) and up (``progressive``):

  input_skip   the input latent, FIR-downsampled, is added at every level through a 1x1 conv (NCSN++'s Combine 'sum')
  output_skip  the output is built on the way up: y = up(y) + head(h) at every level (layers.UpPath)
  residual     a feature pyramid p beside h: down, p = h = (downconv(p) + h) / sqrt(2); up, the same with upconv
  res_skip     the paper's res-skip (Fig. 4): both at once (docs/PYRAMID.md, "Res-skip")

Attention is the paper's spatial-channel attention (or plain spatial attention, the ablation). Each coarser latent
has a branch: its latent goes in through a conv and a ResBlock (e_i) and is added to the backbone's features where
they reach its resolution on the way down (a 1x1 conv: the paper's input skip from the branches); its velocity comes
out of the backbone's features at that resolution on the way up, head(ResBlock((h + e_i) / sqrt(2))) (the paper's
res-skip from the backbone to the branch outputs). Without branches (a single-latent autoencoder) it is NCSN++.

The network is convolutional with no square assumption: any latent size divisible by 2^(levels - 1) works, 2:1
included (the reference selects attention by the feature width, which breaks for 2:1; here it is by level).
Dropout per level (the paper's decreasing dropout against "concept aliasing"): ``dropout`` at the coarsest level and
the mid block, falling linearly to 0 at the finest; or ``dropout`` everywhere (constant).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..common import sinusoid
from .attention import SpatialAttention, SpatialChannelAttention, norm
from .layers import FIRDown, ResBlock, UpPath, conv3, with_spectral_norm
from .fir import down2

def level_dropout(rate: float, levels: int, schedule: str = "decreasing") -> list:
    """The dropout rate of each level, finest first: rate * l / (levels - 1) (decreasing: ``rate`` at the coarsest,
    0 at the finest; one level: ``rate``), or ``rate`` at every level (constant)."""
    if schedule == "constant" or levels == 1:
        return [rate] * levels
    return [rate * l / (levels - 1) for l in range(levels)]


class Block(nn.Module):
    """A ResBlock with the time embedding, then attention (or nothing)."""

    def __init__(self, cin: int, cout: int, dropout: float, emb: int, attn: nn.Module | None):
        super().__init__()
        self.res = ResBlock(cin, cout, dropout, emb, skip_rescale=True)
        self.attn = attn

    def forward(self, h, emb):
        h = self.res(h, emb)
        return h if self.attn is None else self.attn(h)


class Branch(nn.Module):
    """One coarser latent's branch: in, conv + ResBlock -> e (added to the backbone by ``inject``); out,
    head(ResBlock((h + e) / sqrt(2)))."""

    def __init__(self, channels: int, width: int, into: int, dropout: float, emb: int):
        super().__init__()
        self.conv_in = conv3(channels, width)
        self.res_in = ResBlock(width, width, dropout, emb, skip_rescale=True)
        self.inject = nn.Conv2d(width, into, 1)
        self.res_out = ResBlock(width, width, dropout, emb, skip_rescale=True)

    def embed(self, z, emb):
        return self.res_in(self.conv_in(z), emb)


class PyramidNCSNpp(nn.Module):
    def __init__(self, in_channels: int, channels: int = 32, channel_mult=(1, 2, 2), blocks: int = 2,
                 attention=(1, 2), attention_kind: str = "spatial_channel", progressive: str = "res_skip",
                 progressive_input: str = "input_skip", spectral_norm: bool = True, dropout: float = 0.35,
                 dropout_schedule: str = "decreasing", heads: int = 1, full_attention_max: int = 4096,
                 branches=()):
        """in_channels: the finest latent's channels; branches: ((level, channels), ...) of the coarser latents,
        level l meaning the finest latent's size / 2^l (1 .. len(channel_mult) - 1)."""
        super().__init__()
        w = [channels * m for m in channel_mult]
        L, emb = len(w), 4 * channels
        rates = level_dropout(dropout, L, dropout_schedule)
        self.channels, self.progressive_input = channels, progressive_input
        self.branch_levels = tuple(int(l) for l, _ in branches)
        attn_cls = SpatialChannelAttention if attention_kind == "spatial_channel" else SpatialAttention
        zero = not spectral_norm  # spectral norm cannot start from a zero weight

        def attn(width, level):
            return attn_cls(width, heads, full_attention_max, zero_init=zero) if level in attention else None

        self.embed = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = conv3(in_channels, w[0])
        skips, cin = [w[0]], w[0]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        self.input_skip, self.input_res = nn.ModuleList(), nn.ModuleList()
        pyr = in_channels
        for l in range(L):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(Block(cin, w[l], rates[l], emb, attn(w[l], l)))
                cin = w[l]
                skips.append(cin)
            self.down.append(level)
            if l < L - 1:
                self.downsample.append(ResBlock(cin, cin, rates[l], emb, skip_rescale=True, resample="down"))
                if progressive_input in ("input_skip", "res_skip"):
                    self.input_skip.append(nn.Conv2d(in_channels, cin, 1))
                if progressive_input in ("residual", "res_skip"):
                    self.input_res.append(nn.Sequential(FIRDown(), conv3(pyr, cin)))
                    pyr = cin
                skips.append(cin)
        self.branches = nn.ModuleList(Branch(c, w[l], w[l - 1], rates[l], emb) for l, c in branches)
        mid_attn = attn_cls(cin, heads, full_attention_max, zero_init=zero)
        self.mid = nn.ModuleList([Block(cin, cin, dropout, emb, mid_attn), Block(cin, cin, dropout, emb, None)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for l in reversed(range(L)):
            level = nn.ModuleList()
            for b in range(blocks + 1):
                level.append(Block(cin + skips.pop(), w[l], rates[l], emb, attn(w[l], l) if b == blocks else None))
                cin = w[l]
            self.up.append(level)
            if l:
                self.upsample.append(ResBlock(cin, cin, rates[l], emb, skip_rescale=True, resample="up"))
        if spectral_norm:  # everything but the output heads below
            with_spectral_norm(self)
        self.out = UpPath(w[::-1], progressive, in_channels, fir=True, zero_init=True)
        self.heads = nn.ModuleList(nn.Sequential(norm(w[l]), nn.SiLU(), conv3(w[l], c)) for l, c in branches)
        for head in self.heads:
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def forward(self, x, t: torch.Tensor):
        """x: the finest latent (B, C, H, W), or a tuple of every latent (finest first) when the network has
        branches; t (B,) the time input. Returns the velocity of each, in x's structure."""
        zs = x if isinstance(x, (tuple, list)) else (x,)
        emb = self.embed(sinusoid(t, self.channels).to(zs[0].dtype))
        es = [b.embed(z, emb) for b, z in zip(self.branches, zs[1:])]
        h = self.conv_in(zs[0])
        hs, img, pyr = [h], zs[0], zs[0]
        for l, level in enumerate(self.down):
            if l:
                h = self.downsample[l - 1](h, emb)
                if self.progressive_input in ("residual", "res_skip"):
                    pyr = h = (self.input_res[l - 1](pyr) + h) / math.sqrt(2)
                if self.progressive_input in ("input_skip", "res_skip"):
                    img = down2(img)
                    h = h + self.input_skip[l - 1](img)
                for k, bl in enumerate(self.branch_levels):
                    if bl == l:
                        h = h + self.branches[k].inject(es[k])
                hs.append(h)
            for block in level:
                h = block(h, emb)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        outs, state, top = [None] * len(self.branches), None, len(self.up) - 1
        for k, level in enumerate(self.up):
            l = top - k
            for block in level:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            for j, bl in enumerate(self.branch_levels):
                if bl == l:
                    b = self.branches[j]
                    outs[j] = self.heads[j](b.res_out((h + es[j]) / math.sqrt(2), emb))
            h, state = (h, self.out.start(h)) if k == 0 else self.out.step(k, h, state)
            if l:
                h = self.upsample[k](h, emb)
        v = self.out.output(h, state)
        return (v, *outs) if isinstance(x, (tuple, list)) else v
