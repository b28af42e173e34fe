"""Data-loader throughput: images/s of the training DataLoader over an LMDB (decode + preset transform + batching).

    python -m benchmarks.data_loader --data data/nature.lmdb --batch 96 --workers 8
    python -m benchmarks.data_loader --smoke

Compare the result with train_speed's windows/s: the loader must deliver at least that many images per second.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.common import emit, environment
from configs import get_preset
from dataset import build_dataset
from runtime.data import StepBatchSampler, make_loader
from model.patchdm.grid import window_region
from model.patchdm.training import window_at


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="LMDB or image folder")
    ap.add_argument("--preset", default="nature")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batches", type=int, default=30, help="timed batches (after 3 warm-up batches)")
    ap.add_argument("--pin", action="store_true", help="pin host memory as train.py does on a GPU")
    ap.add_argument("--full", action="store_true",
                    help="load whole images (image-encoder models) instead of the training window (code tables)")
    ap.add_argument("--out", default=None, help="append JSONL rows here")
    ap.add_argument("--smoke", action="store_true", help="tiny preset over a few synthetic images")
    args = ap.parse_args(argv)
    if args.smoke:
        import tempfile

        import numpy as np
        from PIL import Image
        tmp = tempfile.mkdtemp()
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(f"{tmp}/{i}.jpg")
        args.data, args.preset, args.batch, args.workers, args.batches = tmp, "tiny", 4, 0, 4
    cfg = get_preset(args.preset)
    data = build_dataset(args.data, cfg.data)
    p = cfg.model.patch_size
    region = None if args.full else (lambda s, k: window_region(window_at(cfg, s), p))
    sampler = StepBatchSampler(len(data), args.batch, region_of=region)
    loader = iter(make_loader(data, sampler, args.workers, args.pin))
    for _ in range(3):
        next(loader)
    t0 = time.perf_counter()
    n = 0
    for _ in range(args.batches):
        x, _ = next(loader)
        n += x.shape[0]
    dt = time.perf_counter() - t0
    row = dict(environment(torch.device("cpu")), preset=args.preset, batch=args.batch, workers=args.workers,
               images=len(data), loads="full" if args.full else "window", images_per_s=n / dt,
               ms_per_batch=1000 * dt / args.batches)
    emit([row], args.out, ["preset", "loads", "batch", "workers", "images", "images_per_s", "ms_per_batch"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
