"""The machinery every family's config shares: nested dataclasses to and from JSON, dotted overrides checked against
each field's type, and the range checks of ``validate``."""

from __future__ import annotations

import ast
import copy
import dataclasses


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_fields(d: dict, cls):
    """A ``cls`` dataclass from a dict (inverse of to_dict); lists become tuples where the field default is a tuple;
    unknown keys are errors."""
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in fields:
            raise ValueError(f"unknown config field {cls.__name__}.{key}")
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING \
            else fields[key].default
        if dataclasses.is_dataclass(default):
            value = from_fields(value, type(default))
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _typed(value, default, name: str):
    """``value`` checked (and converted where lossless) against the type of the field's default."""
    def bad(kind):
        return ValueError(f"{name}={value!r}: expected {kind}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("True or False")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad("a list, e.g. [1, 2]")
        inner = type(default[0]) if default else None
        if inner in (int, float) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                                             (inner is float or isinstance(v, int)) for v in value):
            raise bad(f"a list of {'integers' if inner is int else 'numbers'}")
        value = tuple(value)
    return value


def value(cfg, path: str):
    """The value of the field at the dotted ``path``."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


FIXED_FIELDS = ("family",)  # what no override may change: the family is the config's class


def assign(cfg, path: str, value):
    """Set the field at the dotted ``path`` (e.g. 'training.batch_size') in place, checked against the field's type;
    ValueError names an unknown field or a value of the wrong type."""
    *parents, leaf = path.strip().split(".")
    obj = cfg
    for p in parents:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
            raise ValueError(f"{path}: no config section {p!r}")
        obj = getattr(obj, p)
    if not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
        raise ValueError(f"{path}: no config field {path!r}")
    if obj is cfg and leaf in FIXED_FIELDS:
        raise ValueError(f"{path}: the family is chosen by the preset (--config), not set")
    setattr(obj, leaf, _typed(value, getattr(obj, leaf), path.strip()))
    return cfg


def override(cfg, assignments):
    """A copy of ``cfg`` with ``section.field=value`` strings applied (the value parsed as a Python literal, else kept
    as a string; ``assign`` checks it)."""
    cfg = copy.deepcopy(cfg)
    for item in assignments:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        assign(cfg, path, value)
    return cfg


class Checks:
    """Range checks over a config's sections; each failure is a ValueError naming the field and what it accepts."""

    def __init__(self, cfg):
        self.cfg = cfg

    def check(self, ok, name, value, want):
        if not ok:
            raise ValueError(f"{name}={value!r}: {want}")

    def _values(self, section, names):
        for n in names:
            yield f"{section}.{n}", getattr(getattr(self.cfg, section), n)

    def at_least(self, section, low, *names):
        for name, v in self._values(section, names):
            self.check(v >= low, name, v, f"must be at least {low}")

    def above(self, section, low, *names):
        for name, v in self._values(section, names):
            self.check(v > low, name, v, f"must be above {low}")

    def unit(self, section, *names, closed=True):
        for name, v in self._values(section, names):
            self.check(0 <= v <= 1 if closed else 0 <= v < 1, name, v, f"must be in [0, 1{']' if closed else ')'}")

    def even(self, section, *names):
        for name, v in self._values(section, names):
            self.check(v >= 2 and v % 2 == 0, name, v, "must be an even number of at least 2")

    def one_of(self, section, name, choices):
        v = getattr(getattr(self.cfg, section), name)
        self.check(v in choices, f"{section}.{name}", v, f"choose {', '.join(choices)}")

    def positive_list(self, section, *names):
        for name, v in self._values(section, names):
            self.check(len(v) >= 1 and all(isinstance(x, int) and x >= 1 for x in v), name, v,
                       "must be a non-empty list of positive integers")

    def size(self, section, *names):
        for name, v in self._values(section, names):
            self.check(len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v), name, v,
                       "must be two positive integers [H, W]")
