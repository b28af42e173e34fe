"""Building blocks of the Patch-DM U-Net (FAITHFULNESS.md: Architecture, Conditioning).

Module and parameter names mirror the official code so that an official state dict loads by name:
``in_layers``, ``emb_layers``, ``cond_emb_layers``, ``out_layers``, ``skip_connection``, ``norm``, ``qkv``,
``proj_out``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..common import sinusoid  # noqa: F401 (the U-Net's time and position embedding)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32 whatever the input dtype (official ``GroupNorm32``; float64 stays
    float64, for the tests that compare two evaluation orders without float32 rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(torch.promote_types(x.dtype, torch.float32))).type(x.dtype)


def norm(channels: int) -> GroupNorm32:
    """Faithful: min(32, C) groups, eps 1e-5, as the official ``normalization`` helper (FAITHFULNESS.md:
    Architecture)."""
    return GroupNorm32(min(32, channels), channels)


def zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Resample(nn.Module):
    """Parameter-free resampler of the up/down ResBlocks: nearest x2 up or 2x2 average-pool down."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Checkpointable(nn.Module):
    """A block whose forward(x, emb, code) can recompute its activations in backward instead of keeping them
    (``grad_checkpoint``, set by fast.set_checkpointing); subclasses implement ``_forward``. ``level`` is
    the resolution level of the U-Net the block works at (0 = the patch's full resolution; set by the builders)."""

    grad_checkpoint = False
    level = 0

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                code: torch.Tensor | None = None) -> torch.Tensor:
        if self.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, code, use_reentrant=False)
        return self._forward(x, emb, code)


class ResBlock(Checkpointable):
    """Two-condition ResBlock, or the unconditioned variant of the image encoder (FAITHFULNESS.md:
    Architecture).

    Conditioned: out = skip(x) + conv(drop(SiLU((GN(h) * (1 + s_t) + b_t) * (1 + c)))), where
    (s_t, b_t) = Linear(SiLU(emb)) and c = Linear(SiLU(code)); h = conv(resample(SiLU(GN(x)))).
    Unconditioned (``cond=False``): out = skip(x) + conv(resample(SiLU(GN(x)))); Faithful: the official
    block drops its whole second half when it has no condition.
    """

    def __init__(self, ch_in: int, ch_out: int, emb_dim: int = 0, code_dim: int = 0, dropout: float = 0.0,
                 resample: str | None = None, cond: bool = True):
        super().__init__()
        self.cond = cond
        self.in_layers = nn.Sequential(norm(ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.resample = Resample(resample) if resample else None
        if cond:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * ch_out))
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(code_dim, ch_out))
            self.out_layers = nn.Sequential(norm(ch_out), nn.SiLU(), nn.Dropout(dropout),
                                            zero_(nn.Conv2d(ch_out, ch_out, 3, padding=1)))
        # Faithful: the skip is a 1x1 conv when the width changes, never a 3x3 conv (FAITHFULNESS.md: Architecture).
        self.skip_connection = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def _forward(self, x, emb=None, code=None):
        """x (n, ch_in, s, s); emb (n, emb_dim) time+position; code (n, code_dim). Returns (n, ch_out, s', s')."""
        if self.resample is not None:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.resample(h))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        if self.cond:
            scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
            c = self.cond_emb_layers(code).type(h.dtype)[..., None, None]
            h = self.out_layers[0](h)
            h = h * (1 + scale) + shift
            h = h * (1 + c)
            h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(Checkpointable):
    """Single-head self-attention over the tokens of one patch (FAITHFULNESS.md: Architecture).

    Faithful: legacy QKV layout (q, k, v stacked along channels), q and k scaled by C^-1/4 each; computed with
    scaled-dot-product attention, which is the same function (softmax(q k^T / sqrt(C)) v).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_(nn.Conv1d(channels, channels, 1))

    def _forward(self, x: torch.Tensor, emb=None, code=None) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)  # each (b, c, L)
        if q.dtype in (torch.float16, torch.bfloat16):
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        else:
            # Faithful: softmax in float32, as QKVAttentionLegacy.
            scale = 1.0 / math.sqrt(math.sqrt(c))
            w = torch.einsum("bct,bcs->bts", q * scale, k * scale).float().softmax(dim=-1).type(q.dtype)
            a = torch.einsum("bts,bcs->bct", w, v).transpose(1, 2)
        h = self.proj_out(a.transpose(1, 2))
        return (x + h).reshape(b, c, *spatial)


class CondSequential(nn.Sequential):
    """A Sequential whose members take (x, emb, code); plain convs take x only (official TimestepEmbedSequential)."""

    def forward(self, x, emb=None, code=None):
        for layer in self:
            x = layer(x, emb, code) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


def encoder_half(model_channels: int, channel_mult, num_res_blocks: int, attention_levels, rb, in_channels: int = 3):
    """Input conv, ``num_res_blocks`` ResBlocks per level (+ attention at ``attention_levels``) and a down-sampling
    ResBlock between levels, as the official constructors lay them out. ``rb(cin, cout, resample)`` makes a ResBlock.

    Returns (input_blocks, skip_channels, out_channels).
    """
    ch = channel_mult[0] * model_channels
    blocks = nn.ModuleList([CondSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_chans = [ch]
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [rb(ch, mult * model_channels, None)]
            ch = mult * model_channels
            if level in attention_levels:
                layers.append(AttentionBlock(ch))
            blocks.append(at_level(CondSequential(*layers), level))
            skip_chans.append(ch)
        if level != len(channel_mult) - 1:
            blocks.append(at_level(CondSequential(rb(ch, ch, "down")), level))
            skip_chans.append(ch)
    return blocks, skip_chans, ch


def at_level(module: nn.Module, level: int) -> nn.Module:
    """Mark the blocks inside ``module`` as working at resolution ``level`` (a resampling block: its input's)."""
    for m in module.modules():
        if isinstance(m, Checkpointable):
            m.level = level
    return module
