"""FID and KID between generated images and the training images (metrics/fid.py; pytorch-fid's TF-FID Inception).

    python fid.py --gen out --real data/nature.lmdb --config nature --real_stats data/nature_fid.npz
    python fid.py --real data/nature.lmdb --config nature --real_stats data/nature_fid.npz   # only cache the real side
    python fid.py --gen out --real data/nature_fid.npz   # cached statistics

The paper's protocol: 50,000 generated images (test.py --img_num 50000) against all training images at the
training resolution (the --config preset's geometry). Real statistics are cached in --real_stats (.npz, reused only
when computed from the same images, size, feature dims and weights). The Inception weights come from --weights or
the torch hub cache, are never downloaded, and must be the genuine TF-FID file (SHA-256 prefix 6726825d) for the
result to be called FID; --untrusted_weights reports a Fréchet distance under other weights instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from configs import get_preset, preset_help
from dataset import DataError
from metrics.fid import (FIDError, activations, find_weights, frechet_distance, kernel_distance, load_inception,
                         load_stats, save_stats, sha256, statistics)
from metrics.images import open_images
from runtime.cli import ArgumentParser, positive_int
from runtime.device import pick_device
from runtime.errors import CLIError, run_cli
from runtime.files import atomic_write_text, check_new_file

PAPER_NUM = 50_000


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--gen", "-g", default=None, help="folder of generated images (test.py --output_dir)")
    ap.add_argument("--real", "-r", required=True, help="training LMDB / image folder, or a statistics .npz")
    ap.add_argument("--config", default="nature",
                    help="the data geometry that reads --real: a " + preset_help("nature")
                    + ", or none (a folder as stored)")
    ap.add_argument("--real_stats", default=None,
                    help=".npz cache of the real statistics: read when it matches the images, settings and weights, "
                         "else written (an existing cache of other images is only replaced with --overwrite)")
    ap.add_argument("--num_gen", type=positive_int, default=None, help="use the first N generated images (default all)")
    ap.add_argument("--num_real", type=positive_int, default=None, help="use the first N real images (default all)")
    ap.add_argument("--weights", default=None, help="Inception weights file (default: the torch hub cache)")
    ap.add_argument("--untrusted_weights", action="store_true",
                    help="accept other Inception weights; the result is then not called FID")
    ap.add_argument("--dims", type=int, default=2048, choices=[64, 192, 768, 2048], help="Inception features")
    ap.add_argument("--batch_size", "-b", type=positive_int, default=100)
    ap.add_argument("--workers", type=int, default=4, help="image decoding workers")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default CUDA when present)")
    ap.add_argument("--kid_subsets", type=positive_int, default=100, help="KID: random subsets averaged (default 100)")
    ap.add_argument("--kid_subset_size", type=positive_int, default=1000,
                    help="KID: images per subset and side (default 1000; at most the smaller side)")
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file or --real_stats cache")
    return ap


def real_statistics(args, model, weights_sha, device):
    """(mu, sigma, n, features or None) of the real side, from a .npz, the cache, or computed (and cached with the
    features, which KID needs)."""
    if args.real.endswith(".npz"):
        mu, sigma, meta, feats = load_stats(args.real)
        return mu, sigma, int(meta.get("n", 0)) or None, feats
    data_cfg = data_geometry(args.config)
    images = open_images(args.real, data_cfg, args.num_real)
    geometry = ("as stored", "none") if data_cfg is None else ("x".join(map(str, data_cfg.image_size)),
                                                               data_cfg.transform)
    meta = dict(source=str(Path(args.real).resolve()), image_size=geometry[0], transform=geometry[1], n=len(images),
                dims=args.dims, weights_sha256=weights_sha)
    cache = args.real_stats
    if cache and Path(cache).is_file():
        mu, sigma, saved, feats = load_stats(cache)
        if saved == {k: str(v) for k, v in meta.items()}:
            print(f"real statistics from {cache} ({meta['n']} images)")
            return mu, sigma, len(images), feats
        if not args.overwrite:
            raise CLIError(f"{cache} holds statistics of other images or settings; pass --overwrite to recompute and "
                           "replace it, or give another --real_stats")
        print(f"{cache} was computed from other images or settings; recomputing")
    feats = activations(model, images, args.batch_size, device, args.workers, "real")
    mu, sigma = statistics(feats)
    if cache:
        save_stats(cache, mu, sigma, feats, **meta)
        print(f"cached real statistics in {cache}")
    return mu, sigma, len(images), feats


def data_geometry(name: str):
    """The DataConfig of a preset (None for 'none'), one-line error for unknown names."""
    if name == "none":
        return None
    try:
        return get_preset(name).data
    except ValueError as e:
        raise CLIError(str(e)) from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        check_new_file(args.out, args.overwrite)
    data_geometry(args.config)
    device = pick_device(args.device)
    try:
        gen = open_images(args.gen, None, args.num_gen) if args.gen is not None else None  # before any real work
        weights = find_weights(args.weights)
        model, genuine = load_inception(weights, device, args.dims, args.untrusted_weights)
        weights_sha = sha256(weights)
        with torch.inference_mode():
            mu_r, sigma_r, n_real, feats_r = real_statistics(args, model, weights_sha, device)
            if gen is None:
                return 0
            feats_g = activations(model, gen, args.batch_size, device, args.workers, "generated")
            mu_g, sigma_g = statistics(feats_g)
        value = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
        kid = kernel_distance(feats_g, feats_r, args.kid_subsets, args.kid_subset_size) if feats_r is not None \
            else None
    except (FIDError, DataError, ValueError) as e:
        raise CLIError(str(e)) from None
    name = "FID" if genuine else "FD (untrusted Inception weights, not an FID)"
    if args.dims != 2048 and genuine:
        name = f"FID-{args.dims} (not the standard 2048-d FID)"
    kid_name = ("KID" if args.dims == 2048 else f"KID-{args.dims}") if genuine else \
        "KD (untrusted Inception weights, not a KID)"
    result = {"metric": name, "value": value, "num_gen": len(gen), "num_real": n_real, "dims": args.dims,
              "weights_sha256": weights_sha, "genuine_weights": genuine,
              "kid": None if kid is None else {"metric": kid_name, "mean": kid[0], "std": kid[1],
                                               "subsets": args.kid_subsets, "subset_size": args.kid_subset_size}}
    print(f"{name}: {value:.4f}  ({len(gen)} generated vs {n_real} real images)")
    if kid is None:
        print(f"KID: not computed: {args.real} holds no features (statistics files of older versions or pytorch-fid; "
              "give the images to --real to have them)")
    else:
        print(f"{kid_name}: {kid[0]:.6f} +- {kid[1]:.6f}  ({args.kid_subsets} subsets of "
              f"{min(args.kid_subset_size, len(feats_g), len(feats_r))})")
    if genuine and len(gen) < PAPER_NUM:
        print(f"note: the paper's protocol uses {PAPER_NUM:,} generated images; FID is biased upward with fewer")
    if args.out:
        atomic_write_text(json.dumps(result, indent=2), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
