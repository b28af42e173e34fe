"""Helpers shared by the test modules (fixtures live in conftest.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def load_script(name):
    """A top-level script as a module (test.py shares its name with pytest's and the stdlib's idea of 'test')."""
    spec = importlib.util.spec_from_file_location(f"patchdm_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def photo(h, w, seed):
    """A smooth colour gradient with noise, (h, w, 3) uint8: photo-like enough for the loaders and codecs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (h + w)], -1) * 255
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def snapshot(folder):
    """Every file under ``folder`` (hidden ones included) with its mtime and bytes."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def train_run(lmdb_path, codes, runs, name, steps, *extra):
    """train.py on the tiny preset, logging every step, on the CPU; returns the exit status."""
    import train
    from runtime.errors import run_cli
    return run_cli(train.main, ["--config", "tiny", "-d", str(lmdb_path), "--semantic_path", str(codes), "-n", name,
                                "--max_steps", str(steps), "--log_every", "1", "--device", "cpu",
                                "--runs_dir", str(runs), *extra])


def losses(run):
    return [json.loads(line)["loss"] for line in (Path(run) / "stats.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def read_tsv(path):
    shapes = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.rstrip("\n").split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def synthetic_state(tsv, seed=0):
    """Random tensors for every key of an official listing; the latent MLP's tied Linear stays tied."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in read_tsv(DATA / tsv).items():
        twin = key.replace(".linear_emb.", ".cond_layers.1.")
        sd[key] = sd[twin] if twin in sd else 0.05 * torch.randn(shape, generator=g)
    for key, shape in list(sd.items()):
        twin = key.replace(".cond_layers.1.", ".linear_emb.")
        if twin in sd:
            sd[key] = sd[twin]
    return sd


def lightning_file(path, sd, raw_changes=(), extra=None):
    """An official-style Lightning checkpoint: ema_model.* = sd, model.* = sd except ``raw_changes``."""
    state = {}
    for k, v in sd.items():
        state["ema_model." + k] = v
        state["model." + k] = v + 1 if k in raw_changes else v
    state["x_T"] = torch.zeros(1, 3, 64, 64)
    ckpt = {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.4.5", "state_dict": state,
            "optimizer_states": [], "lr_schedulers": []}
    ckpt.update(extra or {})
    torch.save(ckpt, path)
    return path
