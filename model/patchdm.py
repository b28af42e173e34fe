"""The trainable Patch-DM network: the patch U-Net plus its semantic-code source, in the official layout."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import CodeTable, ImageEncoder
from .unet import PatchUNet


class PatchDM(PatchUNet):
    """PatchUNet with ``encoder`` = CodeTable (codes by dataset index), ImageEncoder (codes from the image) or
    NullCode (the no-code ablation: zeros).

    Its state dict is the official ``BeatGANsAutoencModel`` layout: U-Net keys at the top level, the code table at
    ``encoder.semantic_enc.weight`` or the image encoder under ``encoder.``, so official files and ours share names.
    """

    def __init__(self, encoder: nn.Module, **unet_kwargs):
        super().__init__(**unet_kwargs)
        self.encoder = encoder

    @property
    def uses_table(self) -> bool:
        return isinstance(self.encoder, CodeTable)

    @property
    def needs_image(self) -> bool:
        """True when codes come from the whole image (the image encoder), so training must load whole images."""
        return isinstance(self.encoder, ImageEncoder)

    def codes(self, x0: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
        """(B, D) codes: table rows for ``index``, the image encoder applied to the un-padded images x0, or zeros."""
        if self.uses_table:
            return self.encoder(index)
        if self.needs_image:
            return self.encoder(x0)
        return self.encoder(index if index is not None else x0)
