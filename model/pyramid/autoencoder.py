"""The pyramid autoencoder (the paper's Fig. 5): a light encoder whose latents pop out at several resolutions, each a
diagonal Gaussian (KL-regularised, as latent diffusion's AutoencoderKL), and a heavier decoder with a branch per
latent. One latent level is the single-latent autoencoder of latent diffusion (the baseline).

Encoder (light, spectral-normed): conv_in, then per level ``blocks`` ResBlocks (+ linear attention), 2x2 average
pooling between levels with input skip (the pooled image joins through a 1x1 conv at every level), a middle block
(ResBlock, attention, ResBlock) at the coarsest level, and at each latent level a head GN -> SiLU -> conv3x3 to the
mean and log-variance of that latent (the log-variance starting at ``logvar_init``: latent diffusion starts at 0, a
posterior std of 1 that a small KL weight lets fall only as fast as Adam moves a bias, docs/PYRAMID.md).

Decoder (heavy, no spectral norm): the coarsest latent's branch (conv3x3, ResBlock, spatial-channel attention) starts
the stream, a middle block follows; at every level ``blocks + 1`` ResBlocks (+ spatial-channel attention), nearest +
conv up-sampling between levels, and at each finer latent level that latent's branch is added to the stream. The
image comes out through the output skip (every level adds its toRGB to an up-sampled image; layers.UpPath).

Decoding with latents left out (the paper's Fig. 7): a left-out branch adds nothing; without the coarsest latent the
stream starts from zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import LinearAttention, SpatialChannelAttention
from .layers import Down, FromRGB, ResBlock, Up, UpPath, conv3, norm, with_spectral_norm


class DiagonalGaussian:
    """A latent's posterior from moments (B, 2c, h, w): mean and log-variance (clamped to [-30, 20], as latent
    diffusion's DiagonalGaussianDistribution)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per image, summed over the latent's values: (B,)."""
        return 0.5 * (self.mean ** 2 + self.std ** 2 - 1.0 - self.logvar).sum(dim=(1, 2, 3))


def _widths(channels: int, mult) -> list:
    return [channels * m for m in mult]


class PyramidEncoder(nn.Module):
    def __init__(self, channels: int = 32, channel_mult=(1, 1, 2, 2, 4, 4), blocks: int = 1,
                 latent_levels=(3, 4, 5), latent_channels=(8, 16, 32), attention=(1, 2, 3, 4, 5), heads: int = 1,
                 dropout: float = 0.0, spectral_norm: bool = True, logvar_init: float = 0.0, in_channels: int = 3):
        super().__init__()
        w = _widths(channels, channel_mult)
        self.latent_levels, self.latent_channels = tuple(latent_levels), tuple(latent_channels)
        zero = not spectral_norm  # spectral norm cannot start from a zero weight (it divides by its norm)
        self.conv_in = conv3(in_channels, w[0])
        self.from_rgb = nn.ModuleList(FromRGB(w[l - 1], in_channels) for l in range(1, len(w)))
        self.down = Down()
        self.levels = nn.ModuleList()
        for l, width in enumerate(w):
            layers = []
            for i in range(blocks):
                layers.append(ResBlock(w[max(l - 1, 0)] if i == 0 else width, width, dropout))
                if l in attention:
                    layers.append(LinearAttention(width, heads, zero_init=zero))
            self.levels.append(nn.Sequential(*layers))
        last = w[-1]
        self.mid = nn.Sequential(ResBlock(last, last, dropout), LinearAttention(last, heads, zero_init=zero),
                                 ResBlock(last, last, dropout))
        self.heads = nn.ModuleList(nn.Sequential(norm(w[l]), nn.SiLU(), conv3(w[l], 2 * c))
                                   for l, c in zip(latent_levels, latent_channels))
        with torch.no_grad():  # the posteriors' log-variance starts at logvar_init (their std at exp(logvar_init / 2))
            for head, c in zip(self.heads, latent_channels):
                head[-1].bias[c:] = logvar_init
        if spectral_norm:
            with_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> list:
        """x (B, 3, H, W) in [-1, 1] -> the posteriors of the latents, finest first."""
        h, img, out = self.conv_in(x), x, []
        for l, level in enumerate(self.levels):
            if l:
                h, img = self.down(h), self.down(img)
                h = h + self.from_rgb[l - 1](img)
            h = level(h)
            if l == len(self.levels) - 1:
                h = self.mid(h)
            if l in self.latent_levels:
                out.append(DiagonalGaussian(self.heads[self.latent_levels.index(l)](h)))
        return out


class PyramidDecoder(nn.Module):
    def __init__(self, channels: int = 32, channel_mult=(1, 1, 2, 2, 4, 4), blocks: int = 1,
                 latent_levels=(3, 4, 5), latent_channels=(8, 16, 32), attention=(0, 1, 2, 3, 4, 5), heads: int = 1,
                 full_attention_max: int = 4096, dropout: float = 0.0, skip: str = "output_skip",
                 out_channels: int = 3):
        super().__init__()
        w = _widths(channels, channel_mult)
        top = len(w) - 1
        self.latent_levels, self.top = tuple(latent_levels), top

        def attn(width):
            return SpatialChannelAttention(width, heads, full_attention_max)

        # A latent's branch gives the stream's width where it joins: the level's own at the coarsest, else the width
        # the stream has just after up-sampling into that level (the level above's).
        self.branches = nn.ModuleList(
            nn.Sequential(conv3(c, w[min(l + 1, top)]), ResBlock(w[min(l + 1, top)], dropout=dropout),
                          attn(w[min(l + 1, top)]))
            for l, c in zip(latent_levels, latent_channels))
        self.mid = nn.Sequential(ResBlock(w[top], dropout=dropout), attn(w[top]), ResBlock(w[top], dropout=dropout))
        self.levels, self.ups = nn.ModuleList(), nn.ModuleList()
        for l in range(top, -1, -1):
            layers = [ResBlock(w[min(l + 1, top)] if i == 0 else w[l], w[l], dropout) for i in range(blocks + 1)]
            if l in attention:
                layers.append(attn(w[l]))
            self.levels.append(nn.Sequential(*layers))
            self.ups.append(Up(w[l]) if l else nn.Identity())
        self.path = UpPath([w[l] for l in range(top, -1, -1)], skip, out_channels)

    def last_layer(self) -> torch.Tensor:
        """The weight of the layer that makes the image (latent diffusion's adaptive GAN weight is taken there)."""
        head = self.path.head if self.path.head is not None else self.path.to_rgb[-1]
        return head[-1].weight

    def start_shape(self, zs: list) -> tuple:
        """(B, C, h, w) of the stream at the coarsest level, read off any latent that is kept."""
        i, z = next((i, z) for i, z in enumerate(zs) if z is not None)
        f = 2 ** (self.top - self.latent_levels[i])
        return z.shape[0], self.mid[0].block1[2].in_channels, z.shape[-2] // f, z.shape[-1] // f

    def forward(self, zs: list) -> torch.Tensor:
        """zs: one latent per latent level, finest first; None leaves it out (at least one must be given)."""
        if all(z is None for z in zs):
            raise ValueError("decode needs at least one latent")
        joins = {l: (self.branches[i], z) for i, (l, z) in enumerate(zip(self.latent_levels, zs)) if z is not None}
        if self.top in joins:
            branch, z = joins.pop(self.top)
            h = branch(z)
        else:
            z = next(z for z in zs if z is not None)
            h = torch.zeros(self.start_shape(zs), device=z.device, dtype=z.dtype)
        h = self.mid(h)
        state = None
        for k, level in enumerate(self.levels):
            l = self.top - k
            if l in joins:
                branch, z = joins[l]
                h = h + branch(z)
            h = level(h)
            h, state = (h, self.path.start(h)) if k == 0 else self.path.step(k, h, state)
            h = self.ups[k](h)
        return self.path.output(h, state)


class PyramidAutoencoder(nn.Module):
    """encode(x) -> posteriors (finest first); decode(latents, keep) -> image; forward(x, noise) -> (reconstruction,
    posteriors) with each latent sampled as mean + std * noise[i]."""

    def __init__(self, encoder: PyramidEncoder, decoder: PyramidDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    @property
    def num_latents(self) -> int:
        return len(self.decoder.latent_levels)

    def latent_shapes(self, h: int, w: int) -> list:
        """(C, H, W) of each latent of an h x w image, finest first."""
        e = self.encoder
        return [(c, h >> lv, w >> lv) for lv, c in zip(e.latent_levels, e.latent_channels)]

    def encode(self, x: torch.Tensor) -> list:
        return self.encoder(x)

    def decode(self, zs: list, keep=None) -> torch.Tensor:
        """keep: the latent indices to use (0 = the finest; None: all); the others are left out (Fig. 7)."""
        if keep is not None:
            zs = [z if i in keep else None for i, z in enumerate(zs)]
        return self.decoder(zs)

    def forward(self, x: torch.Tensor, noise: list | None = None) -> tuple:
        posts = self.encode(x)
        zs = [p.mean if noise is None else p.sample(n) for p, n in zip(posts, noise or [None] * len(posts))]
        return self.decode(zs), posts
