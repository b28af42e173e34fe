"""One-line errors for the command-line scripts."""

from __future__ import annotations

import sys

from model.safe_load import CheckpointError


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit status 2."""


def run_cli(main, argv=None) -> int:
    """Call main(argv); user errors become 'error: ...' on stderr and exit status 2, Ctrl-C exit status 130."""
    try:
        return main(argv) or 0
    except (CLIError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def parse_hw(text: str) -> tuple:
    """'512x1024' -> (512, 1024)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CLIError(f"image size {text!r} is not of the form HxW, e.g. 512x1024") from None
    if h <= 0 or w <= 0:
        raise CLIError(f"image size {text!r} must be positive")
    return h, w


def parse_bands(text: str, batch: int, hw: tuple, p: int) -> tuple:
    """--bands: 'auto' (bounded memory), 'off' (all patches at once, the official way), 'R' or 'RxC' tiles per band.
    Returns (band_rows, band_cols) for the samplers."""
    from diffusion import auto_band
    text = text.lower()
    if text == "auto":
        return auto_band(batch, hw[0] // p, hw[1] // p)
    if text == "off":
        return None, None
    try:
        parts = [int(v) for v in text.split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise CLIError(f"--bands {text!r}: use auto, off, R or RxC (tile rows x tile columns per band), e.g. 1x32")
    return parts[0], parts[1] if len(parts) == 2 else None


def check_divisible(hw: tuple, p: int, what: str = "image size") -> None:
    h, w = hw
    if h % p or w % p:
        raise CLIError(f"{what} {h}x{w} is not divisible by the patch size {p}: both height {h} and width {w} must "
                       f"be multiples of {p}")
