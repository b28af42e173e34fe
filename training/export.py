"""The exported model folder (export.py), the same for every family: what a person hands to someone else, readable
without pickle.

    FOLDER/config.json          the run's config (as in the run folder and the checkpoint)
    FOLDER/model.safetensors    one set of weights of every network that samples, "NETWORK.PARAM", and the family's
                                tensor values, "extra.NAME" (Patch-DM's code statistics)
    FOLDER/model.json           {"format": "export-v1", "family", "weights": "ema" | "raw", "dtype",
                                 "networks": {NAME: {"step", "samples"}}, "extra": {the family's other values}}
    FOLDER/README.md            the model card

``read_folder`` turns such a folder into the checkpoint-v2 dict every loader takes (training/checkpoint.py), with the
one set of weights in both the raw and the EMA place, so a folder loads wherever a checkpoint file does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from runtime.errors import CheckpointError, UserError
from runtime.files import atomic_write_text, replacing

FORMAT = "export-v1"
WEIGHTS_FILE, INFO_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "model.json", "config.json", "README.md"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_folder(folder, family: str, config: dict, networks: dict, extra: dict, weights: str, dtype: str,
                 card: str) -> list:
    """Write the folder (created if needed; each file atomically). ``networks`` {name: (state dict, step, samples)};
    ``extra`` the family's values (tensors go to the weights file, JSON values to model.json, anything else is
    left out and named in the result); floating-point tensors are stored in ``dtype``. Returns what was left out."""
    from safetensors.torch import save_file
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose {', '.join(DTYPES)}")
    tensors, info_extra, left_out = {}, {}, []
    for name, (sd, _, _) in networks.items():
        for key, value in sd.items():
            tensors[f"{name}.{key}"] = _stored(value, dtype)
    for key, value in extra.items():
        if isinstance(value, torch.Tensor):
            tensors[f"extra.{key}"] = value.detach().float().clone().contiguous()
        elif _json_ok(value):
            info_extra[key] = value
        else:
            left_out.append(key)
    info = {"format": FORMAT, "family": family, "weights": weights, "dtype": dtype,
            "networks": {name: {"step": step, "samples": samples} for name, (_, step, samples) in networks.items()},
            "extra": info_extra}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with replacing(folder / WEIGHTS_FILE, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "family": family})
    atomic_write_text(json.dumps(config, indent=2) + "\n", folder / CONFIG_FILE)
    atomic_write_text(json.dumps(info, indent=2) + "\n", folder / INFO_FILE)
    atomic_write_text(card, folder / CARD_FILE)
    return left_out


def _stored(t: torch.Tensor, dtype: str) -> torch.Tensor:
    t = t.detach().cpu()
    return (t.to(DTYPES[dtype]) if t.is_floating_point() else t).clone().contiguous()


def _json_ok(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def folder_info(folder) -> dict:
    """model.json of an exported folder; CheckpointError naming what is missing or unreadable."""
    folder = Path(folder)
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is a folder without {INFO_FILE}: give a checkpoint file or a folder written "
                              "by export.py") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/{INFO_FILE} cannot be read: {e}") from None
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{folder}/{INFO_FILE} is of format {info.get('format')!r}, which this version cannot "
                              "read")
    return info


def read_folder(folder) -> dict:
    """An exported folder as the arguments of ``checkpoint.make`` (family, config, networks, extra): no training
    state, its one set of weights as both raw and EMA, and extra["export"] = {"weights", "dtype"}."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    folder = Path(folder)
    info = folder_info(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} holds no {name}: not a complete exported model folder (export.py "
                                  "writes config.json, model.safetensors, model.json and README.md)")
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read the exported model ({e})") from None
    networks = {}
    for name, entry in info["networks"].items():
        sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        if not sd:
            raise CheckpointError(f"{folder}/{WEIGHTS_FILE} holds no weights of its {name} network")
        networks[name] = {"raw": sd, "ema": sd, "step": entry["step"], "samples": entry["samples"]}
    extra = {**info["extra"], **{k[6:]: v for k, v in tensors.items() if k.startswith("extra.")},
             "export": {"weights": info["weights"], "dtype": info["dtype"]}}
    return {"family": info["family"], "config": config, "networks": networks, "extra": extra}
