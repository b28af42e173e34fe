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

from .blocks import AttentionBlock, Checkpointable, ResBlock
from runtime.device import DTYPES

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Every ResBlock and attention block shares one forward (Checkpointable.forward), so dynamo keeps one entry per
# (block type, shapes, batch size) under that code object: the nature U-Net needs dozens per canvas size, far above
# dynamo's default of 8, past which the remaining blocks silently run eager.
RECOMPILE_LIMIT = 512
COMPILE_SCOPES = ("blocks", "halves")


def compiled_parts(unet) -> list:
    """The modules of a PatchUNet that ``speed_up`` compiles."""
    parts = [m for m in unet.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    parts += [unet.input_blocks[0][0], unet.out, unet.time_embed.time_embed, unet.time_embed.pos_embed]
    return parts


def set_checkpointing(net: nn.Module, on: bool = True, levels: int = 0) -> nn.Module:
    """Activation checkpointing for training: every ResBlock and attention block keeps only its inputs and
    recomputes its activations in backward (same gradients, dropout masks included; less memory, more compute).

    levels=k > 0 checkpoints only the blocks of the k highest-resolution levels, where the activations are largest:
    each U-Net level costs about the same compute (channels x2, pixels /4) but half the activation memory of the
    level above, so the top levels save most memory per recomputed FLOP. 0: every level."""
    for m in net.modules():
        if isinstance(m, Checkpointable):
            m.grad_checkpoint = on and (levels <= 0 or m.level < levels)
    return net


def cast_weights(net: nn.Module, precision: str) -> nn.Module:
    """For inference under autocast: store the weights of the layers that autocast runs in half precision
    (convolutions, linear layers) in that type, so that neither fp32 masters nor autocast's per-call cache of half
    copies are kept (two thirds of the weight memory saved in bf16). The same function exactly: autocast would cast
    these weights to the same type before every use. Normalisation layers keep fp32 (autocast computes them in fp32).
    Only for networks that run under autocast from then on; 'fp32' leaves the network as it is."""
    if precision == "fp32":
        return net
    dtype = DTYPES[precision]
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            for param in m.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return net


def speed_up(unet: nn.Module, compile_mode: str = "none", channels_last: bool = False, backend: str = "inductor",
             dynamic: bool | None = False, scope: str = "blocks") -> nn.Module:
    """Apply the switches in place and return the network. compile_mode 'none' leaves it eager.

    scope 'blocks' compiles every block on its own (``compiled_parts``); 'halves' compiles the embedding, the
    encoder half + middle and the decoder half as three graphs (fusion across blocks, CUDA graphs over a whole half
    with 'reduce-overhead', a few graphs per batch size instead of one per block signature). Which pays is for the
    GPU to say (docs/BENCHMARKS.md). 'halves' replaces the bound methods on this instance: compile after copying."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope {scope!r}: choose one of {', '.join(COMPILE_SCOPES)}")
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile_mode != "none":
        dyn = torch._dynamo.config
        dyn.recompile_limit = max(dyn.recompile_limit, RECOMPILE_LIMIT)
        dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
        mode = None if compile_mode == "default" or backend != "inductor" else compile_mode
        if scope == "halves":
            for name in ("embed", "encode", "decode"):
                setattr(unet, name, torch.compile(getattr(unet, name), backend=backend, mode=mode, dynamic=dynamic))
        else:
            for m in compiled_parts(unet):
                m.compile(backend=backend, mode=mode, dynamic=dynamic)
    return unet
