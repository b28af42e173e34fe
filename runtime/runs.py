"""Reading this project's run files: code tables and checkpoints, with one-line errors."""

from __future__ import annotations

import torch

from configs import from_dict, to_dict
from model.safe_load import read_checkpoint
from .errors import CLIError


def load_code_table(path) -> torch.Tensor:
    """The [N, D] table of an initialize.py file ({'model_state_dict': {'semantic_enc.weight': T}}, the official
    layout), of {'semantic_enc.weight': T}, or a bare tensor."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if isinstance(obj, dict):
        obj = obj.get("semantic_enc.weight", obj.get("encoder.semantic_enc.weight"))
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        raise CLIError(f"{path} holds no [N, D] code table (expected {{'model_state_dict': "
                       "{'semantic_enc.weight': tensor}}, as initialize.py writes)")
    return obj.float()


def _diff(a: dict, b: dict, prefix: str = "") -> list:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)) and list(va) == list(vb)):
            out.append(f"{prefix}{k}={va!r} in the checkpoint, {vb!r} now")
    return out


def compatible_or_raise(ckpt: dict, cfg, fmt: str, path) -> None:
    """Refuse to resume a checkpoint of another format, architecture or image size (naming the fields)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CLIError(f"{path} is not a {fmt} checkpoint of this project")
    saved = ckpt["config"]
    now = to_dict(cfg)
    problems = _diff({"model": saved["model"], "data.image_size": saved["data"]["image_size"]},
                     {"model": now["model"], "data.image_size": now["data"]["image_size"]})
    if problems:
        raise CLIError(f"{path} was trained with other settings ({'; '.join(problems[:6])}); use the same settings "
                       "or another --name")


def config_of(ckpt: dict):
    return from_dict(ckpt["config"])
