"""TensorBoard output of the training loop (train.py / train_latent.py --tensorboard): every stats.jsonl row as
scalars and every preview grid as an image, in RUN/tensorboard (``tensorboard --logdir runs``). The tensorboard
package is imported only when asked for, and its absence is one line before training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import CLIError

# stats.jsonl columns that are not plotted against the step, and the groups of the others
SKIP = {"time", "step", "samples"}
GROUPS = {"sec_per_step": "speed", "grad_norm": "optimizer", "lr": "optimizer", "scale": "optimizer"}


def writer_class():
    """torch's SummaryWriter; CLIError naming the package when it is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CLIError("--tensorboard needs the tensorboard package, which is not installed (pip install "
                       "tensorboard), or leave --tensorboard out (stats.jsonl and plot.py always work)") from None
    return SummaryWriter


class Board:
    """One run's TensorBoard event files; ``row`` and ``preview`` mirror what the loop writes to the run folder."""

    def __init__(self, folder, purge_step: int | None = None):
        self.writer = writer_class()(log_dir=str(folder), purge_step=purge_step)

    def row(self, row: dict) -> None:
        """A stats.jsonl row: the loss and its terms (and the task's other values) under train/, the loss by timestep
        quartile under loss_by_time/q1..q4 (q1: least noise), throughput under speed/, the optimizer's numbers
        (learning rate, gradient norm, loss scale) under optimizer/."""
        step = row["step"]
        for key, value in row.items():
            if key in SKIP or value is None:
                continue
            if key == "loss_q":
                for q, v in enumerate(value):
                    if v is not None:  # a quartile no sample of the interval fell in
                        self.writer.add_scalar(f"loss_by_time/q{q + 1}", v, step)
            elif isinstance(value, (int, float)):
                group = GROUPS.get(key, "speed" if key.endswith("_per_s") else "train")
                self.writer.add_scalar(f"{group}/{key}", value, step)

    def preview(self, path: Path, step: int) -> None:
        """A preview grid PNG the task wrote."""
        if path.is_file():
            self.writer.add_image("preview", np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
