"""Writing results safely: atomic files (checkpoints, text, PNGs), JSONL logs, refusals to replace, and the lock of a
run folder.

Every writer here either leaves its complete result or nothing: it writes a temporary file beside the target and
renames it into place, so a kill, a full disk or a missing permission never leaves a torn file, and a file it
replaces stays intact until the new one is complete. A failed write raises ``WriteError`` naming the path and the
reason ("No space left on device"), which the command lines print as one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from .errors import CLIError, RunInUse, WriteError

try:
    import fcntl
except ImportError:  # not on Windows: run folders are then not locked
    fcntl = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_failed(path, e: BaseException) -> WriteError:
    """The one-line WriteError for a write to ``path`` that raised ``e``."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
    return WriteError(f"cannot write {os.fspath(path)}: {reason}")


class _Recorder(io.RawIOBase):
    """A writable file that remembers the OSError of a failed write: torch.save reports a full disk as an
    internal 'unexpected pos' RuntimeError, and this keeps the real reason."""

    def __init__(self, f):
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise


@contextlib.contextmanager
def replacing(path, suffix: str):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``; on any failure it is
    removed and ``path`` is left as it was (write failures become WriteError)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result gets the usual permissions
    except OSError as e:
        raise write_failed(path, e) from None
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # again: a writer may have made the file anew (safetensors does, private)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, (OSError, WriteError)):
            raise e if isinstance(e, WriteError) else write_failed(path, e) from None
        raise


def _fsync(tmp) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a kill or a full disk never leaves a torn
    file, and the file it replaces stays intact until then."""
    with replacing(path, ".pt") as tmp:
        with open(tmp, "wb", buffering=0) as f:
            rec = _Recorder(f)
            try:
                torch.save(obj, rec)
            except RuntimeError as e:
                raise write_failed(path, rec.error or e) from None
        _fsync(tmp)


def atomic_write_text(text: str, path) -> None:
    with replacing(path, ".txt") as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_savez(path, **arrays) -> None:
    """np.savez, atomically (the name keeps its own suffix)."""
    with replacing(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def check_new_file(path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse (CLIError) an output file that exists, unless ``overwrite``; a folder in its place is always refused.
    Called before any work starts, so a refused command has done nothing."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CLIError(f"output {path} is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise CLIError(f"output {path} already exists; pass {flag} to replace it")


def make_parents(path) -> list:
    """Create the missing parent folders of ``path``; returns those created (outermost first) so that a failed
    command can remove them again with ``remove_empty``."""
    missing, parent = [], os.path.dirname(os.path.abspath(os.fspath(path)))
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise write_failed(d, "File exists") from None
            continue  # made meanwhile by another process (the ranks of torchrun): not ours to remove
        except OSError as e:
            raise write_failed(d, e) from None
        created.append(d)
    return created


def remove_empty(folders) -> None:
    """Remove the given folders, innermost first, where they are empty (folders this command created)."""
    for d in reversed(list(folders)):
        try:
            os.rmdir(d)
        except OSError:
            pass


class JsonlLog:
    """Append one JSON object per line; each row gets a wall-clock time stamp. A row that cannot be written whole
    (a full disk) is taken back, so the log never holds half a line."""

    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)

    def write(self, **row) -> None:
        line = (json.dumps({"time": round(time.time(), 3), **row}) + "\n").encode()
        with open(self.path, "ab") as f:
            size = f.tell()
            try:
                f.write(line)
                f.flush()
            except OSError as e:
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise write_failed(self.path, e) from None


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, rounded as (x + 1) / 2 * 255."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    """One image (3, H, W) in [-1, 1] as the PIL image every PNG of the project is written from."""
    return Image.fromarray(to_uint8(x))


def save_png(x: torch.Tensor, path) -> None:
    """Write one image (3, H, W) in [-1, 1] as PNG, atomically."""
    with replacing(path, ".png") as tmp:
        to_pil(x).save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path, ncol: int | None = None, pad: int = 2) -> None:
    """Write a batch (B, 3, H, W) in [-1, 1] as one PNG grid with white gutters."""
    b, _, h, w = images.shape
    ncol = ncol or min(b, 4)
    nrow = (b + ncol - 1) // ncol
    grid = torch.ones(3, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            images[i].detach().float().cpu()
    save_png(grid, path)


LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive lock on a folder (``flock`` on FOLDER/.lock), held while one process writes into it: a second
    process that asks for it gets RunInUse at once and touches nothing. The operating system releases it when the
    holder exits, however it exits, so a crashed run never leaves a stale lock."""

    def __init__(self, folder, what: str = "run folder"):
        self.folder, self.what, self._f = os.fspath(folder), what, None

    def acquire(self) -> "FolderLock":
        if fcntl is None:
            return self
        path = os.path.join(self.folder, LOCK_NAME)
        try:
            self._f = open(path, "a+")
        except OSError as e:
            raise write_failed(path, e) from None
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            self._f = None
            raise RunInUse(f"{self.what} {self.folder} is in use by another process (it holds {path}); wait for it "
                           "to finish or use another --name") from None
        return self

    def release(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
