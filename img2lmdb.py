"""Pack a folder of images into an LMDB for training (official img2lmdb.py, fixed; FAITHFULNESS.md: Data).

    python img2lmdb.py --input photos/ --output data/nature.lmdb
    python img2lmdb.py --input photos/ --output data/nature512.lmdb --config nature   # store 512x1024 crops

The input folder is only read, never renamed or modified. Images are found recursively (jpg, jpeg, png, webp, bmp,
tif, tiff; any letter case), in sorted path order, with EXIF orientation applied and every mode converted to RGB.
Keys are '0000000'..N-1 (zero-padded to 7, as the official reader expects) plus 'length'; '__sources__' maps each
key to its source path. Unreadable files and non-images are skipped, counted and listed in <output>/skipped.txt.
The LMDB is written to a hidden folder beside <output> and renamed into place only when complete, so an interrupted
or failed run leaves nothing behind and an older LMDB intact. --overwrite replaces only an LMDB (a folder holding just
the files LMDB and this script write: data.mdb, lock.mdb, skipped.txt); any other file or folder is refused, and so
is an output that is, contains or lies inside the input folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from multiprocessing import get_context
from pathlib import Path

import lmdb
from PIL import Image, ImageOps
from tqdm import tqdm

from configs import preset_help
from dataset import IMAGE_EXTS, encode_raw, geometric_transform
from runtime.images import to_rgb
from runtime.cli import ArgumentParser, bounded, positive_int
from runtime.errors import CLIError, WriteError, children_ignore_sigint, run_cli
from runtime.files import make_parents, remove_empty, write_failed

MAP_SIZE = 1 << 40  # Faithful: 1 TiB address space (sparse on disk), as the official script
LMDB_FILES = ("data.mdb", "lock.mdb", "skipped.txt")  # all that LMDB and this script write in an output folder


def encode_one(job):
    """Worker: (path, geometry or None, quality, fmt) -> (path, encoded bytes or None, error or None)."""
    path, geometry, quality, fmt = job
    try:
        with Image.open(path) as im:
            im.load()
            img = to_rgb(ImageOps.exif_transpose(im))
        if geometry is not None:  # the preset's training geometry, applied once at write time (FAITHFULNESS.md: Data)
            img = geometric_transform(*geometry)(img)
        if fmt == "raw":
            return path, encode_raw(img), None
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality) if fmt == "jpeg" else img.save(buf, format="PNG")
        return path, buf.getvalue(), None
    except Exception as e:  # one bad file must never stop the run
        return path, None, f"{type(e).__name__}: {e}".splitlines()[0]


# Deviation: the official script renamed the input files in place and keyed images by file stem (FAITHFULNESS.md:
# Official bugs and gaps); here
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


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(__doc__)
    ap.add_argument("--input", "-i", required=True, help="folder of images (searched recursively; never modified)")
    ap.add_argument("--output", "-o", required=True, help="LMDB folder to create")
    ap.add_argument("--num_workers", "-n", type=positive_int, default=min(12, os.cpu_count() or 1),
                    help="decoding processes (default: min(12, cores))")
    ap.add_argument("--config", default=None,
                    help="store the images at a preset's training geometry (e.g. nature: resize 512x1280, centre crop "
                         "512x1024); default: keep the original resolution. " + preset_help())
    ap.add_argument("--quality", type=bounded(int, 1, "an integer", 100), default=100,
                    help="JPEG quality of the stored images (official: 100)")
    ap.add_argument("--format", choices=["jpeg", "png", "raw"], default="jpeg",
                    help="jpeg (official), png (lossless), or raw: uncompressed RGB, no decoding when training and "
                         "only the training window is read (use with --config; 1.5 MB per 512x1024 image)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing LMDB written by this script (nothing else is ever replaced)")
    return ap


def check_output(out: Path, root: Path, overwrite: bool) -> bool:
    """Refuse every output that could cost the user a file; True when an existing LMDB is to be replaced."""
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise CLIError(f"output {out} must not be the input folder {root} or inside it")
    if o in r.parents:
        raise CLIError(f"output {out} contains the input folder {root}; choose an output outside it")
    if out.is_symlink():
        raise CLIError(f"output {out} is a symbolic link; give the folder itself or another name")
    if not out.exists():
        return False
    if not out.is_dir():
        raise CLIError(f"output {out} is a file, not an LMDB folder; choose another --output")
    if not overwrite:
        raise CLIError(f"output {out} already exists; pass --overwrite to replace it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in LMDB_FILES or not p.is_file() or p.is_symlink())
    if foreign or not (out / "data.mdb").is_file():
        what = f"it holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}" if foreign else \
            "it has no data.mdb"
        raise CLIError(f"output {out} is not an LMDB written by img2lmdb.py ({what}); --overwrite only replaces such "
                       "an LMDB: choose another --output")
    return True


def _workers(n: int, jobs: list):
    """A pool of decoding processes that never see Ctrl-C (the main process handles it and stops them), or None."""
    if n <= 1 or not jobs:
        return None
    with children_ignore_sigint():
        return get_context("spawn").Pool(n)


def pack(jobs: list, folder: Path, root: Path, num_workers: int) -> tuple:
    """Encode and write every job into an LMDB in ``folder``; returns (images written, [(path, why) skipped])."""
    env = lmdb.open(str(folder), map_size=MAP_SIZE, subdir=True, lock=True, readahead=False, meminit=False)
    pool = _workers(num_workers, jobs)
    sources, skipped, n = [], [], 0
    try:
        results = pool.imap(encode_one, jobs, chunksize=4) if pool else map(encode_one, jobs)
        txn = env.begin(write=True)
        with tqdm(total=len(jobs), desc="img2lmdb", unit="img") as bar:  # closed (its line ended) on any exit
            for path, data, err in results:
                bar.update(1)
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
    finally:
        if pool:
            pool.terminate()
            pool.join()
        env.close()
    return n, skipped


def swap_in(new: Path, out: Path, replace: bool) -> None:
    """Move the finished LMDB ``new`` to ``out``; an old LMDB there is moved aside first and deleted last, so a
    failure at any point leaves either the old or the new one complete at ``out``."""
    if not replace:
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    for name in LMDB_FILES:
        (old / name).unlink(missing_ok=True)
    old.rmdir()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    root, out = Path(args.input), Path(args.output)
    if not root.is_dir():
        raise CLIError(f"input folder {root} does not exist or is not a folder")
    replace = check_output(out, root, args.overwrite)
    geometry = None
    if args.config:
        from configs import get_preset
        try:
            d = get_preset(args.config).data
        except ValueError as e:
            raise CLIError(str(e)) from None
        geometry = (d.transform, tuple(d.image_size), tuple(d.resize))
    images, others = list_files(root)
    if not images:
        raise CLIError(f"no image files under {root} ({len(others)} other file(s)); nothing written")
    jobs = [(str(p), geometry, args.quality, args.format) for p in images]

    created = make_parents(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:
        remove_empty(created)
        raise write_failed(out, e) from None
    try:
        n, skipped = pack(jobs, tmp, root, args.num_workers)
        skipped = [(p, "not an image file (extension)") for p in others] + skipped
        with open(tmp / "skipped.txt", "w") as f:
            for p, why in skipped:
                f.write(f"{p}\t{why}\n")
        if n == 0:
            raise CLIError(f"no readable images under {root} ({len(skipped)} file(s) skipped); nothing written")
        swap_in(tmp, out, replace)
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        raise KeyboardInterrupt(f"nothing written, {out} " + ("unchanged" if replace else "not created")) from None
    except (lmdb.Error, OSError) as e:  # a full disk: LMDB reports it as an I/O error of its own
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise WriteError(f"cannot write the LMDB {out}: {reason} (is the disk full?); nothing written, {out} "
                         + ("unchanged" if replace else "not created")) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        raise
    print(f"wrote {n} images to {out}; skipped {len(skipped)} file(s)" +
          (f" (listed in {out / 'skipped.txt'})" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
