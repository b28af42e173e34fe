"""Training images from an LMDB written by img2lmdb.py (or the official one), or from a plain image folder.

Each item is (image, index): the image in [-1, 1] after the preset's official transform (docs/FAITHFULNESS.md,
"Data") and its index,
which is the row of the semantic-code table. The LMDB is opened read-only and lock-free, lazily in each process,
so the dataset is safe with DataLoader workers and DDP.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import lmdb
import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import functional as TF

from runtime.errors import UserError
from runtime.images import region_bounds, to_rgb, to_unit_tensor

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
        steps = [transforms.Resize(tuple(resize)), transforms.CenterCrop((h, w))]
    elif kind in ("resize", "resize_crop"):
        steps = [transforms.Resize(min(h, w)) if h == w else _Cover((h, w)), transforms.CenterCrop((h, w))]
    else:
        raise ValueError(f"unknown transform {kind!r}; choose nature, resize or resize_crop")
    chain = transforms.Compose(steps)

    def apply(img: Image.Image) -> Image.Image:
        return img if img.size == (w, h) else chain(img)

    return apply


class _Cover:
    """Resize (bilinear) so the image covers (h, w) with its aspect ratio kept."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        h, w = self.size
        s = max(h / img.height, w / img.width)
        return TF.resize(img, [max(h, round(img.height * s)), max(w, round(img.width * s))])


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
                env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False)
            except lmdb.Error as e:
                raise DataError(f"cannot open LMDB {self.path}: {e}") from None
            with env.begin() as txn:
                raw = txn.get(b"length")
            env.close()
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
        self._env, self._pid = None, None

    def __len__(self) -> int:
        return self.length

    def _txn_get(self, key: bytes):
        if self._env is None or self._pid != os.getpid():  # one environment per process (fork-safe)
            if self._env is not None:
                # Inherited through fork: read-only and lock-free, so closing only unmaps this process's view.
                self._env.close()
            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False)
            self._pid = os.getpid()
        with self._env.begin(buffers=False) as txn:
            return txn.get(key)

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
        """item = index -> (image (3, H, W), index); item = (index, (top, left, height, width)) -> (that region of
        the training image (3, height, width), zero where it reaches past the border, index): training then reads
        only the region (e.g. Patch-DM's window of the half-patch-padded image)."""
        if isinstance(item, (tuple, list)):
            index, region = item
            a = self._array(index)
            rows, cols, pad = region_bounds(*a.shape[:2], *region)  # only the region's pixels are converted
            return F.pad(to_unit_tensor(a[rows, cols]), pad), index
        return to_unit_tensor(self._array(item)), item

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"], state["_pid"] = None, None
        return state


def build_dataset(path, data_cfg) -> ImageDataset:
    """ImageDataset with a DataConfig's geometry."""
    return ImageDataset(path, data_cfg.image_size, data_cfg.transform, data_cfg.resize)
