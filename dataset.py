"""Training images from an LMDB written by img2lmdb.py (or the official one), or from a plain image folder.

Each item is (image, index): the image in [-1, 1] after the preset's official transform (docs/FAITHFULNESS.md,
"Data") and its index,
which is the row of the semantic-code table. The LMDB is opened read-only and lock-free, lazily in each process,
so the dataset is safe with DataLoader workers and DDP.
"""

from __future__ import annotations

import io
import os
import weakref
from pathlib import Path

import lmdb
import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from runtime.errors import UserError
from runtime.images import View, region_bounds, to_rgb, to_unit_tensor

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
RAW_MAGIC = b"PDMRAW1\0"  # img2lmdb.py --format raw: magic, uint32 height, uint32 width, then H*W*3 RGB bytes


def encode_raw(img: Image.Image) -> bytes:
    """Uncompressed storage: no decode at training time, and a window is read by slicing rows."""
    a = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return RAW_MAGIC + np.array(a.shape[:2], dtype="<u4").tobytes() + a.tobytes()


def raw_array(data) -> np.ndarray | None:
    """(H, W, 3) uint8 view of a raw record, or None for an encoded image."""
    if bytes(data[:8]) != RAW_MAGIC:
        return None
    h, w = np.frombuffer(data, dtype="<u4", count=2, offset=8)
    return np.frombuffer(data, dtype=np.uint8, count=int(h) * int(w) * 3, offset=16).reshape(int(h), int(w), 3)


class DataError(UserError):
    """The data path is missing or damaged (one line for the user, also when raised in a DataLoader worker)."""


def geometric_transform(kind: str, image_size: tuple, resize: tuple):
    """PIL -> PIL geometry of a preset (FAITHFULNESS.md: Data).

    nature: exact resize to ``resize`` (512x1280), then centre crop ``image_size`` (512x1024).
    resize / resize_crop: shorter side to the target (torchvision Resize(S), bilinear), then centre crop.
    Deviation: the official 'resize' datasets (FFHQ, LHQ) have no crop because their images are square; the crop
    makes non-square user images usable and is the identity for square ones. An image already at ``image_size``
    (e.g. stored so by img2lmdb.py --config) is passed through.
    """
    h, w = image_size
    if kind == "nature":
        steps = [lambda img: bilinear(img, tuple(resize)), lambda img: center_crop(img, (h, w))]
    elif kind in ("resize", "resize_crop"):
        first = (lambda img: shorter_side(img, h)) if h == w else (lambda img: cover(img, (h, w)))
        steps = [first, lambda img: center_crop(img, (h, w))]
    else:
        raise ValueError(f"unknown transform {kind!r}; choose nature, resize or resize_crop")

    def apply(img: Image.Image) -> Image.Image:
        if img.size == (w, h):
            return img
        for step in steps:
            img = step(img)
        return img

    return apply


# The geometry in PIL, as torchvision's Resize / CenterCrop compute it on PIL images (tests/test_data.py checks it
# pixel for pixel against torchvision), without importing torchvision: its package pulls in torch._dynamo, seconds
# that every script's --help and every img2lmdb worker would pay.

def bilinear(img: Image.Image, hw: tuple) -> Image.Image:
    """Resize to (h, w), bilinear (PIL's, antialiased)."""
    return img.resize((hw[1], hw[0]), Image.BILINEAR)


