"""Pack a folder of images into an LMDB for training (official img2lmdb.py, fixed; spec §9.1).

    python img2lmdb.py --input photos/ --output data/nature.lmdb
    python img2lmdb.py --input photos/ --output data/nature512.lmdb --config nature   # store 512x1024 crops

The input folder is only read, never renamed or modified. Images are found recursively (jpg, jpeg, png, webp, bmp,
tif, tiff; any letter case), in sorted path order, with EXIF orientation applied and every mode converted to RGB.
Keys are '0000000'..N-1 (zero-padded to 7, as the official reader expects) plus 'length'; '__sources__' maps each
key to its source path. Unreadable files and non-images are skipped, counted and listed in <output>/skipped.txt.
The LMDB is written to <output>.partial and renamed when complete; an existing output is refused without --overwrite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from multiprocessing import get_context
from pathlib import Path

import lmdb
from PIL import Image, ImageOps
from tqdm import tqdm

from dataset import IMAGE_EXTS, encode_raw, geometric_transform, to_rgb
from runtime.errors import CLIError, run_cli

MAP_SIZE = 1 << 40  # Faithful: 1 TiB address space (sparse on disk), as the official script


def encode_one(job):
    """Worker: (path, geometry or None, quality, fmt) -> (path, encoded bytes or None, error or None)."""
    path, geometry, quality, fmt = job
    try:
        with Image.open(path) as im:
            im.load()
            img = to_rgb(ImageOps.exif_transpose(im))
        if geometry is not None:  # the preset's training geometry, applied once at write time (spec §5.3)
            img = geometric_transform(*geometry)(img)
        if fmt == "raw":
            return path, encode_raw(img), None
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality) if fmt == "jpeg" else img.save(buf, format="PNG")
        return path, buf.getvalue(), None
    except Exception as e:  # one bad file must never stop the run
        return path, None, f"{type(e).__name__}: {e}".splitlines()[0]


# Deviation: the official script renamed the input files in place and keyed images by file stem (spec §9.1); here
# the input is only read and keys follow the sorted relative paths.
def list_files(root: Path):
    """(images, others): every file under root, images by extension, both sorted by relative path."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            (images if p.suffix.lower() in IMAGE_EXTS else others).append(p)
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(others, key=key)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: python img2lmdb.py -i photos/ -o data/nature.lmdb --config nature")
    ap.add_argument("--input", "-i", required=True, help="folder of images (searched recursively; never modified)")
    ap.add_argument("--output", "-o", required=True, help="LMDB folder to create")
    ap.add_argument("--num_workers", "-n", type=int, default=min(12, os.cpu_count() or 1),
                    help="decoding processes (default: min(12, cores))")
    ap.add_argument("--config", default=None,
                    help="preset whose training geometry is applied at write time (e.g. nature: resize 512x1280, "
                         "centre crop 512x1024); default: keep the original resolution")
    ap.add_argument("--quality", type=int, default=100, help="JPEG quality of the stored images (official: 100)")
    ap.add_argument("--format", choices=["jpeg", "png", "raw"], default="jpeg",
                    help="jpeg (official), png (lossless), or raw: uncompressed RGB, no decoding when training and "
                         "only the training window is read (use with --config; 1.5 MB per 512x1024 image)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    root, out = Path(args.input), Path(args.output)
    if not root.is_dir():
        raise CLIError(f"input folder {root} does not exist or is not a folder")
    if out.exists() and not args.overwrite:
        raise CLIError(f"output {out} already exists; pass --overwrite to replace it")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise CLIError(f"output {out} must not be inside the input folder {root}")
    geometry = None
    if args.config:
        from configs import get_preset
        try:
            d = get_preset(args.config).data
        except ValueError as e:
            raise CLIError(str(e)) from None
        geometry = (d.transform, tuple(d.image_size), tuple(d.resize))

    images, others = list_files(root)
    skipped = [(p, "not an image file (extension)") for p in others]
    partial = Path(f"{out}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = lmdb.open(str(partial), map_size=MAP_SIZE, subdir=True, lock=True, readahead=False, meminit=False)
    sources, n = [], 0
    jobs = [(str(p), geometry, args.quality, args.format) for p in images]
    try:
        pool = get_context("spawn").Pool(args.num_workers) if args.num_workers > 1 and jobs else None
        results = pool.imap(encode_one, jobs, chunksize=4) if pool else map(encode_one, jobs)
        txn = env.begin(write=True)
        for path, data, err in tqdm(results, total=len(jobs), desc="img2lmdb", unit="img"):
            if err is not None:
                skipped.append((Path(path), err))
                continue
            txn.put(str(n).zfill(7).encode(), data)
            sources.append(Path(path).relative_to(root).as_posix())
            n += 1
            if n % 256 == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(b"length", str(n).encode())
        txn.put(b"__sources__", json.dumps(sources).encode())
        txn.commit()
        if pool:
            pool.close()
            pool.join()
    finally:
        env.close()
    with open(partial / "skipped.txt", "w") as f:
        for p, why in skipped:
            f.write(f"{p}\t{why}\n")
    if n == 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise CLIError(f"no readable images under {root} ({len(skipped)} file(s) skipped)")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    print(f"wrote {n} images to {out}; skipped {len(skipped)} file(s)" +
          (f" (listed in {out / 'skipped.txt'})" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
