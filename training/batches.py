"""The training images of a run, batch by batch, as every image-trained task reads them."""

from __future__ import annotations

import math

from runtime import dist as D
from runtime.data import SkipUnreadable, StepBatchSampler, make_loader
from runtime.errors import CLIError, children_ignore_sigint, warn


def local_batch(batch_size: int, d: D.Dist) -> int:
    """This process's share of the global batch; CLIError when the processes cannot share it evenly."""
    if batch_size % d.world:
        raise CLIError(f"batch size {batch_size} is not divisible by the {d.world} processes")
    return batch_size // d.world


def every(samples: int, batch_size: int) -> int:
    """A cadence given in training samples, in steps (at least 1)."""
    return max(1, math.ceil(samples / batch_size))


class ImageBatches:
    """This rank's images at each step: the order is a function of (seed, step) (runtime.data.StepBatchSampler, so a
    resumed run continues exactly), ``views(step, k)`` chooses what sample k shows of its image (a region, a crop;
    None: the whole image), and an image that cannot be read is replaced by the next readable one and reported once
    (a warning, and an event for stats.jsonl). The DataLoader starts at the first step asked for."""

    def __init__(self, data, batch: int, seed: int, d: D.Dist, views=None, workers: int = 0, pin: bool = False,
                 per_image: int = 1):
        self.data, self.batch, self.seed, self.d, self.views = data, batch, seed, d, views
        self.per_image = per_image  # samples of each image in a batch (consecutive; views tell them apart)
        self.workers, self.pin, self.loader, self.unreadable = workers, pin, None, set()

    def at(self, step: int) -> tuple:
        """(images, indices, events) of ``step`` (steps are asked for in order)."""
        if self.loader is None:
            sampler = StepBatchSampler(len(self.data), self.batch, self.seed, self.d.rank, self.d.world, step,
                                       self.views, self.per_image)
            with children_ignore_sigint():  # the workers never see Ctrl-C; this process stops them
                self.loader = iter(make_loader(SkipUnreadable(self.data), sampler, self.workers, self.pin))
        x, index, problems = next(self.loader)
        events = []
        for problem in set(problems) - self.unreadable - {""}:  # the loader put the next readable image in its place
            self.unreadable.add(problem)
            warn(f"skipped an unreadable image ({problem}); {len(self.unreadable)} so far")
            events.append(dict(skipped_image=problem, skipped_images=len(self.unreadable)))
        return x, index, events

    def row_extra(self) -> dict:
        return {"skipped_images": len(self.unreadable)} if self.unreadable else {}
