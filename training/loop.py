"""The pieces of a training loop that both trainers use: the optimizer step, the run folder's lifecycle, and a
Ctrl-C that stops at a step boundary with the checkpoint saved."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch

from runtime.errors import GracefulStop


def optimizer_step(params, opt, scaler, loss, grad_clip: float, after_clip=None) -> torch.Tensor:
    """Backward, unscale, clip the global grad norm, ``after_clip()`` (e.g. the LHQ table hack), step, scaler update.
    Returns the norm before clipping."""
    params = list(params)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if after_clip is not None:
        after_clip()
    scaler.step(opt)
    scaler.update()
    return grad_norm


@contextlib.contextmanager
def run_folder(run: Path, ckpt_path: Path, main: bool = True):
    """A run folder that a failed start does not leave behind: when this call creates ``run`` and stops (error or
    Ctrl-C) before its first checkpoint exists, the folder is removed again (everything in it was written by this
    call, and nothing can be resumed from it)."""
    new = not run.exists()
    try:
        yield run
    except BaseException:
        if main and new and run.exists() and not ckpt_path.exists():
            shutil.rmtree(run)
        raise


class StepLoop(GracefulStop):
    """Ctrl-C asks the loop to stop at the next step boundary; ``check(step, save)`` then saves and stops with a
    one-line message (a second Ctrl-C stops at once, the last checkpoint intact). enabled=False (several processes:
    every rank would have to agree on the step) leaves Ctrl-C as an immediate interrupt."""

    def __init__(self, ckpt_path, enabled: bool = True):
        super().__init__()
        self.ckpt_path, self.enabled = ckpt_path, enabled

    def __enter__(self):
        return super().__enter__() if self.enabled else self

    def __exit__(self, *exc):
        return super().__exit__(*exc) if self.enabled else False

    def check(self, step: int, save, bar=None) -> None:
        if self.requested:
            if bar is not None:
                bar.close()
            save()
            raise KeyboardInterrupt(f"stopped at step {step}; saved {self.ckpt_path}: re-run the same command to "
                                    "resume")
