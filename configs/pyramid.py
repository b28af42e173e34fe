"""The Pyramid Diffusion Model family's configuration (PDM, arXiv 2403.12915): the pyramid autoencoder and its
training, presets and range checks. The paper leaves most numbers open; each choice is recorded in docs/PYRAMID.md.

A level is one resolution of the autoencoder: level l works at the image size / 2^l with channels * channel_mult[l].
Latents pop out of the encoder at ``latent_levels`` with ``latent_channels`` each (the pyramid); one latent level is
the single-latent autoencoder of latent diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import PRECISIONS, DataConfig, Recipe, check_data, check_recipe
from .fields import Checks


@dataclass
class AutoencoderConfig:
    channels: int = 32                          # base width
    channel_mult: tuple = (1, 1, 2, 2, 4, 4)    # width per level; level l is the image / 2^l
    blocks: int = 1                             # ResBlocks per encoder level; the decoder has one more (the paper's)
    latent_levels: tuple = (3, 4, 5)            # where latents pop out (the finest first)
    latent_channels: tuple = (8, 16, 32)        # channels of each latent
    encoder_attention: tuple = (2, 3, 4, 5)     # levels with linear attention in the encoder
    decoder_attention: tuple = (2, 3, 4, 5)     # levels with spatial-channel attention in the decoder
    full_attention_max: int = 4096              # above this many pixels the spatial branch is linear attention
    heads: int = 1                              # attention heads (channels split among them)
    spectral_norm: bool = True                  # on every encoder conv and linear (the paper's); never the decoder
    logvar_init: float = 0.0                    # the posteriors' initial log-variance (latent diffusion's: 0)
    decoder_skip: str = "output_skip"           # the decoder's image path: output_skip (the paper's) | res_skip | none
    dropout: float = 0.0


@dataclass
class AutoencoderTrainingConfig:
    crop: tuple = (0, 0)                        # the training crop (H, W) of the stored image; (0, 0): the whole image
    crop_zoom: tuple = (1.0, 1.0)               # a crop shows zoom x its size of the image (uniform in this range),
                                                #   brought down to the crop size: several scales of each photo
    flip: bool = False                          # mirror half of the crops left-right
    batch_size: int = 8
    lr: float = 4e-4
    betas: tuple = (0.5, 0.9)                   # latent-diffusion's Adam
    weight_decay: float = 0.0
    grad_clip: float = 0.0                      # 0: no clipping (latent-diffusion clips nothing)
    ema_decay: float = 0.995
    precision: str = "fp32"
    kl_weight: float = 1e-6                     # latent-diffusion: relative to the L1 summed over pixels
    lpips_weight: float = 1.0                   # with --lpips FILE only (the VGG16 backbone's weights)
    lpips_path: str = ""
    disc_start: int = -1                        # the step the hinge patch-GAN starts at; -1: no GAN
    disc_weight: float = 0.5                    # latent-diffusion's, times the adaptive weight
    disc_layers: int = 3
    save_every_samples: int = 8_000
    sample_every_samples: int = 8_000
    max_steps: int = 0                          # 0 = unbounded
    seed: int = 0


@dataclass
class FlowConfig:
    """The Pyramid NCSN++ (model/pyramid/ncsnpp.py); its levels start at the finest latent's size."""
    channels: int = 32
    channel_mult: tuple = (1, 2, 2)             # width per level; must reach the coarsest latent's level
    blocks: int = 2                             # ResBlocks per level down (one more up)
    attention: tuple = (1, 2)                   # levels with attention (the mid block always has it)
    attention_kind: str = "spatial_channel"     # the paper's | spatial (NCSN++'s; the ablation)
    progressive: str = "res_skip"               # up: res_skip (the paper's) | output_skip | residual | none
    progressive_input: str = "input_skip"       # down: input_skip (the paper's) | residual | res_skip | none
    spectral_norm: bool = True                  # on every conv and linear but the output heads (the paper's)
    dropout: float = 0.35                       # at the coarsest level and the mid block
    dropout_schedule: str = "decreasing"        # falling linearly to 0 at the finest (the paper's) | constant
    heads: int = 1
    full_attention_max: int = 4096


