"""The whole chain on a folder of images, in one command: pack, codes, train, latent model, samples.

    python scripts/quickstart.py -i my_photos/ -o qs                  # CPU-sized: small preset, v objective
    python scripts/quickstart.py -i my_photos/ -o qs --clip_pretrained none --steps 1000   # no CLIP weights here

Beyond the paper: the defaults (small preset, 64x128 images, patch 16, the v objective with the small preset's
faster recipe, whose EMA weights sample well from the start; raw weights where the EMA is still young, as with eps or
flow; seamless sampling) are what gives images on a 2-core CPU in minutes (docs/EVALUATION.md, "Objectives on real photos"); the paper's recipe is train.py
with a paper preset and the eps objective (README, "Quick start"). Each step is the project's own command line, run
only when its result is missing, so re-running the same command continues an interrupted chain (train.py resumes)
and never replaces anything already made. Writes into OUT/:

  photos.lmdb/        img2lmdb.py --config PRESET --format raw
  codes.pt            initialize.py (CLIP image embeddings; random ones with --clip_pretrained none)
  runs/patchdm/       train.py --objective OBJECTIVE (checkpoints/last.pt, stats.jsonl, EMA previews)
  runs/latent/        train_latent.py --weights ema|raw --objective v --znormalize (the full checkpoint test.py
                      samples with)
  conditional/        test.py --codes 0,1,...: each training image's code, k.png next to real_k.png
  unconditional/      test.py: codes sampled by the latent model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._steps import run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", "-i", required=True, help="folder of images (searched recursively)")
    ap.add_argument("--out", "-o", required=True, help="work folder (created; re-run to continue)")
    ap.add_argument("--config", default="small", help="preset (default small: 64x128 images, patch 16)")
    ap.add_argument("--objective", default="v", choices=["eps", "v", "flow"],
                    help="v (default here: images at CPU budgets), flow, or the paper's eps")
    ap.add_argument("--steps", type=int, default=2000, help="train.py optimizer steps")
    ap.add_argument("--batch_size", "-b", type=int, default=8)
    ap.add_argument("--latent_steps", type=int, default=15000, help="train_latent.py optimizer steps")
    ap.add_argument("--latent_objective", default="v", choices=["eps", "v"],
                    help="the latent MLP's target: v (default here: codes near the table's), or the paper's eps")
    ap.add_argument("--num", type=int, default=8, help="unconditional images")
    ap.add_argument("--seamless", default="shift", choices=["off", "shift", "average", "blend"],
                    help="sampling without the patch grid, in the previews and samples (recorded in the run's "
                         "sampling.seamless; default shift; off: the paper's sampler; docs/EVALUATION.md)")
    ap.add_argument("--clip_pretrained", default=None,
                    help="initialize.py --clip_pretrained (default: its own, OpenAI's weights from the local cache)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    if not Path(args.images).is_dir():
        print(f"error: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    images, out = Path(args.images).resolve(), Path(args.out).resolve()  # the steps run in the project's root
    dev = ["--device", args.device] if args.device else []
    lmdb, codes, runs = out / "photos.lmdb", out / "codes.pt", out / "runs"
    if not (lmdb / "data.mdb").exists():
        run(["img2lmdb.py", "-i", images, "-o", lmdb, "--config", args.config, "--format", "raw"])
    if not codes.exists():
        clip = ["--clip_pretrained", args.clip_pretrained] if args.clip_pretrained else []
        run(["initialize.py", "-d", lmdb, "-o", codes, *clip, *dev])
    from configs import get_preset
    from dataset import build_dataset
    data = build_dataset(str(lmdb), get_preset(args.config).data)
    batch = min(args.batch_size, len(data))  # a batch cannot hold more images than there are
    ckpt = runs / "patchdm" / "checkpoints" / "last.pt"
    seamless = [] if args.seamless == "off" else ["--set", f"sampling.seamless={args.seamless}"]
    run(["train.py", "--config", args.config, "-d", lmdb, "--semantic_path", codes, "-n", "patchdm",
         "--objective", args.objective, "-b", batch, "--max_steps", args.steps, "--runs_dir", runs,
         "--log_every", 100, *seamless, *dev])
    weights = "ema" if usable_ema(runs / "patchdm", args.steps) else "raw"
    raw = ["--raw"] if weights == "raw" else []
    full = runs / "latent" / "checkpoints" / "last.pt"
    znorm = ["--znormalize"] if len(data) > 1 else []  # a standard deviation needs two codes
    run(["train_latent.py", "-m", ckpt, "-n", "latent", "--weights", weights, "--max_steps", args.latent_steps,
         "--objective", args.latent_objective, *znorm, "--runs_dir", runs, *dev])
    shown = list(range(min(len(data), 8)))
    run(["test.py", "-f", ckpt, "-g", out / "conditional", "--codes", ",".join(map(str, shown)), *raw,
         "-b", len(shown), "--skip_existing", *dev])
    from runtime.files import save_png
    for k in shown:
        if not (out / "conditional" / f"real_{k}.png").exists():
            save_png(data[k][0], out / "conditional" / f"real_{k}.png")
    run(["test.py", "-f", full, "-g", out / "unconditional", "--img_num", args.num, *raw, "-b", min(8, args.num),
         "--skip_existing", *dev])
    print(f"done: {out / 'conditional'} (k.png from the code of training image k, real_k.png beside it), "
          f"{out / 'unconditional'}")
    return 0


def usable_ema(run: Path, steps: int) -> bool:
    """Whether the run's EMA holds at most 5% of the initial weights after ``steps`` (the test.py warning's limit):
    the small v recipe's power-function EMA does from the start, the paper's constant EMA does not at CPU budgets."""
    import json
    from configs import from_dict
    from training.recipe import YOUNG_EMA, EMASchedule
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    return EMASchedule.of(cfg.training).initial_share(steps) <= YOUNG_EMA


if __name__ == "__main__":
    sys.exit(main())
