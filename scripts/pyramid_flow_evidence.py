"""The Pyramid Diffusion Model's flow evidence (docs/PYRAMID.md, "The flow network"): samples of full checkpoints
with Euler-200 and RK45 from the same noise, against the training images; the component ablations; PDM against
Patch-DM on the same photos.

    python scripts/pyramid_flow_evidence.py --runs ev/flow/runs --data data/train.lmdb -o ev/flow/out \\
        --models pyramid_small,pyramid_single --ablations base,abl_spatial --patchdm patchdm_v_latent

Every sample is made by the project's own test.py (its wall time measured around the command); the latent
statistics are recomputed in-process from the same noise. Writes OUT/results.json and OUT/*.png.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset import build_dataset  # noqa: E402
from metrics.seams import seam_ratio  # noqa: E402
from model import load  # noqa: E402
from diffusion.flow import FlowProcess  # noqa: E402
from model.pyramid.flow import FlowLoss  # noqa: E402
from model.pyramid.flow_training import encode_images  # noqa: E402
from model.pyramid.sampling import image_noise, sample_latents  # noqa: E402
from runtime.files import save_grid, to_uint8  # noqa: E402
from runtime.images import View  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def training_images(cfg, path: str) -> list:
    """The training images as the flow model saw them: whole, at the sampling size, and mirrored (uint8)."""
    data = build_dataset(path, cfg.data)
    h, w = cfg.data.image_size
    return [to_uint8(data[(k, View(0, 0, h, w, tuple(cfg.sampling.image_size), m))][0])
            for m in (False, True) for k in range(len(data))]


def nearest(img: np.ndarray, train: list) -> tuple:
    """(PSNR to the nearest training image, its index)."""
    scores = [psnr(img, t) for t in train]
    k = int(np.argmax(scores))
    return scores[k], k


def sample_cli(ckpt: Path, out: Path, n: int, extra: list) -> tuple:
    """test.py into ``out`` (replaced); returns its wall time and the last line it printed."""
    t = time.time()
    proc = subprocess.run([sys.executable, "test.py", "-f", str(ckpt), "-g", str(out), "--img_num", str(n), "-b",
                           str(n), "--device", "cpu", "--overwrite", *extra], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return time.time() - t, proc.stdout.strip().splitlines()[-1]


def read_pngs(folder: Path, n: int) -> list:
    return [np.asarray(Image.open(folder / f"{k}.png").convert("RGB")) for k in range(n)]


def image_figures(imgs: list, train: list, patch: int = 16) -> dict:
    near = [nearest(a, train) for a in imgs]
    return dict(nearest_psnr=float(np.mean([p for p, _ in near])), nearest_psnr_each=[round(p, 2) for p, _ in near],
                nearest_index=[k for _, k in near], distinct_nearest=len({k % (len(train) // 2) for _, k in near}),
                seam_ratio=float(np.mean([seam_ratio(a, patch) for a in imgs])),
                seam_ratio_shifted=float(np.mean([seam_ratio(a, patch, patch // 2) for a in imgs])))


@torch.no_grad()
def latent_stds(bundle, data_path: str, n: int, seed: int = 0) -> dict:
    """Each latent's std: of the flow model's samples (Euler-200 from image_noise(seed, k)) and of the data's
    posterior means (the training images as encode_images gives them)."""
    cfg, ae = bundle.cfg, bundle.autoencoder
    shapes = ae.latent_shapes(*cfg.sampling.image_size)
    noise = tuple(torch.stack(x) for x in zip(*(image_noise(seed, k, shapes) for k in range(n))))
    z, _ = sample_latents(bundle.flow, noise, "euler", 200, cfg.flow_training.eps)
    means, _ = encode_images(ae, build_dataset(data_path, cfg.data), tuple(cfg.data.image_size),
                             tuple(cfg.sampling.image_size), True, torch.device("cpu"))
    return dict(samples=[float(a.std()) for a in z], data=[float(m.std()) for m in means],
                scale=[float(s) for s in bundle.flow.scaler.std])


@torch.no_grad()
def eval_loss(bundle, data_path: str, n: int = 256, seed: int = 1) -> dict:
    """The flow loss in eval mode (no dropout) on n fixed draws (image, posterior sample, time, noise) of the
    training latents: each latent's term and their sum."""
    cfg = bundle.cfg
    means, stds = encode_images(bundle.autoencoder, build_dataset(data_path, cfg.data), tuple(cfg.data.image_size),
                                tuple(cfg.sampling.image_size), True, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(len(means[0]), (n,), generator=g)
    z = tuple(m[index] + s[index] * torch.randn(m[index].shape, generator=g) for m, s in zip(means, stds))
    noise = tuple(torch.randn(a.shape, generator=g) for a in z)
    process = FlowProcess(eps=cfg.flow_training.eps)
    terms = FlowLoss(bundle.flow, process).eval()(z, process.draw_t(n, g), noise)
    out = {k: float(v.mean()) for k, v in terms.items()}
    out["total"] = sum(out.values())
    return out


def to_tensor(imgs: list) -> torch.Tensor:
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1 for a in imgs])


