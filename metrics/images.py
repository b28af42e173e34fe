"""Image sources for the metrics: a folder of generated images as stored, or a training dataset (LMDB or folder)
through its training geometry, both as uint8 (H, W, 3) arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dataset import IMAGE_EXTS, DataError, build_dataset, is_lmdb
from runtime.images import to_rgb


class ImageFolder(Dataset):
    """The images directly inside a folder (sorted by name, not recursive, as pytorch-fid lists them), as stored."""

    def __init__(self, path, limit: int | None = None):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DataError(f"{self.path} is not a folder of images")
        self.files = sorted(p for p in Path(self.path).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if limit is not None:
            self.files = self.files[:limit]
        if not self.files:
            raise DataError(f"{self.path} holds no images")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i) -> np.ndarray:
        try:
            with Image.open(self.files[i]) as im:
                return np.asarray(to_rgb(im), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {self.files[i]}: {e}") from None


class TrainingImages(Dataset):
    """A training dataset's images after its geometry (the resolution the model was trained at), as uint8."""

    def __init__(self, path, data_cfg, limit: int | None = None):
        self.data = build_dataset(path, data_cfg)
        self.n = len(self.data) if limit is None else min(limit, len(self.data))

    def __len__(self):
        return self.n

    def __getitem__(self, i) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(i)  # ends plain iteration (the dataset itself raises DataError past its end)
        return np.ascontiguousarray(self.data._array(i))


def open_images(path, data_cfg=None, limit: int | None = None) -> Dataset:
    """An LMDB always goes through ``data_cfg`` (required); a folder does when data_cfg is given, else as stored."""
    if is_lmdb(path):
        if data_cfg is None:
            raise DataError(f"{path} is an LMDB: give the training preset (--config) so its images are read at the "
                            "training resolution")
        return TrainingImages(path, data_cfg, limit)
    if data_cfg is not None:
        return TrainingImages(path, data_cfg, limit)
    return ImageFolder(path, limit)
