"""The Pyramid Diffusion Model family (PDM, arXiv 2403.12915): attention (attention: linear, spatial and
spatial-channel), building blocks and the skip architectures (layers), FIR resampling (fir), the pyramid autoencoder
(autoencoder), its losses (losses) and training (training), the Pyramid NCSN++ (ncsnpp), latent rectified flow (flow)
and its training (flow_training), reconstructions and samples (sampling), its checkpoints (checkpoint) and builders.
docs/PYRAMID.md records what the paper leaves open and how each gap was filled."""

from .attention import LinearAttention, SpatialAttention, SpatialChannelAttention, sc_weights
from .autoencoder import DiagonalGaussian, PyramidAutoencoder, PyramidDecoder, PyramidEncoder
from .builders import build_autoencoder, build_flow
from .flow import LatentFlow, LatentScaler
from .ncsnpp import PyramidNCSNpp

__all__ = ["LinearAttention", "SpatialAttention", "SpatialChannelAttention", "sc_weights", "DiagonalGaussian",
           "PyramidAutoencoder", "PyramidDecoder", "PyramidEncoder", "build_autoencoder", "build_flow", "LatentFlow",
           "LatentScaler", "PyramidNCSNpp"]
