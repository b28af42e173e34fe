"""The evidence of docs/EVALUATION.md ("Training windows"): runs with different training windows compared at equal
wall time, from the samples that scripts/training_evidence.py measured (its OUT/results.json).

A run's wall time is its steps times its seconds per step, measured alone for each setting under the same load
(benchmarks or a short train.py run, ``--speed NAME=SECONDS``), so runs that shared the CPU with other work are still
compared fairly. Writes OUT/wall_time.png (PSNR and seam ratios against training seconds), OUT/wall_time.md (the
table), with --at OUT/at_equal_time.png (a row per image: the training image, then each run's sample at the
snapshot named by --at), and with --uncond OUT/uncond.md: for folders of unconditional samples (test.py through a
latent model), the PSNR of each to its nearest training image, how many distinct training images are nearest, and the
PSNR of the closest pair of samples (two samples alike: high).

    python scripts/window_evidence.py -r ev/training/results.json -d ev/bg.lmdb -o ev/windows \\
        --speed today=0.168 --speed whole=0.45 --at today=2000 --at whole=750
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from metrics.seams import seam_stats  # noqa: E402
from scripts.objective_evidence import as_tensor, psnr, read_pngs, training_images  # noqa: E402
from runtime.files import save_grid  # noqa: E402


def pairs(items: list, cast) -> dict:
    return {name: cast(value) for name, value in (item.split("=", 1) for item in items)}


def plot(rows: list, speed: dict, results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so no wall_time.png (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, name in enumerate(speed):
        mine = sorted((r for r in rows if r["run"] == name), key=lambda r: r["step"])
        if not mine:
            continue
        secs = [r["step"] * speed[name] / 60 for r in mine]
        kw = dict(color=f"C{i}", marker="o", markersize=3, label=name)
        axes[0].plot(secs, [r["psnr"] for r in mine], **kw)
        axes[1].plot(secs, [r["seam"] for r in mine], **kw)
        axes[2].plot(secs, [r["seam_half"] for r in mine], **kw)
    axes[1].axhline(results["real_seam"], color="gray", linewidth=0.8, label="training images")
    axes[2].axhline(results["real_seam_half"], color="gray", linewidth=0.8, label="training images")
    axes[0].set(ylabel="PSNR to the training image (dB)", title="conditional samples (EMA)")
    axes[1].set(ylabel="seam ratio, image grid", title="patch grid (1 = none)")
    axes[2].set(ylabel="seam ratio, half-shifted grid", title="encoder grid (1 = none)")
    for ax in axes:
        ax.set_xlabel("training minutes (one thread, measured speed)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", "-r", required=True, help="training_evidence.py's results.json")
    ap.add_argument("--data", "-d", required=True, help="the training LMDB")
    ap.add_argument("--out", "-o", required=True)
    ap.add_argument("--speed", action="append", required=True, metavar="NAME=SECONDS_PER_STEP")
    ap.add_argument("--at", action="append", default=[], metavar="NAME=STEP", help="the picture's snapshot per run")
    ap.add_argument("--weights", default="ema")
    ap.add_argument("--images", default="", help="the training images sampled, I,J,... (as training_evidence.py)")
    ap.add_argument("--config", default="small")
    ap.add_argument("--uncond", action="append", default=[], metavar="NAME=FOLDER",
                    help="a folder of unconditional samples 0.png, 1.png, ... to compare with the training images")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    speed, at = pairs(args.speed, float), pairs(args.at, int)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in results["rows"] if r["weights"] == args.weights and r["run"] in speed]
    lines = ["| run | s/step | step | minutes | PSNR | seams | seams, half-shifted |", "|---|---|---|---|---|---|---|"]
    for name in speed:
        for r in sorted((r for r in rows if r["run"] == name), key=lambda r: r["step"]):
            lines.append(f"| {name} | {speed[name]:.3f} | {r['step']} | {r['step'] * speed[name] / 60:.1f} | "
                         f"{r['psnr']:.2f} | {r['seam']:.2f} | {r['seam_half']:.2f} |")
    (out / "wall_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, speed, results, out / "wall_time.png")
    if at:
        _, real = training_images(args.data, args.config)
        index = [int(i) for i in args.images.split(",")] if args.images else list(range(len(real)))
        real = [real[i] for i in index]
        folder = Path(args.results).parent
        imgs = [read_pngs(folder / f"{name}_{step:05d}_{args.weights}", len(real)) for name, step in at.items()]
        grid = []
        for i in range(len(real)):
            grid += [real[i]] + [im[i] for im in imgs]
        save_grid(as_tensor(grid), out / "at_equal_time.png", ncol=1 + len(imgs))
        print("at_equal_time.png columns: training image, " + ", ".join(f"{n} step {s}" for n, s in at.items()))
    if args.uncond:
        uncond(pairs(args.uncond, Path), args.data, args.config, out)
    return 0


def uncond(folders: dict, data: str, config: str, out: Path) -> None:
    cfg, real = training_images(data, config)
    p = cfg.model.patch_size
    lines = ["| run | samples | nearest-training PSNR (dB) | distinct nearest | closest pair of samples (dB) | seams | "
             "seams, half-shifted |", "|---|---|---|---|---|---|---|"]
    for name, folder in folders.items():
        imgs = read_pngs(folder, len(list(folder.glob("[0-9]*.png"))))
        near = [max(range(len(real)), key=lambda k: psnr(a, real[k])) for a in imgs]
        best = [psnr(a, real[k]) for a, k in zip(imgs, near)]
        pair = max(psnr(imgs[i], imgs[j]) for i in range(len(imgs)) for j in range(i + 1, len(imgs)))
        seams = seam_stats(imgs, p, (0, p // 2))
        lines.append(f"| {name} | {len(imgs)} | {np.mean(best):.2f} | {len(set(near))} | {pair:.2f} | "
                     f"{seams[0]['mean']:.2f} | {seams[p // 2]['mean']:.2f} |")
    (out / "uncond.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
