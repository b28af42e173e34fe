"""The Patch-DM family's configuration: its sections, the paper's presets and its range checks.

Every official default is a named field marked "official" (docs/FAITHFULNESS.md describes each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import PRECISIONS, DataConfig, Recipe, check_data, check_recipe
from .fields import Checks


@dataclass
class ModelConfig:
    patch_size: int = 64                    # official (64 | 128 | 256)
    model_channels: int = 64                # official: net_ch (128 for patch 128/256, set_patch_size)
    channel_mult: tuple = (1, 2, 4, 8)      # official (128/256: set_patch_size)
    num_res_blocks: int = 2                 # official: 2 encoder / 3 decoder blocks per level
    attention_levels: tuple = (2,)          # official quirk: the counter starting at 64 selects level 2 for every patch
    embed_channels: int = 512               # official: time (256) + position (256)
    pos_sinusoid: int = 64                  # official: per axis, hard-coded 64 (position MLP input 128)
    code_dim: int = 512                     # official: semantic code width
    dropout: float = 0.1                    # official
    code_source: str = "table"              # official "table" (CLIP-initialised, 1024 data) | "encoder" (256 data)
                                            #   | "none" (ablation, Table 4: no semantic code)
    collage: str = "feature"                # official feature collage | ablations (Fig. 2, Table 4): "pixel_fixed",
                                            #   "pixel_random" (pixel-space collage), "none" (independent patches)
    use_position: bool = True               # official; False = ablation without position embedding (Table 4)
    encoder_channels: int = 64              # official: image encoder base width
    encoder_mult: tuple = (1, 2, 4, 8, 8)   # official (128/256: set_patch_size)
    encoder_attention_levels: tuple = (2,)  # official nominal-resolution quirk again


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000               # official: T
    beta_start: float = 1e-4                # official: linear schedule, float64
    beta_end: float = 0.02
    objective: str = "eps"                  # official "eps" (predict the noise) | beyond the paper: "v"
                                            #   (v-prediction) | "flow" (rectified flow; betas unused)


@dataclass
class TrainingConfig(Recipe):
    batch_size: int = 96                    # official: train.py default (global batch)
    lr: float = 1e-4                        # official: Adam
    weight_decay: float = 0.0               # official
    grad_clip: float = 1.0                  # official: global L2 norm
    ema_decay: float = 0.9999               # official: constant from step 0
    precision: str = "fp16"                 # official: fp16 AMP
    cfg: bool = False                       # official: classifier-free-guidance dropout
    cfg_code_drop: float = 0.1              # official: code dropped when r < 0.1
    cfg_pos_drop: float = 0.5               # official: position dropped when r < 0.5
    code_grad_scale: float = 1.0            # official hack: 0.5 for the LHQ (90000, 512) table, after clipping
    save_every_samples: int = 100_000       # official
    sample_every_samples: int = 500_000     # official
    max_steps: int = 0                      # 0 = unbounded (official: 2e9 // batch)
    checkpointing: bool = False             # ours: activation checkpointing per block (less memory, same gradients)
    checkpoint_levels: int = 0              # ours: checkpoint only the k highest-resolution U-Net levels (0 = all)
    seed: int = 0                           # official
    # Training windows (docs/EVALUATION.md, "Training windows"; beyond the paper except the defaults):
    window_tiles: tuple = (1, 1)            # official: a 2x2-patch window, one collaged tile | (R, C) tiles
    window_offset: str = "grid"             # official: windows on the patch grid, shared by the batch | "random":
                                            #   each sample's window at any pixel offset (seamless's geometry)
    windows_per_image: int = 1              # official: a batch of distinct images | k windows of each image
    code_lr_scale: float = 1.0              # official: the code table learns at lr | lr x this


@dataclass
class LatentConfig:
    hidden: int = 2048                      # official: MLPSkipNet width
    num_layers: int = 10                    # official
    time_sinusoid: int = 64                 # official
    num_timesteps: int = 1000               # official
    beta: float = 0.008                     # official: constant beta
    lr: float = 1e-4                        # official: AdamW
    weight_decay: float = 0.01              # official
    batch_size: int = 512                   # official
    total_samples: int = 60_000_000         # official
    save_every_samples: int = 5_000_000     # official
    ema_decay: float = 0.9999               # official
    grad_clip: float = 1.0                  # official
    precision: str = "fp16"                 # official: fp16 autocast (fp32 on the CPU)
    max_steps: int = 0                      # 0 = total_samples // batch_size
    znormalize: bool = False                # official (since commit 7abc7dd)
    objective: str = "eps"                  # official; "v" is beyond the paper (docs/EVALUATION.md)


@dataclass
class SamplingConfig:
    image_size: tuple = (512, 1024)         # official: test.py default (H, W)
    steps: int = 50                         # official: ddim50
    latent_steps: int = 50                  # official: ddim50
    cfg_scale: float = 0.0                  # 0 = no guidance; the official w is 0.5 with CFG
    clip_x0: bool = True                    # official
    seamless: str = ""                      # official: '' (the one grid); shift, average or blend (beyond the paper)
    seamless_views: int = 0                 # grids per step of average / blend (0: the method's default)
    seamless_below: float = 0.5             # the grids move at the steps with sigma / alpha at most this


@dataclass
class PatchDMConfig:
    name: str = "nature"
    family: str = "patchdm"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> "PatchDMConfig":
        """Check every field's range (types are checked by ``override``); ValueError names the first bad field and
        the values it accepts. Run before any work starts, so a bad value never costs a half-made run."""
        check_patchdm(self)
        return self


# Official channel tables per patch size (docs/FAITHFULNESS.md, Architecture): (net_ch, unet mult, image-encoder mult).
PATCH_ARCH = {
    64: (64, (1, 2, 4, 8), (1, 2, 4, 8, 8)),
    128: (128, (1, 1, 2, 3, 4), (1, 1, 2, 3, 4, 4)),
    256: (128, (1, 1, 2, 2, 4, 4), (1, 1, 2, 2, 4, 4, 4)),
}


def set_patch_size(cfg: PatchDMConfig, patch_size: int) -> PatchDMConfig:
    """Switch the U-Net and encoder to the official architecture for ``patch_size`` (FAITHFULNESS.md:
    Architecture)."""
    if patch_size not in PATCH_ARCH:
        raise ValueError(f"patch size {patch_size} has no official architecture; choose one of {sorted(PATCH_ARCH)}")
    ch, mult, enc_mult = PATCH_ARCH[patch_size]
    m = cfg.model
    m.patch_size, m.model_channels, m.channel_mult = patch_size, ch, mult
    m.encoder_channels, m.encoder_mult = ch, enc_mult
    return cfg


def _paper(name, image_size, transform, resize=None, code_source="table", cfg=False, grad_scale=1.0):
    c = PatchDMConfig(name=name)
    c.data = DataConfig(image_size=image_size, transform=transform, resize=resize or image_size)
    c.model.code_source = code_source
    c.training.cfg = cfg
    c.training.code_grad_scale = grad_scale
    c.sampling.image_size = image_size
    # The official w = 0.5 is used where the model was trained with CFG dropout (docs/FAITHFULNESS.md, Guidance).
    c.sampling.cfg_scale = 0.5 if cfg else 0.0
    return c


def _tiny() -> PatchDMConfig:
    """Runs on a 2-core CPU in seconds: patch 8, widths 8-16, a 16x24 canvas (a 2x3 patch grid)."""
    c = PatchDMConfig(name="tiny")
    c.model = ModelConfig(patch_size=8, model_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                          attention_levels=(2,), embed_channels=32, pos_sinusoid=8, code_dim=512, dropout=0.0,
                          encoder_channels=8, encoder_mult=(1, 2, 2), encoder_attention_levels=(2,))
    c.data = DataConfig(image_size=(16, 24), transform="resize_crop", resize=(16, 24), num_workers=0)
    c.training = TrainingConfig(batch_size=4, precision="fp32", save_every_samples=1600, sample_every_samples=1600)
    c.latent = LatentConfig(hidden=32, num_layers=3, time_sinusoid=16, batch_size=8, total_samples=64,
                            save_every_samples=32)
    c.sampling = SamplingConfig(image_size=(16, 24), steps=5, latent_steps=5)
    return c


def _small() -> PatchDMConfig:
    """CPU-sized experiments on real photos: patch 16, widths 32-64, 64x128 images (a 4x8 patch grid)."""
    c = PatchDMConfig(name="small")
    c.model = ModelConfig(patch_size=16, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                          attention_levels=(2,), embed_channels=128, pos_sinusoid=16, code_dim=512, dropout=0.0,
                          encoder_channels=32, encoder_mult=(1, 2, 2, 2), encoder_attention_levels=(2,))
    c.data = DataConfig(image_size=(64, 128), transform="nature", resize=(64, 160), num_workers=1)
    c.training = TrainingConfig(batch_size=32, precision="fp32", lr=6e-4, ema_decay=0.999,
                                save_every_samples=32_000, sample_every_samples=64_000)
    c.latent = LatentConfig(hidden=256, num_layers=4, time_sinusoid=32, batch_size=64, total_samples=200_000,
                            save_every_samples=50_000, ema_decay=0.999)
    c.sampling = SamplingConfig(image_size=(64, 128), steps=50, latent_steps=50)
    return c


# The small preset's training recipes, beyond the paper, as measured for each objective (docs/EVALUATION.md, "Faster
# training"): a new small run of that objective starts from it (train.py, before --set); eps keeps the paper's.
_FASTER = {"t_sampling": "logit_normal", "t_mean": 0.0, "t_std": 1.0, "ema_schedule": "power", "ema_std": 0.05}
# v also gives its code table 30x the learning rate (docs/EVALUATION.md, "Training windows and the code table").
SMALL_RECIPES = {"v": {**_FASTER, "lr": 1e-3, "code_lr_scale": 30.0}, "flow": dict(_FASTER)}


def recipe_defaults(cfg: PatchDMConfig) -> None:
    """Give a new run of the small preset the small recipe of its objective, where one was measured."""
    if cfg.name == "small":
        for key, value in SMALL_RECIPES.get(cfg.diffusion.objective, {}).items():
            setattr(cfg.training, key, value)


_BASE = {
    # "nature1024" is 1024 wide x 512 tall: resize to 512x1280, centre crop 512x1024; code table, no CFG.
    "nature": lambda: _paper("nature", (512, 1024), "nature", resize=(512, 1280)),
    # The LHQ table's gradient is halved (the official shape-(90000, 512) hack).
    "lhq1024": lambda: _paper("lhq1024", (1024, 1024), "resize", grad_scale=0.5),
    "ffhq1024": lambda: _paper("ffhq1024", (1024, 1024), "resize"),
    # 256 data use the jointly trained image encoder and CFG dropout.
    "ffhq256": lambda: _paper("ffhq256", (256, 256), "resize", code_source="encoder", cfg=True),
    "church256": lambda: _paper("church256", (256, 256), "resize_crop", code_source="encoder", cfg=True),
    "bedroom256": lambda: _paper("bedroom256", (256, 256), "resize_crop", code_source="encoder", cfg=True),
}


def preset_names() -> list:
    names = ["tiny", "small"]
    for base in _BASE:
        names += [base, f"{base}-p128", f"{base}-p256"]
    return names


def get_preset(name: str) -> PatchDMConfig:
    """A fresh config for a preset: tiny, small, or one of the paper's datasets optionally suffixed -p128 / -p256."""
    if name == "tiny":
        return _tiny()
    if name == "small":
        return _small()
    base, _, suffix = name.partition("-p")
    cfg = _BASE[base]()
    cfg.name = name
    return set_patch_size(cfg, int(suffix)) if suffix else cfg


