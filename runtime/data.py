"""Deterministic, resumable data order and the training DataLoader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from .errors import CLIError


class StepBatchSampler(Sampler):
    """Endless batches for one rank, a pure function of (seed, step): resuming at step s continues exactly.

    Each epoch is a permutation seeded by (seed, epoch), cut into global batches of ``batch * world`` with the
    remainder dropped (as the official drop_last=True); rank r takes the r-th slice of ``batch``. The global batch
    is therefore the same whatever the number of processes.
    """

    def __init__(self, n: int, batch: int, seed: int = 0, rank: int = 0, world: int = 1, start_step: int = 0,
                 window_of=None, patch_size: int = 0):
        """window_of(step) -> (row, col): when given, items are (index, window, patch_size) so that the dataset
        loads only the training window."""
        self.n, self.batch, self.seed, self.rank, self.world, self.start = n, batch, seed, rank, world, start_step
        self.window_of, self.p = window_of, patch_size
        self.steps_per_epoch = n // (batch * world)
        if self.steps_per_epoch == 0:
            raise CLIError(f"the dataset has {n} images, fewer than one global batch of {batch * world}; "
                           "lower --batch_size")

    def batch_at(self, step: int) -> list:
        epoch, k = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        start = k * self.batch * self.world + self.rank * self.batch
        batch = torch.randperm(self.n, generator=g)[start:start + self.batch].tolist()
        if self.window_of is not None:
            window = self.window_of(step)
            batch = [(i, window, self.p) for i in batch]
        return batch

    def __iter__(self):
        step = self.start
        while True:
            yield self.batch_at(step)
            step += 1


def make_loader(dataset, sampler: StepBatchSampler, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)
