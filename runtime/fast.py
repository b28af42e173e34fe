"""Opt-in speed switches for the patch U-Net: torch.compile per block and channels-last memory format.

Both compute the same function as the eager network (tests compare them); whether they pay depends on the GPU
and is measured by benchmarks/sample_speed.py and benchmarks/train_speed.py (docs/BENCHMARKS.md).

The U-Net is compiled block by block (each ResBlock, AttentionBlock, the input conv, the output head and the
embedding MLPs), not as one graph: ``encode`` / ``decode`` are called separately around the feature collage, and
banded decoding calls them with several batch shapes, which per-block graphs handle with few recompilations. A
block is where the fusable work is (GroupNorm -> scale/shift -> code multiply -> SiLU -> conv).
"""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import AttentionBlock, Checkpointable, ResBlock

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compiled_parts(unet) -> list:
    """The modules of a PatchUNet that ``speed_up`` compiles."""
    parts = [m for m in unet.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    parts += [unet.input_blocks[0][0], unet.out, unet.time_embed.time_embed, unet.time_embed.pos_embed]
    return parts


def set_checkpointing(net: nn.Module, on: bool = True) -> nn.Module:
    """Activation checkpointing for training: every ResBlock and attention block keeps only its inputs and
    recomputes its activations in backward (same gradients, dropout masks included; less memory, more compute)."""
    for m in net.modules():
        if isinstance(m, Checkpointable):
            m.grad_checkpoint = on
    return net


def speed_up(unet: nn.Module, compile_mode: str = "none", channels_last: bool = False, backend: str = "inductor",
             dynamic: bool | None = False) -> nn.Module:
    """Apply the switches in place and return the network. compile_mode 'none' leaves it eager."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile_mode != "none":
        for m in compiled_parts(unet):
            m.compile(backend=backend, mode=None if compile_mode == "default" or backend != "inductor"
                      else compile_mode, dynamic=dynamic)
    return unet