@dataclass
class FlowTrainingConfig(Recipe):
    """train_latent.py on a pyramid autoencoder: latent rectified flow (the paper's Eq. 7)."""
    batch_size: int = 32
    lr: float = 2e-4
    lr_warmup: int = 100                        # steps of linear learning-rate warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    eps: float = 1e-3                           # t drawn in [eps, 1 + eps], clamped at the data end; sampling from eps
    scale_iterations: int = 100                 # steps over which each latent's std is estimated (then frozen)
    scale_momentum: float = 0.9                 # the estimate's exponential moving average
    flip: bool = True                           # the mirrored training images too
    precision: str = "fp32"
    save_every_samples: int = 16_000
    sample_every_samples: int = 16_000
    max_steps: int = 0                          # 0 = unbounded
    seed: int = 0


# Fields renamed since files were written with them: {section: {old name: new name}} (configs.from_dict).
RENAMED = {"flow_training": {"warmup": "lr_warmup"}}


@dataclass
class PyramidSampling:
    image_size: tuple = (64, 128)               # what test.py --reconstruct brings images to (H, W)
    sampler: str = "euler"                      # euler | heun | rk45 (the paper's: euler 200 and rk45)
    steps: int = 200
    rtol: float = 1e-5                          # rk45's tolerances (RectifiedFlow's)
    atol: float = 1e-5


