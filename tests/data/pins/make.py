"""Make (or check) the pinned outputs of tests/test_pins.py: tiny checkpoints written by the code of commit d95b1ba
(eps, v and flow objectives, a pixel-space ablation, a latent model) and the exact PNGs test.py and paint.py
wrote from them with every sampler.

    python tests/data/pins/make.py --write        # (re)make the checkpoints and expected outputs
    python tests/data/pins/make.py                # re-run the commands on the stored checkpoints; compare bytes

The second form is the before/after check of a refactoring: it prints each case's PNG SHA-256 and whether it equals
the stored one (exactly, on the machine that made them; other CPUs may round a pixel differently, which is what the
test's tolerance allows).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers import load_script, photo  # noqa: E402

# (name, objective, extra train.py flags)
TRAINS = [("eps", "eps", []), ("v", "v", []), ("flow", "flow", []),
          ("pixel_flow", "flow", ["--collage", "pixel_random"])]
TRAIN_SET = ["model.code_dim=8", "training.lr=0.003", "training.ema_decay=0.9"]

# (case, checkpoint, test.py flags)
SAMPLES = [
    ("eps_ddim_raw", "train_eps.pt", ["--raw", "--sampler", "ddim", "--steps", "5"]),
    ("eps_ddim_ema", "train_eps.pt", ["--sampler", "ddim", "--steps", "5"]),
    ("eps_ddim_cfg_wrap", "train_eps.pt", ["--raw", "--steps", "5", "--cfg_scale", "0.5", "--wrap", "x"]),
    ("eps_dpmpp2m_bands", "train_eps.pt", ["--raw", "--sampler", "dpmpp2m", "--steps", "5", "--image_size",
                                           "24x32", "--bands", "1"]),
    ("eps_dpmpp3m", "train_eps.pt", ["--raw", "--sampler", "dpmpp3m", "--steps", "6"]),
    ("v_ddim", "train_v.pt", ["--raw", "--sampler", "ddim", "--steps", "5"]),
    ("v_ddim_bands", "train_v.pt", ["--raw", "--steps", "5", "--image_size", "24x32", "--bands", "1x2"]),
    ("v_dpmpp2m", "train_v.pt", ["--raw", "--sampler", "dpmpp2m", "--steps", "5"]),
    ("v_dpmpp3m", "train_v.pt", ["--raw", "--sampler", "dpmpp3m", "--steps", "6", "--cfg_scale", "0.5"]),
    ("flow_ddim", "train_flow.pt", ["--raw", "--sampler", "ddim", "--steps", "5"]),
    ("flow_euler", "train_flow.pt", ["--raw", "--sampler", "euler", "--steps", "5"]),
    ("flow_euler_bands", "train_flow.pt", ["--raw", "--sampler", "euler", "--steps", "5", "--image_size", "24x32",
                                           "--bands", "1"]),
    ("flow_heun", "train_flow.pt", ["--raw", "--sampler", "heun", "--steps", "3"]),
    ("flow_dpmpp2m", "train_flow.pt", ["--raw", "--sampler", "dpmpp2m", "--steps", "5"]),
    ("flow_dpmpp3m", "train_flow.pt", ["--sampler", "dpmpp3m", "--steps", "6"]),
    ("pixel_flow_euler", "train_pixel_flow.pt", ["--raw", "--sampler", "euler", "--steps", "4"]),
    ("pixel_flow_heun", "train_pixel_flow.pt", ["--raw", "--sampler", "heun", "--steps", "3"]),
    ("pixel_flow_dpmpp2m", "train_pixel_flow.pt", ["--raw", "--sampler", "dpmpp2m", "--steps", "4", "--bands", "1"]),
    ("full_ddim", "full_eps.pt", ["--img_num", "2"]),
    ("full_dpmpp2m", "full_eps.pt", ["--img_num", "2", "--sampler", "dpmpp2m", "--latent_sampler", "dpmpp2m"]),
    ("full_raw", "full_eps.pt", ["--img_num", "2", "--raw", "--latent_sampler", "dpmpp3m", "--latent_steps", "6"]),
    ("v1_full", "../v1/full_v1.pt", ["--img_num", "1", "--steps", "2", "--latent_steps", "2"]),
]
CODES = ["--codes", "0,1"]

# (case, checkpoint, paint.py flags)
PAINTS = [
    ("paint_eps_fit", "train_eps.pt", ["--raw", "--steps", "5", "--resample", "2", "--fit_steps", "5"]),
    ("paint_flow_index", "train_flow.pt", ["--raw", "--steps", "4", "--resample", "2", "--code", "index:1"]),
    ("paint_pixel_flow", "train_pixel_flow.pt", ["--raw", "--steps", "4", "--resample", "1", "--code", "index:0"]),
]


def _run(script: str, argv: list) -> None:
    from runtime.errors import run_cli
    code = run_cli(load_script(script).main, [str(a) for a in argv])
    if code:
        raise SystemExit(f"{script} {' '.join(map(str, argv))} exited with {code}")


def make_data(work: Path) -> tuple:
    photos = work / "photos"
    photos.mkdir()
    for i in range(6):
        Image.fromarray(photo(16, 24, 100 + i)).save(photos / f"{i}.png")
    lmdb = work / "photos.lmdb"
    _run("img2lmdb", ["-i", photos, "-o", lmdb, "-n", "1"])
    table = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    codes = work / "codes8.pt"
    torch.save({"model_state_dict": {"semantic_enc.weight": table}}, codes)
    return lmdb, codes


def train_all(work: Path, lmdb: Path, codes: Path, out: Path = HERE) -> dict:
    """Train every pinned run; their checkpoints go to ``out``; returns the logged losses of each run."""
    out.mkdir(parents=True, exist_ok=True)
    losses = {}
    runs = work / "runs"
    for name, objective, extra in TRAINS:
        _run("train", ["--config", "tiny", "-d", lmdb, "--semantic_path", codes, "-n", name, "--objective", objective,
                       "--max_steps", "20", "--log_every", "1", "--device", "cpu", "--runs_dir", runs, *extra,
                       "--set", *TRAIN_SET])
        ck = torch.load(runs / name / "checkpoints" / "last.pt", weights_only=True)
        if out == HERE and name != "eps":  # only one pinned file needs the optimizer state (resuming a d95b1ba run)
            del ck["opt"], ck["scaler"]
        torch.save(ck, out / f"train_{name}.pt")
        losses[name] = [json.loads(line)["loss"] for line in (runs / name / "stats.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
    _run("train_latent", ["-m", out / "train_eps.pt", "-n", "lat", "--max_steps", "20", "--log_every", "1",
                          "--device", "cpu", "--runs_dir", runs, "--znormalize",
                          "--set", "latent.ema_decay=0.9", "latent.lr=0.001"])
    shutil.copy(runs / "lat" / "checkpoints" / "last.pt", out / "full_eps.pt")
    losses["latent"] = [json.loads(line)["loss"] for line in (runs / "lat" / "stats.jsonl").read_text().splitlines()]
    return losses


def paint_inputs(work: Path) -> tuple:
    src, mask = work / "src.png", work / "mask.png"
    Image.fromarray(photo(16, 24, 7)).save(src)
    m = np.zeros((16, 24), np.uint8)
    m[4:12, 8:20] = 255
    Image.fromarray(m).save(mask)
    return src, mask


def outputs(work: Path) -> dict:
    """{case: [PNG bytes, ...]} from the stored checkpoints."""
    out = {}
    for case, ck, flags in SAMPLES:
        folder = work / "gen" / case
        codes = [] if ck.startswith(("full", "..")) else CODES
        _run("test", ["-f", HERE / ck, "-g", folder, "--device", "cpu", *codes, *flags])
        out[case] = [p.read_bytes() for p in sorted(folder.glob("*.png"), key=lambda p: int(p.stem))]
    src, mask = paint_inputs(work)
    for case, ck, flags in PAINTS:
        path = work / "paint" / f"{case}.png"
        _run("paint", ["inpaint", "-f", HERE / ck, "-i", src, "-m", mask, "-o", path, "--device", "cpu", *flags])
        out[case] = [path.read_bytes()]
    return out


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="make the checkpoints and expected outputs anew")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = json.loads((HERE / "manifest.json").read_text()) if not args.write else {}
        if args.write:
            manifest["losses"] = train_all(work, *make_data(work))
        got = outputs(work)
    if args.write:
        manifest["sha256"] = {case: [sha(b) for b in pngs] for case, pngs in got.items()}
        arrays = {f"{case}/{k}": np.asarray(Image.open(io.BytesIO(b))) for case, pngs in got.items()
                  for k, b in enumerate(pngs)}
        np.savez_compressed(HERE / "expected.npz", **arrays)
        (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"wrote {len(got)} cases")
        return 0
    bad = 0
    for case, pngs in got.items():
        same = [sha(b) for b in pngs] == manifest["sha256"].get(case)
        bad += not same
        print(f"{'same' if same else 'DIFFERENT':9s} {case}")
    print(f"{len(got) - bad} of {len(got)} cases give the same PNG bytes")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
