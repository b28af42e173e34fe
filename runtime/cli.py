"""Command-line parsing shared by the scripts: a parser whose mistakes are one line, argument types with ranges,
image sizes."""

from __future__ import annotations

import argparse

from .errors import CLIError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error style: a bad argument raises CLIError (one 'error:' line, exit status 2
    through run_cli) instead of printing the usage block. The description is the first paragraph of ``doc`` and the
    epilog the rest (the scripts' docstrings hold their examples)."""

    def __init__(self, doc: str | None = None, **kwargs):
        if doc is not None:
            first, _, rest = doc.strip().partition("\n\n")
            kwargs.setdefault("description", first)
            kwargs.setdefault("epilog", rest or None)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):
        raise CLIError(f"{message} (see {self.prog} --help)")


def bounded(kind, low, what: str, high=None):
    """An argparse type: ``kind`` (int or float) at least ``low`` (and at most ``high``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}" if high is None else
                                             f"must be in {low}..{high}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = bounded(int, 1, "an integer")
nonnegative_int = bounded(int, 0, "an integer")
nonnegative_float = bounded(float, 0.0, "a number")


def parse_hw(text: str) -> tuple:
    """'512x1024' -> (512, 1024)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CLIError(f"image size {text!r} is not of the form HxW, e.g. 512x1024") from None
    if h <= 0 or w <= 0:
        raise CLIError(f"image size {text!r} must be positive")
    return h, w


def check_divisible(hw: tuple, p: int, what: str = "image size") -> None:
    h, w = hw
    if h % p or w % p:
        raise CLIError(f"{what} {h}x{w} is not divisible by the patch size {p}: both height {h} and width {w} must "
                       f"be multiples of {p}")


def add_snapshot_args(ap) -> None:
    """The training scripts' --snapshot_every / --snapshot_raw / --tensorboard (training.loop.LoopSettings)."""
    ap.add_argument("--snapshot_every", type=bounded(int, 1, "--snapshot_every"), default=None, metavar="STEPS",
                    help="also keep the EMA weights every STEPS steps in checkpoints/step-NNNNNNN.pt (never removed; "
                         "for tables against training steps; give it again when resuming)")
    ap.add_argument("--snapshot_raw", action="store_true", help="snapshots hold the raw weights too")
    ap.add_argument("--tensorboard", action="store_true",
                    help="also write the logged losses, speed and preview grids for TensorBoard to RUN/tensorboard "
                         "(needs the tensorboard package; stats.jsonl and plot.py work without it)")
