"""The checkpoint format (v2), the same for every model family:

    {"format": "checkpoint-v2",
     "family": "patchdm" | ...,          which model family builds the networks (model/__init__.py)
     "config": {...},                    the run's config (configs.to_dict; it names the family too)
     "networks": {NAME: {"raw": state dict or None, "ema": state dict or None, "step": int or None,
                         "samples": int or None, ["posthoc": {"widths": {width: state dict}, "buffers": [...]}]}, ...},
     "training": {"network": NAME, "opt": ..., "scaler": ...} or None,   what resuming needs of the trained one
     "extra": {...}}                     the family's own values (e.g. Patch-DM's code statistics)

A file may hold several networks (Patch-DM's denoiser and its code DDPM); each keeps its raw and EMA weights and how
far it was trained. Files of earlier formats are turned into this dict when read, by readers of their own that the
families register (``read``).
"""

from __future__ import annotations

from pathlib import Path

from runtime.errors import CheckpointError, warn
from runtime.files import atomic_save
from runtime.safe_load import read_checkpoint
from .export import read_folder
from .recipe import YOUNG_EMA, EMASchedule

FORMAT = "checkpoint-v2"


def network_entry(raw: dict | None, ema: dict | None, step: int | None = None, samples: int | None = None,
                  posthoc: dict | None = None) -> dict:
    """One network of a checkpoint: its raw and EMA state dicts (either may be None when the file lacks it), the
    optimizer steps and training samples behind them, and (only when the run tracks them) the power-function
    averages of post-hoc EMA, {"widths": {relative width: state dict}, "buffers": [names]} (training/posthoc.py)."""
    entry = {"raw": raw, "ema": ema, "step": step, "samples": samples}
    if posthoc:
        entry["posthoc"] = posthoc
    return entry


def make(family: str, config: dict, networks: dict, training: dict | None = None, extra: dict | None = None) -> dict:
    return {"format": FORMAT, "family": family, "config": config, "networks": networks, "training": training,
            "extra": dict(extra or {})}


def save(ck: dict, path) -> None:
    """Write a checkpoint atomically (the previous file stays intact until the new one is complete)."""
    atomic_save(ck, path)


def read(path, legacy_readers=()) -> dict:
    """Any checkpoint file as a v2 dict: a v2 file as it is; a folder written by export.py (training/export.py);
    otherwise the first of ``legacy_readers`` (functions (obj, path) -> v2 dict or None) that recognises what was
    read. CheckpointError when none does."""
    if Path(path).is_dir():
        return make(**read_folder(path))
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    for reader in legacy_readers:
        ck = reader(obj, path)
        if ck is not None:
            return ck
    if isinstance(obj, dict) and "format" in obj:
        raise CheckpointError(f"{path} is a checkpoint of format {obj['format']!r}, which this version cannot read")
    raise CheckpointError(f"{path} is not a checkpoint this version can read")


def weights(ck: dict, name: str, raw: bool, path) -> dict:
    """The raw or EMA state dict of network ``name``; CheckpointError naming what the file lacks."""
    entry = ck["networks"].get(name)
    if entry is None:
        raise CheckpointError(f"{path} holds no {name} network (it has {', '.join(ck['networks']) or 'none'})")
    sd = entry["raw" if raw else "ema"]
    if sd is None:
        raise CheckpointError(f"{path} holds no {'raw' if raw else 'EMA'} weights of its {name} network")
    return sd


def warn_young_ema(path, step, section, what: str = "", limit: float = YOUNG_EMA) -> None:
    """Warn (runtime.errors.warn) when an EMA still holds more than ``limit`` of the initial weights (the product of its
    decays, training/recipe.py, of the training config ``section``): with zero-initialised output layers such weights
    sample noise (Patch-DM's official constant 0.9999 needs ~30k steps)."""
    if step is None:
        return
    schedule = EMASchedule.of(section)
    left = schedule.initial_share(step)
    if left > limit:
        kind = f"decay {schedule.decay}" if schedule.kind == "constant" else f"{schedule.kind} schedule"
        warn(f"{path}{what} is at step {step}; its EMA ({kind}) still holds {left:.0%} of the initial weights, so "
             "samples from it can be noise. Use the raw weights (test.py / paint.py --raw, train_latent.py --weights "
             "raw; raw=True in Python) or train longer.")