@dataclass
class PyramidConfig:
    name: str = "pyramid_small"
    family: str = "pyramid"
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=(128, 256), transform="resize_crop",
                                                                resize=(128, 256), num_workers=1))
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    ae_training: AutoencoderTrainingConfig = field(default_factory=AutoencoderTrainingConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    flow_training: FlowTrainingConfig = field(default_factory=FlowTrainingConfig)
    sampling: PyramidSampling = field(default_factory=PyramidSampling)

    def validate(self) -> "PyramidConfig":
        check_pyramid(self)
        return self


def _tiny() -> PyramidConfig:
    """Runs on a CPU in seconds (tests): 16x24 images, widths 8-16, latents 8x12x2 + 4x6x4."""
    c = PyramidConfig(name="pyramid_tiny")
    c.data = DataConfig(image_size=(16, 24), transform="resize_crop", resize=(16, 24), num_workers=0)
    c.autoencoder = AutoencoderConfig(channels=8, channel_mult=(1, 2, 2), latent_levels=(1, 2),
                                      latent_channels=(2, 4), encoder_attention=(1, 2), decoder_attention=(0, 1, 2))
    c.ae_training = AutoencoderTrainingConfig(batch_size=4, disc_layers=1, save_every_samples=16,
                                              sample_every_samples=16)
    c.flow = FlowConfig(channels=8, channel_mult=(1, 2), blocks=1, attention=(1,))
    c.flow_training = FlowTrainingConfig(batch_size=4, save_every_samples=16, sample_every_samples=16,
                                         scale_iterations=3)
    c.sampling.steps = 4
    c.sampling.image_size = (16, 24)
    return c


def _small() -> PyramidConfig:
    """64x128 photos on a CPU: latents 8x16x8 + 4x8x16 + 2x4x32 (1:13.7). Photos are stored at 128x256 and trained
    on as 64x128 crops of a region 1 to 2 times that size (the whole photo at 2): a few dozen photos give many."""
    c = PyramidConfig(name="pyramid_small")
    c.autoencoder.logvar_init = -7.0
    t = c.ae_training
    t.crop, t.crop_zoom, t.flip = (64, 128), (1.0, 2.0), True
    t.batch_size, t.max_steps = 4, 1500  # about 15 minutes on 2 CPU cores
    t.save_every_samples = t.sample_every_samples = 2_000
    f = c.flow_training
    f.lr, f.max_steps = 6e-4, 2700  # about 16 minutes on 2 CPU cores (lr: docs/PYRAMID.md, "The flow network")
    return c


def _single() -> PyramidConfig:
    """The single-latent baseline of pyramid_small: one 8x16x14 latent (the same 1:13.7), four levels, the width
    that gives the pyramid's number of parameters (docs/PYRAMID.md)."""
    c = _small()
    c.name = "pyramid_single"
    a = c.autoencoder
    a.channels, a.channel_mult = 40, (1, 1, 3, 4)
    a.latent_levels, a.latent_channels = (3,), (14,)
    a.encoder_attention, a.decoder_attention = (2, 3), (2, 3)
    return c


def _2k() -> PyramidConfig:
    """2048x1024 (W x H) images, the paper's PEOPLE2K ratio: latents 16x32x32 + 8x16x64 + 4x8x128 + 2x4x256
    (1:204.8) at levels 6-9 (the finest at f = 64, channels doubling as the resolution halves)."""
    c = PyramidConfig(name="pyramid_2k")
    c.data = DataConfig(image_size=(1024, 2048), transform="resize_crop", resize=(1024, 2048), num_workers=4)
    a = c.autoencoder
    a.channels, a.channel_mult = 32, (1, 1, 2, 2, 4, 4, 8, 8, 8, 8)
    a.latent_levels, a.latent_channels = (6, 7, 8, 9), (32, 64, 128, 256)
    a.encoder_attention, a.decoder_attention = (5, 6, 7, 8, 9), (5, 6, 7, 8, 9)
    c.ae_training.batch_size, c.ae_training.lr = 4, 1e-4
    c.ae_training.save_every_samples = c.ae_training.sample_every_samples = 4_000
    c.flow.channels, c.flow.channel_mult, c.flow.attention = 128, (1, 2, 2, 2), (1, 2, 3)
    c.flow_training.batch_size, c.flow_training.lr = 32, 2e-4
    c.sampling.image_size = (1024, 2048)
    return c


PRESETS = {"pyramid_tiny": _tiny, "pyramid_small": _small, "pyramid_single": _single, "pyramid_2k": _2k}
DECODER_SKIPS = ("output_skip", "res_skip", "none")
FLOW_ATTENTION = ("spatial_channel", "spatial")
FLOW_PROGRESSIVE = ("output_skip", "residual", "res_skip", "none")
FLOW_PROGRESSIVE_INPUT = ("input_skip", "residual", "res_skip", "none")
FLOW_DROPOUT = ("decreasing", "constant")
FLOW_SAMPLERS = ("euler", "heun", "rk45")


def preset_names() -> list:
    return list(PRESETS)


def get_preset(name: str) -> PyramidConfig:
    return PRESETS[name]()


def check_pyramid(cfg: PyramidConfig) -> None:
    c = Checks(cfg)
    a, t = cfg.autoencoder, cfg.ae_training
    levels = len(a.channel_mult)
    c.at_least("autoencoder", 1, "channels", "blocks", "heads", "full_attention_max")
    c.positive_list("autoencoder", "channel_mult", "latent_channels")
    c.check(len(a.latent_levels) == len(a.latent_channels) >= 1, "autoencoder.latent_levels", a.latent_levels,
            "must name one level per latent_channels entry")
    c.check(list(a.latent_levels) == sorted(set(a.latent_levels)) and all(0 <= l < levels for l in a.latent_levels),
            "autoencoder.latent_levels", a.latent_levels, f"must be distinct, ascending levels in 0..{levels - 1}")
    c.check(a.latent_levels[-1] == levels - 1, "autoencoder.latent_levels", a.latent_levels,
            f"the coarsest latent must be at the last level ({levels - 1}); drop the levels below it")
    for name in ("encoder_attention", "decoder_attention"):
        v = getattr(a, name)
        c.check(all(0 <= l < levels for l in v), f"autoencoder.{name}", v, f"levels in 0..{levels - 1}")
    c.check(all(a.channels * m % a.heads == 0 for m in a.channel_mult), "autoencoder.heads", a.heads,
            "must divide every level's width")
    c.one_of("autoencoder", "decoder_skip", DECODER_SKIPS)
    c.unit("autoencoder", "dropout", closed=False)
    check_data(c)
    h, w = cfg.data.image_size
    c.at_least("ae_training", 1, "batch_size", "save_every_samples", "sample_every_samples")
    c.at_least("ae_training", 0, "weight_decay", "grad_clip", "kl_weight", "lpips_weight", "disc_weight", "max_steps",
               "seed")
    c.above("ae_training", 0, "lr")
    c.at_least("ae_training", -1, "disc_start")
    c.at_least("ae_training", 1, "disc_layers")
    c.check(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "ae_training.betas", t.betas,
            "must be two numbers in [0, 1)")
    c.check(len(t.crop) == 2 and (tuple(t.crop) == (0, 0) or (0 < t.crop[0] <= h and 0 < t.crop[1] <= w)),
            "ae_training.crop", t.crop, f"must be [0, 0] (whole images) or a size within data.image_size {h}x{w}")
    crop = tuple(t.crop) if tuple(t.crop) != (0, 0) else (h, w)
    c.check(crop[0] % 2 ** (levels - 1) == 0 and crop[1] % 2 ** (levels - 1) == 0,
            "ae_training.crop" if tuple(t.crop) != (0, 0) else "data.image_size", crop,
            f"must be divisible by 2^{levels - 1} (the autoencoder's levels)")
    c.check(len(t.crop_zoom) == 2 and 1 <= t.crop_zoom[0] <= t.crop_zoom[1]
            and crop[0] * t.crop_zoom[1] <= h + 1e-9 and crop[1] * t.crop_zoom[1] <= w + 1e-9, "ae_training.crop_zoom",
            t.crop_zoom, "must be [low, high] with 1 <= low <= high and the zoomed crop within data.image_size")
    c.unit("ae_training", "ema_decay")
    c.one_of("ae_training", "precision", PRECISIONS)
    check_flow(c, cfg)
    c.size("sampling", "image_size")


def check_flow(c: Checks, cfg: PyramidConfig) -> None:
    f, t, s, a = cfg.flow, cfg.flow_training, cfg.sampling, cfg.autoencoder
    c.at_least("flow", 1, "channels", "blocks", "heads", "full_attention_max")
    c.positive_list("flow", "channel_mult")
    levels = len(f.channel_mult)
    c.check(all(0 <= l < levels for l in f.attention), "flow.attention", f.attention, f"levels in 0..{levels - 1}")
    reach = a.latent_levels[-1] - a.latent_levels[0]
    c.check(levels > reach, "flow.channel_mult", f.channel_mult,
            f"needs at least {reach + 1} levels to reach the coarsest latent")
    c.check(all(f.channels * m % f.heads == 0 for m in f.channel_mult), "flow.heads", f.heads,
            "must divide every level's width")
    c.one_of("flow", "attention_kind", FLOW_ATTENTION)
    c.one_of("flow", "progressive", FLOW_PROGRESSIVE)
    c.one_of("flow", "progressive_input", FLOW_PROGRESSIVE_INPUT)
    c.one_of("flow", "dropout_schedule", FLOW_DROPOUT)
    c.unit("flow", "dropout", closed=False)
    c.at_least("flow_training", 1, "batch_size", "save_every_samples", "sample_every_samples")
    c.at_least("flow_training", 0, "grad_clip", "scale_iterations", "max_steps", "seed")
    c.above("flow_training", 0, "lr")
    c.unit("flow_training", "ema_decay")
    c.unit("flow_training", "scale_momentum")
    c.check(0 <= t.eps < 0.5, "flow_training.eps", t.eps, "must be in [0, 0.5)")
    c.one_of("flow_training", "precision", PRECISIONS)
    check_recipe(c, "flow_training")
    c.one_of("sampling", "sampler", FLOW_SAMPLERS)
    c.at_least("sampling", 1, "steps")
    c.above("sampling", 0, "rtol", "atol")
