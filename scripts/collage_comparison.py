"""Feature collage vs independent patches (paper Fig. 2a vs 2c) on real images: the seam ratio of each, next to the
real images' own.

    python scripts/collage_comparison.py -d data/bg64.lmdb -o cmp --config small --steps 1200 -b 16 --num 16
    python scripts/collage_comparison.py -d data/nature.lmdb -o cmp_gpu --config nature --steps 3000 -b 32 \
        --num 32 --train_args "--precision bf16"

Both models are trained with the same data, seed, batch and number of steps, and without semantic codes (--no_code)
so that the collage is the only difference and samples need no latent model. Each then generates --num images with
the same seeds; seams.py measures them and the real images (at the training size). Writes OUT/summary.md,
OUT/summary.json and a sample grid per mode (OUT/grid_MODE.png).
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
from runtime.files import save_grid  # noqa: E402

MODES = ("feature", "none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", "-d", required=True, help="LMDB or image folder")
    ap.add_argument("--out", "-o", required=True, help="output folder")
    ap.add_argument("--config", default="small", help="preset (default small: patch 16, 64x128 images)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch_size", "-b", type=int, default=16)
    ap.add_argument("--num", type=int, default=16, help="images generated per model")
    ap.add_argument("--train_args", default="", help="extra train.py arguments (quoted)")
    ap.add_argument("--test_args", default="", help="extra test.py arguments (quoted)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    p = get_preset(args.config).model.patch_size
    results = {}
    for mode in MODES:
        ckpt = out / "runs" / mode / "checkpoints" / "last.pt"
        run(["train.py", "--config", args.config, "-d", args.data, "--no_code", "--collage", mode, "-n", mode,
             "-b", str(args.batch_size), "--max_steps", str(args.steps), "--runs_dir", str(out / "runs"),
             *shlex.split(args.train_args)])
        samples = out / f"samples_{mode}"
        run(["test.py", "-f", str(ckpt), "-g", str(samples), "--img_num", str(args.num), "-b", str(min(8, args.num)),
             "--skip_existing", *shlex.split(args.test_args)])
        run(["seams.py", "--images", str(samples), "--patch", str(p), "--real", args.data, "--config", args.config,
             "--out", str(out / f"seams_{mode}.json")])
        results[mode] = json.loads((out / f"seams_{mode}.json").read_text())
        imgs = [np.asarray(Image.open(samples / f"{k}.png"), dtype=np.float32) for k in range(min(args.num, 8))]
        save_grid(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2) / 127.5 - 1, out / f"grid_{mode}.png",
                  ncol=2)
        losses = [json.loads(line) for line in (out / "runs" / mode / "stats.jsonl").read_text().splitlines()]
        results[mode]["final_loss"] = losses[-1]["loss"]
    real = results[MODES[0]]["real"]
    lines = [f"Seam ratio (mean |grad| across patch-grid lines / inside patches; 1 = no seams), preset "
             f"{args.config}, patch {p}, {args.steps} steps x batch {args.batch_size}, {args.num} samples per model, "
             "no semantic codes.", "",
             "| images | image grid (decoder tiles) | half-shifted grid (encoder patches) | final loss |",
             "|---|---|---|---|",
             f"| real ({real['0']['n']}) | {real['0']['mean']:.3f} ± {real['0']['std']:.3f} | "
             f"{real[str(p // 2)]['mean']:.3f} ± {real[str(p // 2)]['std']:.3f} | |"]
    for mode in MODES:
        g, h = results[mode]["generated"]["0"], results[mode]["generated"][str(p // 2)]
        lines.append(f"| {mode} collage | {g['mean']:.3f} ± {g['std']:.3f} | {h['mean']:.3f} ± {h['std']:.3f} | "
                     f"{results[mode]['final_loss']:.4f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
