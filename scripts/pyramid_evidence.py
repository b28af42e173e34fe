"""The pyramid autoencoder's evidence (docs/PYRAMID.md): train the pyramid and the single-latent autoencoder for the
same steps, and measure reconstruction PSNR on held-out photos along the way, next to bicubic down- and up-sampling to
the same number of values; the paper's Fig. 7 grid (decoding from one latent, and from all but one); the 2048x1024
preset's encode + decode at a small width (time, peak memory).

    python scripts/pyramid_evidence.py --train data/train.lmdb --heldout photos_heldout/ -o ev/pdm --steps 1000

Each training step is the project's own command line (train.py, resumed between evaluations: a resumed run equals an
uninterrupted one); an existing run folder continues. Writes OUT/results.json and OUT/*.png.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from configs import get_preset  # noqa: E402
from dataset import IMAGE_EXTS, geometric_transform  # noqa: E402
from model import load  # noqa: E402
from model.pyramid.sampling import reconstruct  # noqa: E402
from runtime.files import save_grid, to_uint8  # noqa: E402
from runtime.images import read_rgb  # noqa: E402
from scripts._steps import run  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def saturation(a: np.ndarray) -> float:
    """Mean HSV saturation of a uint8 image, in [0, 1]."""
    return float(np.asarray(Image.fromarray(a).convert("HSV"))[..., 1].mean() / 255)


def held_out(folder: Path, cfg) -> torch.Tensor:
    """The held-out images at the preset's size, (N, 3, H, W) in [-1, 1]."""
    hw = tuple(cfg.sampling.image_size)
    geometry = geometric_transform(cfg.data.transform, hw, hw)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    return torch.stack([read_rgb(p, geometry) for p in files])


def scores(ae, x: torch.Tensor, keep=None) -> dict:
    rec = reconstruct(ae, x, keep)
    pairs = [(to_uint8(a), to_uint8(b)) for a, b in zip(x, rec)]
    sat = np.mean([saturation(b) for _, b in pairs]) / max(np.mean([saturation(a) for a, _ in pairs]), 1e-6)
    return dict(psnr=float(np.mean([psnr(a, b) for a, b in pairs])), saturation=float(sat))


def bicubic(x: torch.Tensor, values: int) -> dict:
    """PSNR of bicubic down- to about ``values`` numbers (the image's aspect kept) and back up."""
    h, w = x.shape[-2:]
    s = math.sqrt(values / (3 * h * w))
    small = (max(1, round(w * s)), max(1, round(h * s)))
    out = []
    for img in x:
        a = to_uint8(img)
        b = Image.fromarray(a).resize(small, Image.BICUBIC).resize((w, h), Image.BICUBIC)
        out.append(psnr(a, np.asarray(b)))
    return dict(size=f"{small[1]}x{small[0]}", values=3 * small[0] * small[1], ratio=3 * h * w / (3 * small[0] *
                small[1]), psnr=float(np.mean(out)))


def train_to(args, name: str, preset: str, steps: int) -> float:
    """train.py up to ``steps`` (resuming); returns the wall time of this segment's training steps."""
    stats = args.out / "runs" / name / "stats.jsonl"
    before = len(stats.read_text().splitlines()) if stats.exists() else 0
    run(["train.py", "--config", preset, "-d", args.train, "-n", name, "--runs_dir", args.out / "runs",
         "--max_steps", steps, "--log_every", 25, "--device", args.device, *args.extra])
    rows = [json.loads(line) for line in stats.read_text().splitlines()[before:]]
    return sum(r["sec_per_step"] * 25 for r in rows if "sec_per_step" in r)


def fig7(ae, x: torch.Tensor, path: Path) -> dict:
    """Rows: a held-out image; columns: the image, all latents, only latent i (each), all but latent i (each)."""
    n = ae.num_latents
    variants = [("all", None)] + [(f"only {i}", {i}) for i in range(n)] + \
        [(f"all but {i}", set(range(n)) - {i}) for i in range(n)]
    table = {name: scores(ae, x, keep) for name, keep in variants}
    cells = []
    for img in x[:args_rows(x)]:
        cells.append(img)
        cells += [reconstruct(ae, img[None], keep)[0] for _, keep in variants]
    save_grid(torch.stack(cells), path, ncol=1 + len(variants))
    return table


def args_rows(x) -> int:
    return min(4, len(x))


