"""Semantic-code sources (FAITHFULNESS.md: Semantic codes): a trainable code table, or the jointly trained image
encoder."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionBlock, CondSequential, ResBlock, encoder_half, norm


class CodeTable(nn.Module):
    """One trainable code per training image (official ``Semantic``; key ``semantic_enc.weight``).

    Initialised from CLIP image embeddings by initialize.py; looked up by dataset index.
    """

    def __init__(self, num_codes: int, code_dim: int = 512, init: torch.Tensor | None = None):
        super().__init__()
        self.semantic_enc = nn.Embedding(num_codes, code_dim)
        if init is not None:
            if tuple(init.shape) != (num_codes, code_dim):
                raise ValueError(f"code table init has shape {tuple(init.shape)}, expected ({num_codes}, {code_dim})")
            with torch.no_grad():
                self.semantic_enc.weight.copy_(init)

    @property
    def weight(self) -> torch.Tensor:
        return self.semantic_enc.weight

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """index (B,) long -> codes (B, code_dim)."""
        return self.semantic_enc(index)


class NullCode(nn.Module):
    """No semantic code (the Table 4 / Fig. 9a ablation): every image gets the zero code, so each ResBlock's code
    term is the constant 1 + W SiLU(0) + b. No parameters; the U-Net is unchanged."""

    def __init__(self, code_dim: int = 512):
        super().__init__()
        self.code_dim = code_dim

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        """ref: any (B, ...) tensor of the batch (indices or images) -> zeros (B, code_dim)."""
        return torch.zeros(ref.shape[0], self.code_dim, device=ref.device)


class ImageEncoder(nn.Module):
    """Half U-Net image encoder for 256x256 data (official ``BeatGANsEncoderModel``, FAITHFULNESS.md: Semantic codes).

    Unconditioned ResBlocks, down-sampling ResBlocks between levels, attention at ``attention_levels``
    (Faithful: level 2, from the nominal resolution counter starting at 64), middle RB-Attn-RB, then
    GroupNorm -> SiLU -> global average pool -> 1x1 conv -> flatten.
    """

    def __init__(self, model_channels: int = 64, channel_mult=(1, 2, 4, 8, 8), num_res_blocks: int = 2,
                 attention_levels=(2,), code_dim: int = 512, dropout: float = 0.1, in_channels: int = 3):
        super().__init__()

        def rb(cin, cout, resample=None):
            return ResBlock(cin, cout, dropout=dropout, resample=resample, cond=False)

        self.input_blocks, _, ch = encoder_half(model_channels, channel_mult, num_res_blocks, attention_levels, rb,
                                                in_channels)
        self.middle_block = CondSequential(rb(ch, ch), AttentionBlock(ch), rb(ch, ch))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, code_dim, 1),
                                 nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) full un-padded image in [-1, 1] -> code (B, code_dim)."""
        h = x
        for block in self.input_blocks:
            h = block(h)
        return self.out(self.middle_block(h))
