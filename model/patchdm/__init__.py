"""The Patch-DM family: the patch U-Net and its blocks (unet, blocks), the patch grid and feature collage (grid,
canvas), the collage modes (modes), the denoiser over canvases and windows (denoiser), the semantic-code sources
(codes), the code DDPM's MLP (code_mlp), code fitting for unseen images (fit_code), how the family trains (training:
the denoiser and code DDPM tasks of the shared loop) and samples (sampling: the canvas driver over the generic
samplers), its checkpoints (checkpoint; official files: official), speed switches (fast), the documented functional
API (api) and its command-line helpers (cli)."""

from .builders import build_encoder, build_latent, build_patchdm, build_unet, unet_kwargs
from .code_mlp import LatentMLP
from .codes import CodeTable, ImageEncoder, NullCode
from .denoiser import CanvasOptions, Denoiser, Window
from .network import PatchDM
from .official import LoadedModel, load_official_checkpoint
from .unet import PatchUNet

__all__ = ["build_encoder", "build_latent", "build_patchdm", "build_unet", "unet_kwargs", "LatentMLP", "CodeTable",
           "ImageEncoder", "NullCode", "CanvasOptions", "Denoiser", "Window", "PatchDM", "LoadedModel",
           "load_official_checkpoint", "PatchUNet"]