def two_k(device: str) -> dict:
    """Encode + decode one 1024x2048 image with the pyramid_2k preset at width 8 (untrained), in a fresh process:
    seconds and peak resident memory."""
    code = ("import resource, time, torch; from configs import get_preset; from model.pyramid import "
            "build_autoencoder; from model.pyramid.sampling import reconstruct\n"
            "torch.set_num_threads(2); c = get_preset('pyramid_2k'); c.autoencoder.channels = 8\n"
            "ae = build_autoencoder(c.autoencoder).eval(); x = torch.rand(1, 3, 1024, 2048) * 2 - 1\n"
            "t = time.time(); y = reconstruct(ae, x); dt = time.time() - t\n"
            "print(dt, y.shape[-2], y.shape[-1], sum(p.numel() for p in ae.parameters()), "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    dt, h, w, params, rss = out.stdout.split()
    return dict(seconds=float(dt), size=f"{h}x{w}", params=int(params), peak_rss_gib=int(rss) / 2 ** 20,
                device=device)


def plot(curves: dict, lines: dict, path: Path, size=(800, 360)) -> None:
    """A small line chart (PIL; no plotting package needed): PSNR against steps for each curve, dashed lines for
    the baselines."""
    from PIL import ImageDraw
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 56, size[0] - 250, 16, size[1] - 40
    xs = [r["step"] for c in curves.values() for r in c]
    ys = [v for c in curves.values() for r in c for v in (r["raw"], r["ema"])] + list(lines.values())
    x0, x1, y0, y1 = 0, max(xs), math.floor(min(ys)) - 1, math.ceil(max(ys)) + 1
    px = lambda x: left + (x - x0) / (x1 - x0) * (right - left)  # noqa: E731
    py = lambda y: bottom - (y - y0) / (y1 - y0) * (bottom - top)  # noqa: E731
    d.rectangle([left, top, right, bottom], outline="black")
    for y in range(int(y0), int(y1) + 1, 2):
        d.line([left - 4, py(y), left, py(y)], fill="black")
        d.text((left - 30, py(y) - 6), f"{y}", fill="black")
    for x in range(0, x1 + 1, 250 if x1 > 750 else max(1, x1 // 4)):
        d.text((px(x) - 10, bottom + 6), f"{x}", fill="black")
    d.text(((left + right) // 2 - 30, bottom + 22), "training step", fill="black")
    d.text((4, top), "dB", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    legend = top
    for (name, rows), colour in zip(curves.items(), colours):
        for key, width in (("raw", 3), ("ema", 1)):
            pts = [(px(r["step"]), py(r[key])) for r in rows]
            d.line(pts, fill=colour, width=width)
        d.text((right + 8, legend), f"{name}: raw (thick), EMA (thin)", fill=colour)
        legend += 16
    for name, value in lines.items():
        for x in range(left, right, 12):
            d.line([x, py(value), x + 6, py(value)], fill="gray")
        d.text((right + 8, legend), f"--- {name} {value:.1f}", fill="gray")
        legend += 16
    img.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="training LMDB (img2lmdb.py --config pyramid_small)")
    ap.add_argument("--heldout", required=True, type=Path, help="folder of photos the autoencoders never see")
    ap.add_argument("--out", "-o", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval_every", type=int, default=250)
    ap.add_argument("--presets", default="pyramid_small,pyramid_single")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--extra", nargs="*", default=[], help="more train.py flags")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = get_preset("pyramid_small")
    x = held_out(args.heldout, cfg)
    results = {"heldout": [p.name for p in sorted(args.heldout.iterdir()) if p.suffix.lower() in IMAGE_EXTS],
               "curves": {}, "baselines": {}}
    for preset in args.presets.split(","):
        curve, seconds = [], 0.0
        for steps in range(args.eval_every, args.steps + 1, args.eval_every):
            seconds += train_to(args, preset, preset, steps)
            ck = args.out / "runs" / preset / "checkpoints" / "last.pt"
            row = dict(step=steps, train_seconds=round(seconds, 1))
            for weights in ("raw", "ema"):
                b = load(ck, raw=weights == "raw")
                row[weights] = scores(b.autoencoder, x)["psnr"]
            row["params"] = sum(p.numel() for p in b.autoencoder.parameters())
            row["latent_values"] = sum(math.prod(s) for s in b.autoencoder.latent_shapes(*x.shape[-2:]))
            curve.append(row)
            print(preset, row, flush=True)
        results["curves"][preset] = curve
    values = results["curves"][args.presets.split(",")[0]][-1]["latent_values"]
    results["baselines"]["bicubic_same_values"] = bicubic(x, values)
    results["baselines"]["bicubic_1_16"] = bicubic(x, 3 * x.shape[-2] * x.shape[-1] // 16)
    plot(results["curves"], {f"bicubic 1:{b['ratio']:.1f}": b["psnr"] for b in results["baselines"].values()},
         args.out / "curve.png")
    pyramid = load(args.out / "runs" / "pyramid_small" / "checkpoints" / "last.pt").autoencoder
    results["fig7"] = fig7(pyramid, x, args.out / "fig7.png")
    results["two_k"] = two_k(args.device)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "curves"}, indent=1))
    return 0


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    print(f"evidence: {time.time() - t0:.0f} s; peak child memory "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20:.2f} GiB")
    sys.exit(code)
