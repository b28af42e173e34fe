"""The Patch-DM patch denoiser: an ADM/DiffAE U-Net split into an encoder half and a decoder half
(FAITHFULNESS.md: Architecture, Conditioning).

The two halves are separate methods so that the feature collage (FAITHFULNESS.md: Feature collage) can sit between them:
``encode`` sees each padded patch alone, the caller collages the bottleneck and every skip, and ``decode`` gives the
prediction (eps for the paper's objective; v or the flow velocity for the others) for the shifted patches.
``forward`` is the plain per-patch network (no collage).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionBlock, CondSequential, ResBlock, at_level, encoder_half, norm, sinusoid, zero_


class TimePosEmbed(nn.Module):
    """Time and position embedding MLPs (official ``TimeStyleSeperateEmbed``, FAITHFULNESS.md: Conditioning).

    Returns concat(time_mlp(sin(t)), pos_mlp([sin(row), sin(col)])), time first. The semantic-code "style" map
    of the official module is the identity for 512-d codes, so it has no module here.
    """

    def __init__(self, time_in: int, pos_in_per_axis: int, out_half: int):
        super().__init__()
        self.time_in, self.pos_in = time_in, pos_in_per_axis
        self.time_embed = nn.Sequential(nn.Linear(time_in, out_half), nn.SiLU(), nn.Linear(out_half, out_half))
        self.pos_embed = nn.Sequential(nn.Linear(2 * pos_in_per_axis, out_half), nn.SiLU(),
                                       nn.Linear(out_half, out_half))

    def forward(self, t: torch.Tensor, pos: torch.Tensor, pos_keep: torch.Tensor | None = None) -> torch.Tensor:
        """t (n,) integer timesteps; pos (n, 2) (row, col) in patch units; pos_keep (n,) 0/1 or None.

        Faithful (FAITHFULNESS.md: Guidance): a dropped position zeroes the sinusoid BEFORE the MLP, so the null
        position is MLP(0).
        """
        dtype = self.time_embed[0].weight.dtype  # float32 unless the module was cast (e.g. float64 in tests)
        p = torch.cat([sinusoid(pos[:, 0], self.pos_in), sinusoid(pos[:, 1], self.pos_in)], dim=1).to(dtype)
        if pos_keep is not None:
            p = p * pos_keep[:, None].to(p.dtype)
        return torch.cat([self.time_embed(sinusoid(t, self.time_in).to(dtype)), self.pos_embed(p)], dim=1)


class PatchUNet(nn.Module):
    """Patch denoiser. Parameter names match the official ``BeatGANsAutoencModel`` (minus its ``encoder``).

    Args:
        model_channels: base width (64 for patch 64, 128 for 128/256).
        channel_mult: width multipliers per level.
        num_res_blocks: ResBlocks per level in the encoder half (decoder half has one more).
        attention_levels: level indices with attention. Faithful: the official counter starts at the literal 64
            and inserts attention where it reads 16, i.e. always level 2 whatever the patch size (FAITHFULNESS.md:
            Architecture).
        embed_channels: width of the time+position embedding (two halves of embed_channels/2).
        code_dim: width of the semantic code.
        pos_sinusoid: sinusoid width per position axis (64; the position MLP input is twice that).
        use_position: False is the Table 4 ablation without position embedding: every position is dropped (the
            position MLP sees zeros, as a CFG-dropped position), with the same modules and parameter names.
    """

    def __init__(self, model_channels: int = 64, channel_mult=(1, 2, 4, 8), num_res_blocks: int = 2,
                 attention_levels=(2,), embed_channels: int = 512, code_dim: int = 512, pos_sinusoid: int = 64,
                 dropout: float = 0.1, in_channels: int = 3, out_channels: int = 3, use_position: bool = True):
        super().__init__()
        self.num_levels = len(channel_mult)
        self.use_position = use_position
        self.time_embed = TimePosEmbed(model_channels, pos_sinusoid, embed_channels // 2)

        def rb(cin, cout, resample=None):
            return ResBlock(cin, cout, embed_channels, code_dim, dropout, resample=resample)

        # Faithful: conv_in width is model_channels (channel_mult[0] is 1 in every official table).
        self.input_blocks, skip_chans, ch = encoder_half(model_channels, channel_mult, num_res_blocks,
                                                         attention_levels, rb, in_channels)
        self.middle_block = at_level(CondSequential(rb(ch, ch), AttentionBlock(ch), rb(ch, ch)), self.num_levels - 1)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [rb(ch + skip_chans.pop(), mult * model_channels)]
                ch = mult * model_channels
                if level in attention_levels:
                    layers.append(AttentionBlock(ch))
                if level and i == num_res_blocks:
                    layers.append(rb(ch, ch, "up"))
                self.output_blocks.append(at_level(CondSequential(*layers), level))
        assert not skip_chans
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def embed(self, t: torch.Tensor, pos: torch.Tensor, pos_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Per-patch time+position embedding (n, embed_channels); see TimePosEmbed."""
        if not self.use_position:
            pos_keep = torch.zeros(t.shape[0], device=t.device)
        return self.time_embed(t, pos, pos_keep)

    def encode(self, x: torch.Tensor, emb: torch.Tensor, code: torch.Tensor):
        """Encoder half + middle block on independent patches.

        x (n, 3, p, p); emb (n, E); code (n, D). Returns (h, skips): h (n, C_mid, p/2^L, p/2^L) and the skip
        tensors in encoder order (the decoder consumes them last-in first-out).
        """
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, code)
            skips.append(h)
        return self.middle_block(h, emb, code), skips

    def decode(self, h: torch.Tensor, skips: list, emb: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Decoder half. h and skips as returned by ``encode`` (possibly collaged); consumes ``skips``.

        Returns the prediction (n, 3, p, p) for the n (possibly shifted) patches described by emb and code.
        """
        skips = list(skips)
        for block in self.output_blocks:
            h = block[0](torch.cat([h, skips.pop()], dim=1), emb, code)
            for layer in block[1:]:
                h = layer(h, emb, code)
        return self.out(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, code: torch.Tensor,
                pos_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Plain per-patch prediction without collage (the official un-shifted pass). x (n, 3, p, p)."""
        emb = self.embed(t, pos, pos_keep)
        h, skips = self.encode(x, emb, code)
        return self.decode(h, skips, emb, code)