def losses(run: Path, last: int) -> float:
    """The mean training loss over the log rows of the last ``last`` steps."""
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if '"loss"' in line]
    end = rows[-1]["step"]
    return float(np.mean([r["loss"] for r in rows if r["step"] > end - last]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--data", required=True, help="the training LMDB")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("-n", type=int, default=16, help="samples per model")
    ap.add_argument("--models", default="pyramid_small,pyramid_single")
    ap.add_argument("--ablations", default="")
    ap.add_argument("--patchdm", default="", help="run name of a Patch-DM full checkpoint (train_latent.py)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    runs, out, n = Path(args.runs), Path(args.out), args.n
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    train = None
    rows_for_grid = {}
    for name in [m for m in args.models.split(",") if m]:
        ckpt = runs / name / "checkpoints" / "last.pt"
        bundle = load(ckpt)
        train = train or training_images(bundle.cfg, args.data)
        r = dict(steps=int(torch.load(ckpt, weights_only=True)["networks"]["flow"]["step"]))
        imgs = {}
        for sampler, extra in (("euler200", ["--sampler", "euler", "--steps", "200"]), ("rk45", ["--sampler", "rk45"])):
            folder = out / f"{name}_{sampler}"
            r[f"{sampler}_seconds"], r[f"{sampler}_report"] = sample_cli(ckpt, folder, n, extra)
            imgs[sampler] = read_pngs(folder, n)
            r[sampler] = image_figures(imgs[sampler], train)
        r["euler_vs_rk45_psnr"] = float(np.mean([psnr(a, b) for a, b in zip(imgs["euler200"], imgs["rk45"])]))
        r["latent_std"] = latent_stds(bundle, args.data, n)
        r["eval_loss"] = eval_loss(bundle, args.data)
        results[name] = r
        near = [train[k] for k in r["euler200"]["nearest_index"]]
        rows_for_grid[name] = imgs["euler200"][:8]
        save_grid(to_tensor(imgs["euler200"][:8] + imgs["rk45"][:8] + near[:8]), out / f"{name}_samples.png", ncol=8)
        print(name, json.dumps(r)[:400], flush=True)
    for name in [a for a in args.ablations.split(",") if a]:
        ckpt = runs / name / "checkpoints" / "last.pt"
        bundle = load(ckpt, raw=True)
        train = train or training_images(bundle.cfg, args.data)
        folder = out / f"{name}_euler50"
        seconds, _ = sample_cli(ckpt, folder, 8, ["--sampler", "euler", "--steps", "50", "--raw"])
        imgs = read_pngs(folder, 8)
        results[name] = dict(loss_last100=losses(runs / name, 100), eval_loss=eval_loss(bundle, args.data),
                             seconds=seconds, **image_figures(imgs, train))
        save_grid(to_tensor(imgs), out / f"{name}_samples.png", ncol=8)
        print(name, json.dumps(results[name])[:300], flush=True)
    if args.patchdm:
        ckpt = runs / args.patchdm / "checkpoints" / "last.pt"
        folder = out / "patchdm"
        seconds, _ = sample_cli(ckpt, folder, n, [])
        imgs = read_pngs(folder, n)
        results["patchdm"] = dict(seconds=seconds, **image_figures(imgs, train))
        rows_for_grid["patchdm"] = imgs[:8]
        near = [train[k] for k in results["patchdm"]["nearest_index"][:8]]
        save_grid(to_tensor(imgs[:8] + near), out / "patchdm_samples.png", ncol=8)
        print("patchdm", json.dumps(results["patchdm"])[:300], flush=True)
    results_path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
