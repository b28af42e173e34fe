"""The evidence of docs/EVALUATION.md ("Seamless sampling"): conditional samples of trained Patch-DM models with each
--seamless method and sampler, measured against the training images: seam ratio on the image grid and on the
half-shifted grid, PSNR, network evaluations and wall time; a picture of every method and enlarged crops of the
flattest area of one image.

    python scripts/seamless_evidence.py -d ev/photos.lmdb -o ev/seamless \
        -m 2000=runs/v2000/checkpoints/last.pt -m 4000=runs/v4000/checkpoints/last.pt \
        --methods off,shift@inf,average@inf,blend@inf,shift,average,blend --samplers dpmpp2m:20,ddim:50 \
        --test_args=--device=cpu

Every sample goes through test.py (--codes 0..N-1 --raw), so the figures are what a user gets; the wall time is the
test.py call's (model loading included) for all N images at batch N. A method is METHOD[:VIEWS][@BELOW] (test.py
--seamless METHOD --seamless_views VIEWS --seamless_below BELOW; @inf: the grids move at every step). Finished
sample folders are reused (delete one to redo it). Writes OUT/results.json, OUT/summary.md, OUT/grid_MODEL.png (a
row per image: training image, then each method with the first sampler) and OUT/crops.png.
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

from model.patchdm.sampling import sampling_process  # noqa: E402
from model.patchdm.seamless import evaluations, parse  # noqa: E402
from metrics.seams import seam_stats  # noqa: E402
from runtime.files import save_grid  # noqa: E402


def flattest(img: np.ndarray, size: int) -> tuple:
    """(top, left) of the size x size window (on a size/2 lattice) with the least mean |gradient|."""
    g = np.abs(np.diff(img.astype(np.float64), axis=1)).sum(-1)[:-1] + np.abs(np.diff(img.astype(np.float64),
                                                                                      axis=0)).sum(-1)[:, :-1]
    h, w = g.shape
    best = min(((g[y:y + size, x:x + size].mean(), (y, x)) for y in range(0, h - size + 1, size // 2)
                for x in range(0, w - size + 1, size // 2)))
    return best[1]


def slug(method: str) -> str:
    return method.replace(":", "x").replace("@", "_below")


def enlarge(img: np.ndarray, k: int) -> np.ndarray:
    return img.repeat(k, axis=0).repeat(k, axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", "-d", required=True, help="the training LMDB (img2lmdb.py --config PRESET --format raw)")
    ap.add_argument("--out", "-o", required=True)
    ap.add_argument("--model", "-m", action="append", required=True, metavar="NAME=CHECKPOINT")
    ap.add_argument("--config", default="small")
    ap.add_argument("--methods", default="off,shift@inf,average@inf,blend@inf,shift,average,blend")
    ap.add_argument("--samplers", default="dpmpp2m:20,ddim:50")
    ap.add_argument("--crop_image", type=int, default=0, help="the image whose flattest area is enlarged")
    ap.add_argument("--crop", type=int, default=32, help="crop size in pixels (shown 4x)")
    ap.add_argument("--test_args", default="", help="extra test.py arguments (quoted)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    cfg, real = training_images(args.data, args.config)
    p, n = cfg.model.patch_size, len(real)
    real_seams = seam_stats(real, p, (0, p // 2))
    models = dict(m.split("=", 1) for m in args.model)
    methods, samplers = args.methods.split(","), [s.split(":") for s in args.samplers.split(",")]
    results = {"real": real_seams, "runs": []}
    for name, ckpt in models.items():
        for sampler, steps in samplers:
            for method in methods:
                head, _, below = method.partition("@")
                kind, _, views = head.partition(":")
                folder = out / f"{name}_{sampler}{steps}_{slug(method)}"
                extra = [] if kind == "off" else ["--seamless", kind] + (["--seamless_views", views] if views else [])
                extra += ["--seamless_below", below] if below else []
                spec = parse(kind, int(views) if views else None, float(below) if below else None)
                seconds = None
                if not (folder / f"{n - 1}.png").exists():
                    seconds = run(["test.py", "-f", ckpt, "-g", folder, "--codes", ",".join(map(str, range(n))),
                                   "--raw", "--sampler", sampler, "--steps", steps, "-b", n, "--overwrite",
                                   *extra, *shlex.split(args.test_args)])
                imgs = read_pngs(folder, n)
                s = seam_stats(imgs, p, (0, p // 2))
                per = [psnr(a, b) for a, b in zip(imgs, real)]
                nfe = evaluations(spec, sampling_process(cfg.diffusion, sampler, int(steps)), sampler)
                results["runs"].append(dict(
                    model=name, sampler=sampler, steps=int(steps), method=method, folder=folder.name,
                    evaluations=nfe, seconds=seconds,
                    psnr=round(float(np.mean(per)), 2), psnr_each=[round(v, 2) for v in per],
                    seam_image=s[0], seam_half=s[p // 2]))
                (out / "results.json").write_text(json.dumps(results, indent=2))
    # times of reused folders come from the results of the run that made them
    old = {}
    if (out / "times.json").exists():
        old = json.loads((out / "times.json").read_text())
    for r in results["runs"]:
        if r["seconds"] is None:
            r["seconds"] = old.get(r["folder"])
        else:
            old[r["folder"]] = round(r["seconds"], 1)
    (out / "times.json").write_text(json.dumps(old, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"{n} training images, patch {p}, raw weights; seam ratio mean ± std over images; wall time of the "
             f"test.py call for all {n} images (model loading included).", "",
             "| model | sampler | method | evaluations | wall time (s) | PSNR (dB) | seam ratio, image grid | "
             "half-shifted grid |", "|---|---|---|---|---|---|---|---|",
             f"| real images | | | | | | {real_seams[0]['mean']:.2f} ± {real_seams[0]['std']:.2f} | "
             f"{real_seams[p // 2]['mean']:.2f} ± {real_seams[p // 2]['std']:.2f} |"]
    for r in results["runs"]:
        t = f"{r['seconds']:.0f}" if r["seconds"] is not None else ""
        lines.append(f"| {r['model']} | {r['sampler']}-{r['steps']} | {r['method']} | {r['evaluations']} | {t} | "
                     f"{r['psnr']:.2f} | {r['seam_image']['mean']:.2f} ± {r['seam_image']['std']:.2f} | "
                     f"{r['seam_half']['mean']:.2f} ± {r['seam_half']['std']:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # pictures: per model, each row a training image, then each method with the first sampler
    sampler, steps = samplers[0]
    k, c = args.crop_image, args.crop
    top, left = flattest(real[k], c)
    crop_rows = []
    for name in models:
        folders = [out / f"{name}_{sampler}{steps}_{slug(m)}" for m in methods]
        imgs = [read_pngs(f, n) for f in folders]
        rows = []
        for i in range(n):
            rows += [real[i]] + [im[i] for im in imgs]
        save_grid(as_tensor(rows), out / f"grid_{name}.png", ncol=1 + len(methods))
        crop_rows += [enlarge(real[k][top:top + c, left:left + c], 4)]
        crop_rows += [enlarge(im[k][top:top + c, left:left + c], 4) for im in imgs]
    save_grid(as_tensor(crop_rows), out / "crops.png", ncol=1 + len(methods))
    print(f"crops: image {k}, rows {top}..{top + c}, columns {left}..{left + c}; columns: training image, "
          + ", ".join(methods) + f" ({sampler}-{steps}); rows: " + ", ".join(models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
