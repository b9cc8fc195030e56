"""Config dataclasses built from plain data: every key and type checked, ranges checked by rule.

Data, model and run configs are dataclass trees; :func:`build` makes one from a nested dict (a YAML
file, an export's JSON) and raises :class:`ConfigError` naming the dotted key of the first problem.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


def build(cls: type[T], values: dict[str, Any], prefix: str = "", base: Any = None) -> T:
    """Instantiate dataclass ``cls`` from a nested dict, checking every key and type.

    Keys not given keep the value in ``base`` (an instance of ``cls``) or else the field default; a
    nested dataclass merges over its own default instance, so overriding one key of a section keeps
    the section's other defaults even when they differ from the nested class's defaults.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            given = next(iter(flatten(value, f"{dotted}."))) if isinstance(value, dict) and value else None
            raise ConfigError(
                f"unknown config key {dotted!r}"
                + (f" (given as {given!r})" if given else f" (value {value!r})")
                + f"; valid keys here: {', '.join(sorted(fields))}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            nested_base = getattr(base, key) if base is not None else _field_default(fields[key])
            kwargs[key] = build(tp, value, prefix=f"{dotted}.", base=nested_base)
        else:
            kwargs[key] = _coerce(tp, value, dotted)
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return f.default
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert the few lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail() -> ConfigError:
        return ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail()
        return build(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                continue
        raise fail()
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key {key!r}: expected {len(args)} items, got {value!r}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail()
    return value


# A range rule: (">=", 1), (">", 0) or ("in", 0, 1) (both ends included).
Rule = tuple


def get_dotted(cfg: Any, key: str) -> Any:
    """``cfg.a.b`` for ``key = "a.b"``; a dict at any level is indexed instead."""
    for part in key.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def _within(v: float, rule: Rule) -> bool:
    op, *bounds = rule
    if not math.isfinite(v):
        return False
    if op == ">=":
        return v >= bounds[0]
    if op == ">":
        return v > bounds[0]
    return bounds[0] <= v <= bounds[1]


def check_ranges(cfg: Any, rules: dict[str, Rule], prefix: str = "") -> None:
    """Raise :class:`ConfigError` naming the first key (a number or a list of them) outside its rule."""
    for key, rule in rules.items():
        value = get_dotted(cfg, key)
        if not all(_within(v, rule) for v in (value if isinstance(value, (list, tuple)) else [value])):
            expected = f"in [{rule[1]}, {rule[2]}]" if rule[0] == "in" else f"{rule[0]} {rule[1]}"
            raise ConfigError(f"config key {prefix + key!r}: {value!r} is out of range; expected {expected}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level of dotted keys (``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
