"""What Patch-DM's command lines (test.py, paint.py) share: --bands and the sampler / steps checks, with one-line
errors before any work starts."""

from __future__ import annotations

from diffusion import canonical, space_timesteps, spacing, supported
from runtime.errors import CLIError
from .canvas import auto_band


def parse_bands(text: str, batch: int, hw: tuple, p: int) -> tuple:
    """--bands: 'auto' (bounded memory), 'off' (all patches at once, the official way), 'R' or 'RxC' tiles per band.
    Returns (band_rows, band_cols) for the samplers."""
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


def check_sampler(sampler: str | None, objective: str, steps: int, num_timesteps: int) -> str:
    """The sampler's own name (None: the objective's default; ``ddim`` on a flow model is Euler) after checking that
    it samples models of ``objective`` in ``steps`` steps (a VP process respaced the official way needs an integer
    stride; a flow model takes any number)."""
    why = supported(sampler or canonical(None, objective), objective)
    if why:
        raise CLIError(why)
    sampler = canonical(sampler, objective)
    if objective == "flow":
        return sampler
    if spacing(sampler) == "official":
        try:
            space_timesteps(num_timesteps, steps)
        except ValueError as e:
            raise CLIError(f"{e} (try 10, 20, 25, 50, 100, ...)") from None
    elif not 1 <= steps <= num_timesteps:
        raise CLIError(f"{sampler} needs 1..{num_timesteps} steps, got {steps}")
    return sampler