CODE_SOURCES = ("table", "encoder", "none")
COLLAGES = ("feature", "pixel_fixed", "pixel_random", "none")
OBJECTIVES = ("eps", "v", "flow")
SEAMLESS = ("shift", "average", "blend")  # model/patchdm/seamless.py


def check_patchdm(cfg: PatchDMConfig) -> None:
    c = Checks(cfg)
    m, d, lat, s = cfg.model, cfg.diffusion, cfg.latent, cfg.sampling
    c.at_least("model", 1, "model_channels", "num_res_blocks", "code_dim", "encoder_channels")
    c.check(m.patch_size >= 2 and m.patch_size % 2 == 0, "model.patch_size", m.patch_size,
            "must be an even number of at least 2 (the canvas is padded by half a patch)")
    c.even("model", "embed_channels", "pos_sinusoid")
    c.positive_list("model", "channel_mult", "encoder_mult")
    c.unit("model", "dropout", closed=False)
    c.one_of("model", "code_source", CODE_SOURCES)
    c.one_of("model", "collage", COLLAGES)
    c.at_least("diffusion", 1, "num_timesteps")
    c.one_of("diffusion", "objective", OBJECTIVES)
    c.check(0 < d.beta_start <= d.beta_end < 1, "diffusion.beta_start/beta_end", (d.beta_start, d.beta_end),
            "need 0 < beta_start <= beta_end < 1")
    check_data(c)
    c.at_least("training", 1, "batch_size", "save_every_samples", "sample_every_samples")
    c.at_least("training", 0, "weight_decay", "code_grad_scale", "max_steps", "checkpoint_levels", "seed")
    c.above("training", 0, "lr", "grad_clip")
    c.unit("training", "ema_decay", "cfg_code_drop", "cfg_pos_drop")
    c.one_of("training", "precision", PRECISIONS)
    check_recipe(c, "training")
    check_windows(c, cfg)
    c.at_least("latent", 1, "hidden", "num_timesteps", "batch_size", "total_samples", "save_every_samples")
    c.at_least("latent", 2, "num_layers")
    c.at_least("latent", 0, "weight_decay", "max_steps")
    c.one_of("latent", "precision", PRECISIONS)
    c.above("latent", 0, "lr", "grad_clip")
    c.even("latent", "time_sinusoid")
    c.check(0 < lat.beta < 1, "latent.beta", lat.beta, "must be in (0, 1)")
    c.check(lat.objective in ("eps", "v"), "latent.objective", lat.objective, "choose eps or v")
    c.unit("latent", "ema_decay")
    c.size("sampling", "image_size")
    c.check(1 <= s.steps <= d.num_timesteps, "sampling.steps", s.steps, f"must be in 1..{d.num_timesteps}")
    c.check(1 <= s.latent_steps <= lat.num_timesteps, "sampling.latent_steps", s.latent_steps,
            f"must be in 1..{lat.num_timesteps}")
    c.check(s.seamless in ("", *SEAMLESS), "sampling.seamless", s.seamless,
            f"choose {', '.join(SEAMLESS)} or '' (off)")
    c.at_least("sampling", 0, "seamless_views", "seamless_below")
    c.check(s.seamless in ("average", "blend") or s.seamless_views == 0, "sampling.seamless_views",
            s.seamless_views, "is for sampling.seamless average or blend (0: their default)")
    c.check(not s.seamless or m.collage == "feature", "sampling.seamless", s.seamless,
            "moves the feature collage's grid; the pixel-space collages shift their own ('' for off)")


WINDOW_OFFSETS = ("grid", "random")


def check_windows(c: Checks, cfg: PatchDMConfig) -> None:
    """The training windows fit the image and the collage (the window options move the feature collage's grid)."""
    t, m = cfg.training, cfg.model
    p, (h, w) = m.patch_size, cfg.data.image_size
    tiles = tuple(t.window_tiles)
    c.check(len(tiles) == 2 and all(isinstance(k, int) and 1 <= k for k in tiles) and tiles[0] * p <= h
            and tiles[1] * p <= w, "training.window_tiles", t.window_tiles,
            f"must be (rows, cols) of at least 1 and at most the image's grid, {h // p}x{w // p}")
    c.one_of("training", "window_offset", WINDOW_OFFSETS)
    c.at_least("training", 1, "windows_per_image")
    c.check(t.batch_size % t.windows_per_image == 0, "training.windows_per_image", t.windows_per_image,
            f"must divide the batch size {t.batch_size}")
    c.above("training", 0, "code_lr_scale")
    official = tiles == (1, 1) and t.window_offset == "grid"
    c.check(official or m.collage == "feature", "training.window_tiles/window_offset", (tiles, t.window_offset),
            "move the feature collage's windows; the pixel-space collages keep (1, 1) and grid")
