"""The machinery under `reaemb_ray.config`: typed fields with declared constraints, checked generically.

A config field declares what it allows once, where it is defined:

    lr: float = setting(2e-4, gt=0)                              # a number with its range
    seeds: list[int] = setting([42], ge=0, nonempty=True, unique=True)   # ranges apply to every entry
    reward_weights: dict[str, float] = setting({...}, ge=0)      # ... or to every value of a mapping
    output_dir: str = setting("outputs", nonempty=True)

`check_settings` walks a config tree and enforces every declaration; `coerce` turns parsed YAML into the
annotated types (int -> float only; NaN and infinity are never a valid number); `yaml_load` reads YAML 1.2
numbers (`1e-4` is a float, not the string PyYAML's YAML 1.1 rules make of it) and refuses duplicate keys.
Every numeric field must carry a range (tests/test_config.py checks this for fields added later, too).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from reaemb_ray.errors import ConfigError


@dataclass(frozen=True)
class Range:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else ""
        high = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else ""
        return " and ".join(p for p in (low, high) if p) or "any number"

    def allows(self, v: float) -> bool:
        return not ((self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt)
                    or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt))


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, nonempty: bool = False, unique: bool = False, note: str = "") -> Any:
    """A dataclass field with the constraints `check_settings` enforces; `note` explains the value's meaning in
    error messages (e.g. "0 = all cores")."""
    meta: dict[str, Any] = {"nonempty": nonempty, "unique": unique, "note": note}
    if any(b is not None for b in (ge, gt, le, lt)):
        meta["range"] = Range(ge, gt, le, lt)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def is_numeric(tp: Any) -> bool:
    """Whether a field's annotation holds numbers (int, float, lists/dicts of them, optionally None)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return False
    if origin in (typing.Union, types.UnionType):
        return any(is_numeric(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return is_numeric(typing.get_args(tp)[0])
    if origin is dict:
        return is_numeric(typing.get_args(tp)[1])
    return tp in (int, float)


def _values(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, list):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return [(f".{k}", v) for k, v in value.items()]
    return [("", value)]


def check_settings(obj: Any, prefix: str = "") -> None:
    """Enforce every `setting(...)` declaration in the dataclass tree `obj`; raise one-line ConfigErrors."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_settings(value, key)
            continue
        meta = f.metadata
        note = f" ({meta['note']})" if meta.get("note") else ""
        if meta.get("nonempty") and not value:
            raise ConfigError(f"{key} must not be empty{note}")
        rng = meta.get("range")
        if rng is not None:
            for suffix, v in _values(value):
                if v is not None and not rng.allows(v):
                    raise ConfigError(f"{key}{suffix} must be {rng.describe()}, got {v!r}{note}")
        if meta.get("unique") and isinstance(value, list):
            seen = set()
            for v in value:
                if v in seen:
                    raise ConfigError(f"{key} lists {v!r} twice; give each entry once{note}")
                seen.add(v)


# ------------------------------------------------------------------------------------------- coercion


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            got = "null (an empty section)" if value is None else type(value).__name__
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {got}; give it fields or remove it")
        return build(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise ConfigError(f"{key}={value!r} is not allowed; use {describe(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}; write it as [a, b, ...]")
        (inner,) = typing.get_args(tp)
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}; write it as {{name: value, ...}}")
        kt, vt = typing.get_args(tp)
        return {coerce(k, kt, f"{key} key"): coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} must be {describe(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} is not a finite number; give a finite value")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}; quote it if it looks like a number")
        return value
    return value


def build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """`cls(**raw)` with every value coerced to its annotation; unknown keys are refused by name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(raw) - set(names))
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {where}; use one of the "
                          f"known keys: {', '.join(names)}")
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (1e-4, 1E5) and duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                  "keep one of them")
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)
