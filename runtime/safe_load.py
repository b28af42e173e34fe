"""Reading checkpoint files without executing code from them.

``read_checkpoint`` first tries ``torch.load(weights_only=True)``. Official Patch-DM checkpoints are
pytorch-lightning 1.4 pickles whose metadata names classes users do not have (``AttributeDict``, the
``ModelCheckpoint`` callback used as a dict key, the AMP scaler state); for those it falls back to a restricted
unpickler that resolves only tensor-rebuilding functions and plain containers, and turns every other global into
an inert placeholder. Nothing named by the file is imported or called. Tensors come back intact; metadata that
needed a foreign class comes back as placeholders, which is fine because only tensors are used.
"""

from __future__ import annotations

import os
import pickle
import types

import torch

from .errors import CheckpointError


class _Placeholder(dict):
    """Inert stand-in for a class or function the checkpoint names but this project does not trust."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__
    _qualname = "?"

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs, self.state, self.items_ = args, kwargs, None, []

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items_.append(item)

    def extend(self, items):
        self.items_.extend(items)

    def __repr__(self):
        return f"<placeholder for {self._qualname}>"


_PLACEHOLDERS: dict = {}


def _placeholder(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(f"Placeholder[{key}]", (_Placeholder,), {"_qualname": key})
    return _PLACEHOLDERS[key]


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch.nn.parameter", "Parameter"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _placeholder(module, name)


def _restricted_pickle_module() -> types.ModuleType:
    mod = types.ModuleType("patchdm_restricted_pickle")
    mod.Unpickler = _RestrictedUnpickler
    mod.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()
    mod.__version__ = "restricted"
    return mod


def read_checkpoint(path, trust_pickle: bool = False):
    """Load a checkpoint file onto the CPU without running code from it (see module docstring).

    Deviation: the official scripts unpickle checkpoints unrestricted, through pytorch-lightning.

    trust_pickle=True uses plain ``torch.load(weights_only=False)``: only for files you made yourself.
    Raises CheckpointError with a one-line reason for missing, truncated or non-PyTorch files.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # Foreign metadata classes: fall back to the restricted unpickler (no imports, no calls).
            return torch.load(path, map_location="cpu", weights_only=False,
                              pickle_module=_restricted_pickle_module())
    except CheckpointError:
        raise
    except Exception as e:  # torch raises many types for damaged files (RuntimeError, EOFError, IndexError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path!r} is not a readable PyTorch file (truncated or corrupt?): "
                              f"{first}") from e


def tensor_dict(d, what: str) -> dict:
    """Check that a mapping holds only tensors (placeholders mean the file needs arbitrary unpickling)."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{what} is a {type(d).__name__}, not a dict of tensors")
    bad = [k for k, v in d.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what} holds non-tensor entries ({', '.join(map(str, bad[:5]))}); the file needs "
                              "arbitrary unpickling: pass trust_pickle=True only if you made it yourself")
    return dict(d)
