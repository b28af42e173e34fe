"""The evidence of docs/EVALUATION.md ("Faster training"): conditional samples of the snapshots of Patch-DM runs
trained with each recipe (train.py --snapshot_every N --snapshot_raw), raw and EMA weights, measured against the
training images: PSNR and seam ratio against training steps, as a table, a curve and a picture.

    ./train.py --config small --objective v -b 8 -d ev/photos.lmdb --semantic_path ev/codes.pt --max_steps 4000 \
        --snapshot_every 500 --snapshot_raw -n base                         # and one run per recipe (--set ...)
    python scripts/training_evidence.py -d ev/photos.lmdb -o ev/training -r today=runs/base \
        -r min_snr=runs/minsnr --steps 500,1000,2000,4000 --test_args=--device=cpu

Every sample goes through test.py (-f SNAPSHOT --codes 0..N-1 or --images, with --raw for the raw weights; DDIM-50, the small
preset's sampler, unless --sampler), so the figures are what a user gets. Finished sample folders are reused (delete
one to redo it). Writes OUT/results.json, OUT/summary.md, OUT/curves.png (PSNR and seam ratio against steps; needs
matplotlib) and, with --picture STEP, OUT/samples_STEP.png (a row per image: the training image, then each run's
EMA and raw sample at that step).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._steps import run  # noqa: E402
from scripts.objective_evidence import as_tensor, psnr, read_pngs, training_images  # noqa: E402
from metrics.seams import seam_stats  # noqa: E402
from runtime.files import save_grid  # noqa: E402

WEIGHTS = ("ema", "raw")


def snapshot(run_folder: Path, step: int) -> Path:
    return run_folder / "checkpoints" / f"step-{step:07d}.pt"


def curves(results: dict, path: Path) -> None:
    """PSNR and image-grid seam ratio against steps, one line per run and weights (EMA solid, raw dashed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so no curves.png (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(dict.fromkeys(r["run"] for r in results["rows"]))
    for i, name in enumerate(names):
        for weights, style in zip(WEIGHTS, ("-", "--")):
            rows = sorted((r for r in results["rows"] if r["run"] == name and r["weights"] == weights),
                          key=lambda r: r["step"])
            if not rows:
                continue
            steps = [r["step"] for r in rows]
            kw = dict(color=f"C{i}", linestyle=style, marker="o", markersize=3, label=f"{name} ({weights})")
            axes[0].plot(steps, [r["psnr"] for r in rows], **kw)
            axes[1].plot(steps, [r["seam"] for r in rows], **kw)
    axes[1].axhline(results["real_seam"], color="gray", linewidth=0.8, label="training images")
    axes[0].set(xlabel="training steps", ylabel="PSNR to the training image (dB)", title="conditional samples")
    axes[1].set(xlabel="training steps", ylabel="seam ratio, image grid", title="patch grid (1 = none)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", "-d", required=True, help="the training LMDB (img2lmdb.py --config PRESET --format raw)")
    ap.add_argument("--out", "-o", required=True)
    ap.add_argument("--run", "-r", action="append", required=True, metavar="NAME=RUN_FOLDER")
    ap.add_argument("--steps", default="500,1000,1500,2000,3000,4000", help="snapshot steps to measure (those a "
                                                                             "run has)")
    ap.add_argument("--config", default="small")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--sampler_steps", default="50")
    ap.add_argument("--images", default="", help="the training images to sample, I,J,... (default: all)")
    ap.add_argument("--picture", type=int, default=0, help="the step of the sample picture (0: none)")
    ap.add_argument("--picture_runs", default="", help="the runs in the picture, NAME,NAME (default: all)")
    ap.add_argument("--test_args", default="", help="extra test.py arguments (quoted)")
    ap.add_argument("--weights", default="ema,raw", help="the weights to sample, ema,raw (raw needs the runs' "
                                                          "--snapshot_raw)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    cfg, real = training_images(args.data, args.config)
    index = [int(i) for i in args.images.split(",")] if args.images else list(range(len(real)))
    real = [real[i] for i in index]
    p, n = cfg.model.patch_size, len(real)
    runs = {name: Path(folder).resolve() for name, folder in (r.split("=", 1) for r in args.run)}
    real_seams = seam_stats(real, p, (0, p // 2))
    results = {"real_seam": real_seams[0]["mean"], "real_seam_half": real_seams[p // 2]["mean"], "rows": []}
    weights_used = [w for w in args.weights.split(",") if w]
    for name, folder in runs.items():
        for step in map(int, args.steps.split(",")):
            ckpt = snapshot(folder, step)
            if not ckpt.exists():
                continue
            for weights in weights_used:
                samples = out / f"{name}_{step:05d}_{weights}"
                if not (samples / f"{n - 1}.png").exists():
                    run(["test.py", "-f", ckpt, "-g", samples, "--codes", ",".join(map(str, index)), "-b", n,
                         "--sampler", args.sampler, "--steps", args.sampler_steps, "--overwrite",
                         *(["--raw"] if weights == "raw" else []), *shlex.split(args.test_args)])
                imgs = read_pngs(samples, n)
                per = [psnr(a, b) for a, b in zip(imgs, real)]
                seam = seam_stats(imgs, p, (0, p // 2))
                results["rows"].append(dict(run=name, step=step, weights=weights, psnr=round(float(np.mean(per)), 2),
                                            psnr_each=[round(v, 2) for v in per], seam=round(seam[0]["mean"], 2),
                                            seam_half=round(seam[p // 2]["mean"], 2)))
                (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"{n} training images, patch {p}, {args.sampler}-{args.sampler_steps} from each image's code; PSNR to "
             f"the image (dB) and seam ratio on the image grid / the half-shifted grid (training images: "
             f"{results['real_seam']:.2f} / {results['real_seam_half']:.2f}).", "",
             "| run | step | weights | PSNR | seams | seams, half-shifted |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['run']} | {r['step']} | {r['weights']} | {r['psnr']:.2f} | {r['seam']:.2f} | "
                     f"{r['seam_half']:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    curves(results, out / "curves.png")
    if args.picture:
        rows, shown = [], args.picture_runs.split(",") if args.picture_runs else list(runs)
        folders = [out / f"{name}_{args.picture:05d}_{w}" for name in shown for w in weights_used]
        imgs = [read_pngs(f, n) for f in folders]
        for i in range(n):
            rows += [real[i]] + [im[i] for im in imgs]
        save_grid(as_tensor(rows), out / f"samples_{args.picture}.png", ncol=1 + len(folders))
        print(f"samples_{args.picture}.png columns: training image, " +
              ", ".join(f"{name} {w}" for name in shown for w in weights_used))
    return 0


if __name__ == "__main__":
    sys.exit(main())
