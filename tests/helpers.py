"""Helpers shared by the test modules (fixtures live in conftest.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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