def shorter_side(img: Image.Image, size: int) -> Image.Image:
    """torchvision Resize(size): the shorter side to ``size``, the longer one int(size * long / short)."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    return bilinear(img, (new_long, size) if w <= h else (size, new_long))


def cover(img: Image.Image, hw: tuple) -> Image.Image:
    """Resize (bilinear) so the image covers (h, w) with its aspect ratio kept."""
    h, w = hw
    s = max(h / img.height, w / img.width)
    return bilinear(img, (max(h, round(img.height * s)), max(w, round(img.width * s))))


def center_crop(img: Image.Image, hw: tuple) -> Image.Image:
    """torchvision CenterCrop(hw): the centre (h, w), offsets int(round(d / 2)); a side shorter than the crop is
    padded with black, d // 2 before it."""
    h, w = hw
    dh, dw = img.height - h, img.width - w
    top = int(round(dh / 2.0)) if dh >= 0 else -((-dh) // 2)
    left = int(round(dw / 2.0)) if dw >= 0 else -((-dw) // 2)
    return img.crop((left, top, left + w, top + h))


_ENVS = weakref.WeakValueDictionary()  # (real path, process id, data.mdb inode) -> environment


def lmdb_env(path):
    """The read-only, lock-free environment of an LMDB, shared by every dataset on it in this process (the lmdb
    package refuses to open one environment twice in a process) and closed when the last of them is gone. A process
    started by fork opens its own; an LMDB replaced on disk (a new data.mdb) is opened anew."""
    real = os.path.realpath(path)
    key = (real, os.getpid(), os.stat(os.path.join(real, "data.mdb")).st_ino)
    env = _ENVS.get(key)
    if env is None:
        for other in [k for k in list(_ENVS.keys()) if k[0] == real]:
            # Inherited through fork (or the LMDB was replaced): read-only and lock-free, so closing it only unmaps
            # this process's view, and lets this process open the path again.
            old = _ENVS.pop(other, None)
            if old is not None:
                old.close()
        env = lmdb.open(real, readonly=True, lock=False, readahead=False, meminit=False)
        _ENVS[key] = env
    return env


def is_lmdb(path) -> bool:
    return (Path(path) / "data.mdb").is_file()


class ImageDataset(Dataset):
    """Images of an LMDB (keys 0..N-1 zero-padded to 7, plus 'length') or of a folder (sorted, recursive)."""

    def __init__(self, path, image_size=(512, 1024), transform: str = "nature", resize=(512, 1280)):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise DataError(f"data path {self.path} does not exist")
        self.lmdb = is_lmdb(self.path)
        if self.lmdb:
            try:
                env = lmdb_env(self.path)
            except lmdb.Error as e:
                raise DataError(f"cannot open LMDB {self.path}: {e}") from None
            with env.begin() as txn:
                raw = txn.get(b"length")
            del env  # each process opens its own when it reads (a DataLoader worker forked from this one)
            if raw is None:
                raise DataError(f"LMDB {self.path} has no 'length' key; build it with img2lmdb.py")
            self.length, self.files = int(raw), None
        elif os.path.isdir(self.path):
            self.files = sorted((p for p in Path(self.path).rglob("*") if p.suffix.lower() in IMAGE_EXTS),
                                key=lambda p: p.relative_to(self.path).as_posix())
            self.length = len(self.files)
        else:
            raise DataError(f"data path {self.path} is neither an LMDB folder nor an image folder")
        if self.length == 0:
            raise DataError(f"data path {self.path} holds no images")
        self.image_size = tuple(image_size)
        self.geometry = geometric_transform(transform, self.image_size, tuple(resize))
        self._env = None  # this dataset's hold on the shared environment (per process)

    def __len__(self) -> int:
        return self.length

    def _txn_get(self, key: bytes):
        if self._env is None or self._env[0] != os.getpid():
            self._env = (os.getpid(), lmdb_env(self.path))
        with self._env[1].begin(buffers=False) as txn:
            return txn.get(key)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = None  # environments do not travel to other processes
        return state

    def _record(self, index: int) -> bytes:
        data = self._txn_get(str(index).zfill(7).encode())
        if data is None:
            raise DataError(f"LMDB {self.path} has no image under key {str(index).zfill(7)} (length "
                            f"{self.length}); rebuild it with img2lmdb.py")
        return data

    def load(self, index: int) -> Image.Image:
        """The stored image as RGB, without the training transform (initialize.py uses CLIP's own)."""
        if self.lmdb:
            data = self._record(index)
            raw = raw_array(data)
            if raw is not None:
                return Image.fromarray(raw)
            src = io.BytesIO(data)
            where = f"{self.path}[{index}]"
        else:
            src = where = self.files[index]
        try:
            with Image.open(src) as im:
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
        except Exception as e:
            raise DataError(f"cannot decode image {where}: {e}") from None

    def stored_size(self, index: int) -> tuple:
        """(H, W) of the stored image (EXIF orientation applied), read from its header without decoding it."""
        if self.lmdb:
            data = self._record(index)
            raw = raw_array(data)
            if raw is not None:
                return raw.shape[:2]
            src, where = io.BytesIO(data), f"{self.path}[{index}]"
        else:
            src = where = self.files[index]
        try:
            with Image.open(src) as im:
                w, h = im.size
                turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the axes
        except Exception as e:
            raise DataError(f"cannot decode image {where}: {e}") from None
        return (w, h) if turned else (h, w)

    def _array(self, index: int) -> np.ndarray:
        """The training image (after the geometry) as (H, W, 3) uint8; raw records at the training size are not
        copied or decoded."""
        if self.lmdb:
            raw = raw_array(self._record(index))
            if raw is not None and raw.shape[:2] == self.image_size:
                return raw
        return np.asarray(self.geometry(self.load(index)))

    def __getitem__(self, item):
        """item = index -> (image (3, H, W), index); item = (index, view) -> (what the runtime.images.View shows of
        the training image: a region (top, left, height, width), zero where it reaches past the border, optionally
        resized and mirrored, index): training then reads only the region (Patch-DM's window of the
        half-patch-padded image; the pyramid autoencoder's random crops)."""
        if isinstance(item, (tuple, list)):
            index, view = item[0], View(*item[1])
            a = self._array(index)
            rows, cols, pad = region_bounds(*a.shape[:2], *view[:4])  # only the region's pixels are converted
            x = F.pad(to_unit_tensor(a[rows, cols]), pad)
            if view.out is not None and tuple(view.out) != tuple(x.shape[-2:]):
                x = F.interpolate(x[None], size=tuple(view.out), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
            return (x.flip(-1) if view.flip else x), index
        return to_unit_tensor(self._array(item)), item



def build_dataset(path, data_cfg) -> ImageDataset:
    """ImageDataset with a DataConfig's geometry."""
    return ImageDataset(path, data_cfg.image_size, data_cfg.transform, data_cfg.resize)
