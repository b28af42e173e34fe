"""Deterministic, resumable data order and the training DataLoader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import CLIError, UserError
from .rng import rng


class StepBatchSampler(Sampler):
    """Endless batches for one rank, a pure function of (seed, step): resuming at step s continues exactly.

    Each epoch is a permutation seeded by (seed, epoch), cut into global batches of ``batch * world`` with the
    remainder dropped (as the official drop_last=True); rank r takes the r-th slice of ``batch``. The global batch
    is therefore the same whatever the number of processes.
    """

    def __init__(self, n: int, batch: int, seed: int = 0, rank: int = 0, world: int = 1, start_step: int = 0,
                 region_of=None, per_image: int = 1):
        """region_of(step, k) -> a runtime.images.View (or its (top, left, height, width)) of the k-th sample of the
        global batch at ``step``: when given, items are (index, view) so that the dataset loads only that region of
        each image (Patch-DM's training window; the pyramid autoencoder's random crops). per_image: each image
        fills that many consecutive samples of a batch (``batch`` a multiple of it; 1: distinct images)."""
        self.n, self.batch, self.seed, self.rank, self.world, self.start = n, batch, seed, rank, world, start_step
        self.region_of, self.per_image = region_of, per_image
        if batch % per_image:
            raise CLIError(f"a batch of {batch} cannot hold {per_image} samples of each image")
        self.images = batch // per_image  # distinct images per rank and step
        self.steps_per_epoch = n // (self.images * world)
        if self.steps_per_epoch == 0:
            raise CLIError(f"the dataset has {n} images, fewer than one global batch of {self.images * world}; "
                           "lower --batch_size")

    def batch_at(self, step: int) -> list:
        epoch, k = divmod(step, self.steps_per_epoch)
        g = rng(self.seed, "order", epoch)
        start = k * self.images * self.world + self.rank * self.images
        batch = torch.randperm(self.n, generator=g)[start:start + self.images].tolist()
        if self.per_image > 1:
            batch = [i for i in batch for _ in range(self.per_image)]
        if self.region_of is not None:
            first = self.rank * self.batch
            batch = [(i, self.region_of(step, first + j)) for j, i in enumerate(batch)]
        return batch

    def __iter__(self):
        step = self.start
        while True:
            yield self.batch_at(step)
            step += 1


def make_loader(dataset, sampler: StepBatchSampler, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)


class SkipUnreadable(Dataset):
    """Training view of an ImageDataset that survives a damaged image: an item that cannot be read is replaced by
    the next readable image in index order (so a batch is still a function of the step), and the reason travels
    with the batch for the log. Items are (image, index, problem) with problem '' for a good image; the index is the
    image actually returned, so its semantic code matches it."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item):
        windowed = isinstance(item, (tuple, list))
        index = item[0] if windowed else item
        problem = ""
        for k in range(len(self.data)):
            j = (index + k) % len(self.data)
            try:
                x, i = self.data[(j, *item[1:]) if windowed else j]
                return x, i, problem
            except UserError as e:
                problem = problem or str(e)
        raise UserError(f"no image of {getattr(self.data, 'path', 'the dataset')} can be read ({problem})")


def check_stored_size(data, image_size: tuple, preset: str, allow_upscale: bool = False, probes: int = 8) -> None:
    """Refuse a dataset whose stored images are smaller than the training images of ``preset`` (they would be
    upscaled: usually a forgotten --config), looking at ``probes`` images spread over the dataset."""
    h, w = image_size
    n = len(data)
    for i in sorted({round(k * (n - 1) / max(1, probes - 1)) for k in range(min(n, probes))}):
        try:
            sh, sw = data.stored_size(i)
        except UserError:
            continue  # unreadable: skipped during training like any other
        if (sh < h or sw < w) and not allow_upscale:
            raise CLIError(f"{data.path} stores {sh}x{sw} images (image {i}), smaller than the {h}x{w} training "
                           f"images of the {preset} preset: they would be upscaled. Pass the preset the data was "
                           "packed for (--config), re-pack the photos with img2lmdb.py --config "
                           f"{preset}, or pass --allow_upscale")
