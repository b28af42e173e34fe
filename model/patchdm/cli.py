"""What Patch-DM's command lines (test.py, paint.py) share: --bands, --seamless and the sampler / steps checks, with
one-line errors before any work starts."""

from __future__ import annotations

from diffusion import canonical, space_timesteps, spacing, supported
from runtime.errors import CLIError
from .canvas import auto_band
from .seamless import BELOW, DEFAULT, METHODS, configured


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


def add_seamless_args(ap) -> None:
    """--seamless [METHOD] and --seamless_views K (model/patchdm/seamless.py)."""
    ap.add_argument("--seamless", nargs="?", const=DEFAULT, default=None, metavar="METHOD",
                    help=f"remove the patch grid at sampling time (beyond the paper): {', '.join(METHODS)} or off "
                         f"(plain --seamless: {DEFAULT}; default: the checkpoint's sampling.seamless, off unless set); "
                         "docs/EVALUATION.md, \"Seamless sampling\"")
    ap.add_argument("--seamless_views", type=int, default=None, metavar="K",
                    help="--seamless average / blend: grids per step, K x the network evaluations of those steps "
                         "(default 2)")
    ap.add_argument("--seamless_below", type=float, default=None, metavar="R",
                    help=f"--seamless: move the grids at the steps whose noise-to-signal ratio sigma/alpha is at most "
                         f"R (default {BELOW}; inf: every step, which loses layout)")


def seamless_option(sampling, collage: str, method: str | None = None, views: int | None = None,
                    below: float | None = None):
    """The Seamless of --seamless / --seamless_views / --seamless_below, or of the checkpoint's sampling config where
    not given; None for off. One line for a bad value or a model whose collage moves its own grid."""
    try:
        spec = configured(sampling, method, views, below)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if spec is not None and collage != "feature":
        raise CLIError(f"--seamless moves the feature collage's patch grid; this model was trained with "
                       f"--collage {collage}, whose sampler shifts its own grid")
    return spec
