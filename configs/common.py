"""Config sections more than one model family uses."""

from __future__ import annotations

from dataclasses import dataclass

TRANSFORMS = ("nature", "resize", "resize_crop")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class DataConfig:
    path: str = "./dataset"                 # official: the training images (LMDB or folder), train.py --data_path
    code_table: str = ""                    # the initialize.py file the code table started from ("" : none)
    image_size: tuple = (512, 1024)         # official: training image (H, W)
    transform: str = "nature"               # official: nature | resize | resize_crop
    resize: tuple = (512, 1280)             # official nature: exact resize before the centre crop
    num_workers: int = 4                    # official


@dataclass
class Recipe:
    """How fast a denoiser learns, beyond the paper (docs/EVALUATION.md, "Faster training"); mixed into a family's
    training section. The defaults are the paper's recipe: no warm-up, a constant learning rate and EMA decay,
    torch's Adam constants, loss times uniform and every time weighted alike."""
    lr_warmup: int = 0                      # steps of linear learning-rate warm-up (0: none)
    lr_decay_start: int = 0                 # 0: constant; else lr / sqrt(max(step / lr_decay_start, 1)) (EDM2's)
    adam_betas: tuple = (0.9, 0.999)        # official: torch's defaults
    adam_eps: float = 1e-8                  # official: torch's default
    ema_schedule: str = "constant"          # official: the decay is ema_decay from step 1 | "warmup": min(ema_decay,
                                            #   (1 + n) / (10 + n)) at update n | "power": EDM2's power function,
                                            #   (1 - 1/n) ** (gamma + 1) with gamma from ema_std
    ema_std: float = 0.05                   # "power": the average's width relative to the run's length (sigma_rel)
    ema_posthoc: tuple = ()                 # widths of power-function averages kept for post-hoc EMA, e.g. [0.05, 0.1]
                                            #   (in checkpoints and snapshots; posthoc_ema.py combines them)
    t_sampling: str = "uniform"             # official: loss times uniform | "logit_normal": sigmoid(N(t_mean, t_std))
                                            #   of the way from the data to the noise (SD3's)
    t_mean: float = 0.0
    t_std: float = 1.0
    loss_weight: str = "uniform"            # official: every time alike | "min_snr": min(SNR, gamma) x the x0 error
    min_snr_gamma: float = 5.0              # (Hang et al. 2023; for eps, v and flow alike)


EMA_SCHEDULES = ("constant", "warmup", "power")
T_SAMPLINGS = ("uniform", "logit_normal")
LOSS_WEIGHTS = ("uniform", "min_snr")


def check_recipe(c, section: str) -> None:
    """Range checks of a training section that mixes in ``Recipe``."""
    r = getattr(c.cfg, section)
    c.at_least(section, 0, "lr_warmup", "lr_decay_start")
    c.check(len(r.adam_betas) == 2 and all(0 <= b < 1 for b in r.adam_betas), f"{section}.adam_betas",
            r.adam_betas, "must be two numbers in [0, 1)")
    c.above(section, 0, "adam_eps", "t_std", "min_snr_gamma")
    c.one_of(section, "ema_schedule", EMA_SCHEDULES)
    c.check(0 < r.ema_std < 0.28, f"{section}.ema_std", r.ema_std, "must be in (0, 0.28) (EDM2 uses 0.05-0.10)")
    c.check(all(isinstance(s, (int, float)) and 0 < s < 0.28 for s in r.ema_posthoc) and
            len(set(r.ema_posthoc)) == len(r.ema_posthoc), f"{section}.ema_posthoc", r.ema_posthoc,
            "must be distinct widths in (0, 0.28), e.g. [0.05, 0.1]")
    c.one_of(section, "t_sampling", T_SAMPLINGS)
    c.one_of(section, "loss_weight", LOSS_WEIGHTS)


def check_data(c) -> None:
    """Range checks of a DataConfig section (``c`` a fields.Checks over the whole config)."""
    c.size("data", "image_size", "resize")
    c.one_of("data", "transform", TRANSFORMS)
    c.at_least("data", 0, "num_workers")
