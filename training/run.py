"""A run folder (runs/NAME/) while a trainer writes into it: created, locked, and not left behind by a failed start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from runtime.files import FolderLock, write_failed


class RunFolder:
    """Context manager around everything a trainer does to ``path``.

    On entry the folder is created (with its parents) and locked (runtime.files.FolderLock): a second process that
    enters the same folder while the first is in it stops with RunInUse and touches nothing. On a failure (an error
    or Ctrl-C) before the first checkpoint ``checkpoint`` exists, a folder this call created is removed again:
    everything in it was written by this call, and nothing can be resumed from it. ``main=False`` (a torchrun rank
    other than 0, which writes nothing) does none of this."""

    def __init__(self, path, checkpoint, main: bool = True):
        self.path, self.checkpoint, self.main = Path(path), Path(checkpoint), main
        self.created, self.lock = False, None

    def __enter__(self) -> Path:
        if not self.main:
            return self.path
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.path)
            self.created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise write_failed(self.path, e) from None
        # A refused lock leaves the folder alone even when this call made it: the holder is using it now.
        self.lock = FolderLock(self.path).acquire()
        return self.path

    def _remove_if_new(self) -> None:
        if self.created and self.path.exists() and not self.checkpoint.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def __exit__(self, kind, value, tb) -> bool:
        if self.main:
            if kind is not None:
                self._remove_if_new()
            self.lock.release()
        return False
