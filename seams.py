"""Seam ratio of generated images, next to real images: the boundary-artefact measure (metrics/seams.py).

    python seams.py --images out --patch 64 --real data/nature.lmdb --config nature --out seams.json

Prints, for the image grid (offset 0, the decoder tiles) and the half-shifted grid (offset p/2, the encoder's
padded patches), the mean +- std over images of (mean |grad| across grid lines) / (mean |grad| inside patches).
Real images score about 1; visible seams score above 1.
"""

from __future__ import annotations

import json
import sys

from tqdm import tqdm

from configs import get_preset, preset_help
from metrics.images import open_images
from metrics.seams import seam_stats
from runtime.cli import ArgumentParser, bounded, positive_int
from runtime.errors import CLIError, run_cli
from runtime.files import atomic_write_text, check_new_file


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--images", "-i", required=True, help="folder of generated images")
    ap.add_argument("--patch", "-p", type=bounded(int, 2, "an integer"), default=64,
                    help="patch size of the model (grid pitch); every image must be a multiple of it")
    ap.add_argument("--real", default=None, help="reference images: an LMDB or folder (read at the training size)")
    ap.add_argument("--config", default="nature",
                    help="the data geometry that reads --real: a " + preset_help("nature")
                    + ", or none (a folder as stored)")
    ap.add_argument("--num", type=positive_int, default=None, help="at most this many images of each set")
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return ap


def _on_grid(source, p: int, what: str):
    """The images of ``source``, refusing one whose size is not a multiple of the grid pitch."""
    for img in source:
        h, w = img.shape[:2]
        if h % p or w % p:
            raise CLIError(f"a {what} image is {h}x{w}, not a multiple of --patch {p}: give the model's patch size "
                           "(generated canvases are multiples of it; --config reads real images at the training size)")
        yield img


def _stats(source, p, what):
    return seam_stats(tqdm(_on_grid(source, p, what), desc=what, unit="img", leave=False), p, offsets=(0, p // 2))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    p = args.patch
    if args.out:
        check_new_file(args.out, args.overwrite)
    try:
        data_cfg = None if args.config == "none" else get_preset(args.config).data
        gen = open_images(args.images, None, args.num)
        real = open_images(args.real, data_cfg, args.num) if args.real else None
        result = {"patch": p, "generated": _stats(gen, p, "generated")}
        if real is not None:
            result["real"] = _stats(real, p, "real")
    except ValueError as e:
        raise CLIError(str(e)) from None
    for name in ("generated", "real"):
        if name in result:
            s = result[name]
            flat = s[0]["total"] - s[0]["n"]
            print(f"{name:9s} seam ratio  grid: {s[0]['mean']:.4f} +- {s[0]['std']:.4f}   "
                  f"half-shifted grid: {s[p // 2]['mean']:.4f} +- {s[p // 2]['std']:.4f}   ({s[0]['n']} of "
                  f"{s[0]['total']} images" + (f"; {flat} flat image(s) without any gradient left out)" if flat
                                               else ")"))
    if args.out:
        atomic_write_text(json.dumps(result, indent=2), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
