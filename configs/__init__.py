"""Configuration: one nested dataclass per model family, its presets, and the machinery they share.

A config names its family (``cfg.family``); ``get_preset(name)`` returns a fresh config of the preset's family,
``override(cfg, ["training.batch_size=64", ...])`` applies dotted overrides, ``cfg.validate()`` checks every range
(each family checks its own fields), and ``to_dict`` / ``from_dict`` round-trip a config through JSON (it is saved
beside every run and in every checkpoint; a dict without ``family`` is a Patch-DM config, as every file written before
families existed).
"""

from __future__ import annotations

from . import patchdm, pyramid
from .common import PRECISIONS, TRANSFORMS, DataConfig
from .fields import assign, from_fields, override, to_dict, value
from .patchdm import (COLLAGES, CODE_SOURCES, OBJECTIVES, PATCH_ARCH, SEAMLESS, DiffusionConfig, LatentConfig,
                      ModelConfig, PatchDMConfig, SamplingConfig, TrainingConfig, set_patch_size)

__all__ = ["FAMILIES", "get_preset", "preset_names", "preset_help", "from_dict", "to_dict", "override", "assign",
           "value", "validate", "PatchDMConfig", "ModelConfig", "DiffusionConfig", "DataConfig", "TrainingConfig",
           "LatentConfig", "SamplingConfig", "PATCH_ARCH", "set_patch_size", "COLLAGES", "CODE_SOURCES", "SEAMLESS",
           "OBJECTIVES", "PRECISIONS", "TRANSFORMS"]

# family name -> (config class, its presets module: preset_names(), get_preset(name))
FAMILIES = {"patchdm": (PatchDMConfig, patchdm), "pyramid": (pyramid.PyramidConfig, pyramid)}


def preset_names() -> list:
    return [name for _, module in FAMILIES.values() for name in module.preset_names()]


def get_preset(name: str):
    """A fresh config for a preset of any family (``preset_names()``)."""
    for _, module in FAMILIES.values():
        if name in module.preset_names():
            return module.get_preset(name)
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")


def preset_help(default: str | None = None) -> str:
    """'preset: tiny, small, nature, ...' for --config help texts."""
    text = f"preset: {', '.join(preset_names())}"
    return text + (f" (default {default})" if default else "")


def from_dict(d: dict):
    """The config of a dict written by ``to_dict``, of the family it names (Patch-DM when it names none); unknown
    fields and families are errors; fields a family has renamed (its ``RENAMED``) are read under their new names."""
    family = d.get("family", "patchdm")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; this version knows {', '.join(FAMILIES)}")
    cls, module = FAMILIES[family]
    renamed = getattr(module, "RENAMED", {})
    if renamed:
        d = {key: ({renamed[key].get(k, k): v for k, v in value.items()} if key in renamed else value)
             for key, value in d.items()}
    return from_fields(d, cls)


def validate(cfg):
    """``cfg.validate()``: every field's range, by the config's own family."""
    return cfg.validate()
