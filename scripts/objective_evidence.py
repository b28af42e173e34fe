"""The evidence of docs/EVALUATION.md ("Objectives on real photos"): train one Patch-DM model per objective (and
collage mode), then measure (a) conditional samples from the codes of the training images, PSNR to each training
image and seam ratio, and (b) unconditional samples through a latent DDPM trained on the learned codes.

    python img2lmdb.py -i photos/ -o ev/photos.lmdb --config small --format raw
    python initialize.py -d ev/photos.lmdb -o ev/codes.pt --clip_pretrained none
    python scripts/objective_evidence.py -d ev/photos.lmdb --codes ev/codes.pt -o ev --objectives v,flow,eps \
        --steps 2000 -b 8 --latent_steps 15000 --latent_args "--objective v --znormalize" \
        --train_args "--device cpu" --test_args "--device cpu"
    python scripts/objective_evidence.py ... --objectives v --collages feature,none,pixel_fixed   # the ablation

Every step goes through the command-line tools (train.py, train_latent.py, test.py --codes --raw, seams.py), so the
figures are what a user gets. A finished run is not trained again (train.py resumes a run at its --max_steps and
stops at once), so the script can be re-run to add models. Raw weights throughout: at CPU budgets the EMA still
holds much of the initial network. Writes OUT/summary.md, OUT/summary.json, OUT/cond_grid.png (each row a training
image, then the conditional sample of each model) and OUT/uncond_MODEL.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._steps import run  # noqa: E402

from configs import get_preset  # noqa: E402
from dataset import build_dataset  # noqa: E402
from runtime.files import save_grid, to_uint8  # noqa: E402


def training_seconds(stats: Path) -> float:
    """Wall time of the optimizer steps logged in stats.jsonl (sec_per_step x steps of each row)."""
    total, last = 0.0, 0
    for line in stats.read_text().splitlines():
        row = json.loads(line)
        if "sec_per_step" in row:
            total += row["sec_per_step"] * (row["step"] - last)
            last = row["step"]
    return total


def training_images(path: str, config: str) -> tuple:
    """(the preset's config, the images of the LMDB as uint8 (H, W, 3) arrays at the preset's geometry)."""
    cfg = get_preset(config)
    data = build_dataset(path, cfg.data)
    return cfg, [to_uint8(data[k][0]) for k in range(len(data))]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def read_pngs(folder: Path, n: int) -> list:
    return [np.asarray(Image.open(folder / f"{k}.png").convert("RGB")) for k in range(n)]


def as_tensor(images: list) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", "-d", required=True, help="LMDB from img2lmdb.py --config PRESET --format raw")
    ap.add_argument("--codes", required=True, help="code table from initialize.py")
    ap.add_argument("--out", "-o", required=True, help="output folder (runs, samples, summary)")
    ap.add_argument("--config", default="small")
    ap.add_argument("--objectives", default="v,flow,eps")
    ap.add_argument("--collages", default="feature")
    ap.add_argument("--steps", type=int, default=2000, help="train.py optimizer steps per model")
    ap.add_argument("--batch_size", "-b", type=int, default=8)
    ap.add_argument("--sample_steps", type=int, default=50, help="DDIM / Euler steps of the samples")
    ap.add_argument("--latent_steps", type=int, default=3000, help="train_latent.py optimizer steps")
    ap.add_argument("--uncond", type=int, default=16, help="unconditional samples per model (0: skip)")
    ap.add_argument("--train_args", default="", help="extra train.py arguments (quoted)")
    ap.add_argument("--test_args", default="", help="extra test.py / train_latent.py arguments (quoted)")
    ap.add_argument("--latent_args", default="", help="extra train_latent.py arguments (quoted), e.g. "
                    "\"--objective v --znormalize\"")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    cfg, real = training_images(args.data, args.config)
    p, n = cfg.model.patch_size, len(real)
    extra_test = shlex.split(args.test_args)
    models = [(o, c) for c in args.collages.split(",") for o in args.objectives.split(",")]
    results = {}
    for objective, collage in models:
        name = objective if collage == "feature" else f"{objective}_{collage}"
        runs = out / "runs"
        ckpt = runs / name / "checkpoints" / "last.pt"
        run(["train.py", "--config", args.config, "-d", args.data, "--semantic_path", args.codes, "-n", name,
             "--objective", objective, "--collage", collage, "-b", args.batch_size, "--max_steps", args.steps,
             "--runs_dir", runs, "--log_every", 100, *shlex.split(args.train_args)])
        r = results[name] = dict(objective=objective, collage=collage, steps=args.steps, batch=args.batch_size,
                                 train_seconds=round(training_seconds(runs / name / "stats.jsonl"), 1))
        cond = out / f"cond_{name}"
        r["cond_seconds"] = run(["test.py", "-f", ckpt, "-g", cond, "--codes", ",".join(map(str, range(n))),
                                 "--raw", "--steps", args.sample_steps, "-b", n, "--overwrite", *extra_test])
        imgs = read_pngs(cond, n)
        r["psnr"] = [round(psnr(a, b), 2) for a, b in zip(imgs, real)]
        r["psnr_mean"] = round(float(np.mean(r["psnr"])), 2)
        run(["seams.py", "--images", cond, "--patch", p, "--real", args.data, "--config", args.config,
             "--out", out / f"seams_cond_{name}.json", "--overwrite"])
        r["seams_cond"] = json.loads((out / f"seams_cond_{name}.json").read_text())
        if args.uncond:
            lat = f"{name}_latent"
            run(["train_latent.py", "-m", ckpt, "-n", lat, "--weights", "raw", "--max_steps", args.latent_steps,
                 "--runs_dir", runs, *shlex.split(args.latent_args), *extra_test])
            unc = out / f"uncond_{name}"
            run(["test.py", "-f", runs / lat / "checkpoints" / "last.pt", "-g", unc, "--img_num", args.uncond,
                 "--raw", "--steps", args.sample_steps, "-b", min(8, args.uncond), "--overwrite", *extra_test])
            uimgs = read_pngs(unc, args.uncond)
            save_grid(as_tensor(uimgs[:8]), out / f"uncond_{name}.png", ncol=2)
            # how close each unconditional sample is to its nearest training image (memorisation vs novelty)
            r["uncond_nearest_psnr"] = round(float(np.mean([max(psnr(u, t) for t in real) for u in uimgs])), 2)
            run(["seams.py", "--images", unc, "--patch", p, "--out", out / f"seams_uncond_{name}.json",
                 "--overwrite"])
            r["seams_uncond"] = json.loads((out / f"seams_uncond_{name}.json").read_text())
        (out / "summary.json").write_text(json.dumps(results, indent=2))
    names = list(results)
    cond_imgs = {m: read_pngs(out / f"cond_{m}", n) for m in names}
    rows = []
    for k in range(n):
        rows.append(real[k])
        rows += [cond_imgs[m][k] for m in names]
    save_grid(as_tensor(rows), out / "cond_grid.png", ncol=1 + len(names))
    real_seams = results[names[0]]["seams_cond"]["real"]["0"]
    lines = [f"Preset {args.config} (patch {p}), {n} training images, batch {args.batch_size}, {args.steps} steps, "
             f"{args.sample_steps}-step samples, raw weights.", "",
             "| model | training (min) | cond. PSNR (dB) | cond. seam ratio | uncond. seam ratio | uncond. nearest "
             "PSNR (dB) |", "|---|---|---|---|---|---|",
             f"| real images | | | {real_seams['mean']:.3f} ± {real_seams['std']:.3f} | | |"]
    for m in names:
        r = results[m]
        c = r["seams_cond"]["generated"]["0"]
        u = r.get("seams_uncond", {}).get("generated", {}).get("0")
        lines.append(f"| {m} | {r['train_seconds'] / 60:.1f} | {r['psnr_mean']:.2f} | {c['mean']:.3f} ± "
                     f"{c['std']:.3f} | " + (f"{u['mean']:.3f} ± {u['std']:.3f}" if u else "") + " | "
                     + (f"{r['uncond_nearest_psnr']:.2f}" if "uncond_nearest_psnr" in r else "") + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
