"""The trainable Patch-DM network: the patch U-Net plus its semantic-code source, in the official layout."""

from __future__ import annotations

import torch

from .codes import CodeTable, ImageEncoder
from .unet import PatchUNet

# The official BeatGANsAutoencModel keeps the code source under this name; files (ours and official) use it.
FILE_PREFIX, PREFIX = "encoder.", "code_source."


class PatchDM(PatchUNet):
    """PatchUNet with ``code_source`` = CodeTable (codes by dataset index), ImageEncoder (codes from the image) or
    NullCode (the no-code ablation: zeros).

    Its state dict is the official ``BeatGANsAutoencModel`` layout: U-Net keys at the top level, the code table at
    ``encoder.semantic_enc.weight`` or the image encoder under ``encoder.``, so official files and ours share names.
    (The attribute is ``code_source``: ``encode`` is the U-Net's encoder half, a different thing.)
    """

    def __init__(self, code_source: torch.nn.Module, **unet_kwargs):
        super().__init__(**unet_kwargs)
        self.code_source = code_source

    @property
    def uses_table(self) -> bool:
        return isinstance(self.code_source, CodeTable)

    @property
    def needs_image(self) -> bool:
        """True when codes come from the whole image (the image encoder), so training must load whole images."""
        return isinstance(self.code_source, ImageEncoder)

    def codes(self, x0: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
        """(B, D) codes: table rows for ``index``, the image encoder applied to the un-padded images x0, or zeros."""
        if self.uses_table:
            return self.code_source(index)
        if self.needs_image:
            return self.code_source(x0)
        return self.code_source(index if index is not None else x0)

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        for k in [k for k in sd if k.startswith(PREFIX)]:
            sd[FILE_PREFIX + k[len(PREFIX):]] = sd.pop(k)
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        sd = {(PREFIX + k[len(FILE_PREFIX):] if k.startswith(FILE_PREFIX) else k): v for k, v in state_dict.items()}
        return super().load_state_dict(sd, strict=strict, assign=assign)
