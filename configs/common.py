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


def check_data(c) -> None:
    """Range checks of a DataConfig section (``c`` a fields.Checks over the whole config)."""
    c.size("data", "image_size", "resize")
    c.one_of("data", "transform", TRANSFORMS)
    c.at_least("data", 0, "num_workers")
