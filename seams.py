"""Seam ratio of generated images, next to real images: the boundary-artefact measure (metrics/seams.py).

    python seams.py --images out --patch 64 --real data/nature.lmdb --config nature --out seams.json

Prints, for the image grid (offset 0, the decoder tiles) and the half-shifted grid (offset p/2, the encoder's
padded patches), the mean +- std over images of (mean |grad| across grid lines) / (mean |grad| inside patches).
Real images score about 1; visible seams score above 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from configs import get_preset
from dataset import DataError
from metrics.images import open_images
from metrics.seams import seam_stats
from runtime.errors import CLIError, run_cli
from runtime.files import atomic_write_text


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", "-i", required=True, help="folder of generated images")
    ap.add_argument("--patch", "-p", type=int, default=64, help="patch size of the model (grid pitch)")
    ap.add_argument("--real", default=None, help="reference images: an LMDB or folder (read at the training size)")
    ap.add_argument("--config", default="nature",
                    help="preset whose data geometry reads --real (default nature); none: a folder as stored")
    ap.add_argument("--num", type=int, default=None, help="at most this many images of each set")
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    return ap


def _stats(source, p, what):
    return seam_stats(tqdm(source, desc=what, unit="img", leave=False), p, offsets=(0, p // 2))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    p = args.patch
    if p < 2:
        raise CLIError("--patch must be at least 2")
    try:
        result = {"patch": p, "generated": _stats(open_images(args.images, None, args.num), p, "generated")}
        if args.real:
            data_cfg = None if args.config == "none" else get_preset(args.config).data
            result["real"] = _stats(open_images(args.real, data_cfg, args.num), p, "real")
    except (DataError, ValueError) as e:
        raise CLIError(str(e)) from None
    for name in ("generated", "real"):
        if name in result:
            s = result[name]
            print(f"{name:9s} seam ratio  grid: {s[0]['mean']:.4f} +- {s[0]['std']:.4f}   "
                  f"half-shifted grid: {s[p // 2]['mean']:.4f} +- {s[p // 2]['std']:.4f}   ({s[0]['n']} images)")
    if args.out:
        atomic_write_text(json.dumps(result, indent=2), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
