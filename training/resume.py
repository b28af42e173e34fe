"""Resuming a run: what may change when the same command is run again (the loop restores the state itself)."""

from __future__ import annotations

from configs import from_dict, to_dict
from runtime.errors import CLIError


def config_changes(saved, now) -> list:
    """[(dotted field, saved value, new value)] for every field in which two configs differ."""
    def walk(a, b, prefix):
        out = []
        for k in sorted(set(a) | set(b)):
            va, vb = a.get(k), b.get(k)
            if isinstance(va, dict) and isinstance(vb, dict):
                out += walk(va, vb, f"{prefix}{k}.")
            elif va != vb and not (isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple))
                                   and list(va) == list(vb)):
                out.append((f"{prefix}{k}", va, vb))
        return out

    return walk(to_dict(saved), to_dict(now), "")


def _within(name: str, sections) -> bool:
    return any(name == s or name.startswith(s + ".") for s in sections)


def _described(changes) -> str:
    return "; ".join(f"{n}={a!r} in the checkpoint, {b!r} now" for n, a, b in changes[:6])


# Never changed by resuming: what the network is and what it is trained on.
FIXED_ON_RESUME = ("name", "model", "data.image_size")


def compatible_or_raise(ckpt: dict, cfg, path, free=None, allowed=()) -> None:
    """Refuse to resume a checkpoint (a v2 dict) of another family, architecture or image size, naming the fields.
    With ``free`` (sections or fields that may change: how long and how the run executes), every other change of
    meaning (batch size, precision, learning rate, seed, ...) is refused too, unless its field is in ``allowed``."""
    if ckpt.get("family") != cfg.family:
        raise CLIError(f"{path} is a checkpoint of the {ckpt.get('family')} family, not {cfg.family}; use another "
                       "--name")
    changes = config_changes(from_dict(ckpt["config"]), cfg)  # fields added since the checkpoint take defaults
    fixed = [c for c in changes if _within(c[0], FIXED_ON_RESUME)]
    if fixed:
        raise CLIError(f"{path} was trained with other settings ({_described(fixed)}); use the same settings "
                       "or another --name")
    if free is None:
        return
    meaning = [c for c in changes if not _within(c[0], free) and not _within(c[0], allowed)]
    if meaning:
        names = ",".join(n for n, _, _ in meaning)
        raise CLIError(f"resuming {path} with other settings ({_described(meaning)}) would change what the run "
                       f"means; leave them out to continue as before, pass --allow_change {names} to change them, "
                       "or use another --name")

