"""Run configs: YAML files merged over dataclass defaults, then dotted ``key=value`` overrides.

Every launcher declares its config as a dataclass tree and calls :func:`parse_config`. The merge is
strict: an unknown key, a value of the wrong type or a missing file raises :class:`ConfigError`
before any work starts, with one line naming the key, the value and what is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from data.files import atomic_write_text
from data.schema import ConfigError, build, check_ranges, get_dotted, to_dict

__all__ = [
    "RUN_RANGES",
    "ConfigError",
    "RunConfig",
    "check_paths",
    "check_ranges",
    "get_dotted",
    "load_yaml",
    "parse_config",
    "save_config",
    "to_dict",
]

T = TypeVar("T")


def parse_config(cls: type[T], argv: list[str]) -> T:
    """Build ``cls`` from ``[--config FILE] [key=value ...]`` (the same grammar for every script)."""
    config_file: str | None = None
    overrides: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config":
            if not args:
                raise ConfigError("--config needs a YAML file path")
            config_file = args.pop(0)
        elif arg.startswith("--config="):
            config_file = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}; expected --config FILE or key=value")
    values: dict[str, Any] = {}
    if config_file is not None:
        values = load_yaml(config_file)
    for item in overrides:
        key, raw = item.split("=", 1)
        if not all(part.isidentifier() for part in key.strip().split(".")):
            raise ConfigError(f"malformed override {item!r}; expected dotted_key=value, e.g. optim.lr=1e-4")
        _set_dotted(values, key.strip(), _parse_scalar(raw))
    return build(cls, values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: {str(path)!r} not found; expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config: {str(path)!r} is not valid UTF-8 YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {str(path)!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _parse_scalar(raw: str) -> Any:
    raw = raw.strip()
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section; cannot set {key!r}")
        node = child
    node[parts[-1]] = value


def check_paths(cfg: Any, files: list[str] = (), dirs: list[str] = ()) -> None:
    """Raise :class:`ConfigError` naming the first key whose (non-empty) path does not exist."""
    for kind, keys, exists in (("file", files, Path.is_file), ("folder", dirs, Path.is_dir)):
        for key in keys:
            value = get_dotted(cfg, key)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v and not exists(Path(v)):
                    raise ConfigError(f"config key {key!r}: {v!r} is not an existing {kind}")


@dataclass
class RunConfig:
    """The keys every launcher's config has at its top level (its own sections come after them)."""

    output_dir: str = ""  # empty: a fresh timestamped directory under runs/
    max_steps: int = 1000
    seed: int = 0
    resume: Literal["auto", "never"] = "auto"  # auto: continue the run in output_dir (same config)
    overwrite: bool = False  # replace the run already in output_dir
    report_to: str = "none"  # Accelerate trackers beside metrics.jsonl: tensorboard, wandb, ... (comma-separated)
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu_threads: int = 0  # torch threads per process on a CPU; 0: the machine's cores shared among processes
    log_every: int = 10
    save_every: int = 125  # training state every N steps, and at the end; 0: only on SIGTERM / Ctrl-C
    keep_states: int = 2


RUN_RANGES = {
    "max_steps": (">=", 1),
    "grad_accum": (">=", 1),
    "cpu_threads": (">=", 0),
    "log_every": (">=", 1),
    "save_every": (">=", 0),
    "keep_states": (">=", 1),
}
