"""Exports: what inference and evaluation load.

An export is a directory::

    model.safetensors   weights (loading never unpickles code)
    export.json         {"kind", "model": {"name", "overrides"}, "preprocess": {...},
                         "tokenizer": file name or null, "fingerprint", "extra": {...}}
    <tokenizer file>    copied beside the weights

The directory is written to a temporary sibling and renamed into place, so a reader never sees
half an export. ``fingerprint`` hashes the weights and configs: indexes built from an export record
it and refuse queries embedded by another.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from data.rundir import atomic_path

WEIGHTS = "model.safetensors"
META = "export.json"


class ExportError(ValueError):
    """An export directory that is missing or unreadable."""


@dataclass
class Export:
    kind: str
    model_name: str
    overrides: dict[str, Any]
    preprocess: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    fingerprint: str
    tokenizer_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_export(
    path: str | Path,
    *,
    kind: str,
    model_name: str,
    overrides: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    preprocess: dict[str, Any],
    tokenizer_file: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an export directory atomically; returns its path."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS))
        tok_name = None
        if tokenizer_file is not None:
            tok_name = Path(tokenizer_file).name
            shutil.copyfile(tokenizer_file, tmp / tok_name)
        meta = {
            "kind": kind,
            "model": {"name": model_name, "overrides": overrides},
            "preprocess": preprocess,
            "tokenizer": tok_name,
            "extra": extra or {},
        }
        meta["fingerprint"] = _fingerprint(tmp / WEIGHTS, meta, tmp / tok_name if tok_name else None)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_export(path: str | Path, kind: str | None = None) -> Export:
    """Read an export directory; ``kind`` (e.g. ``"vatt"``) is checked when given."""
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise ExportError(f"export {str(path)!r} not found: expected a directory with {META} and {WEIGHTS}")
    try:
        meta = json.loads((path / META).read_text())
        state_dict = load_file(str(path / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing to the user
        raise ExportError(f"export {str(path)!r} is unreadable: {type(exc).__name__}: {exc}") from None
    if kind is not None and meta.get("kind") != kind:
        raise ExportError(f"export {str(path)!r} holds a {meta.get('kind')!r} model, expected {kind!r}")
    tok = meta.get("tokenizer")
    return Export(
        kind=meta["kind"],
        model_name=meta["model"]["name"],
        overrides=meta["model"]["overrides"],
        preprocess=meta["preprocess"],
        state_dict=state_dict,
        fingerprint=meta["fingerprint"],
        tokenizer_path=path / tok if tok else None,
        extra=meta.get("extra", {}),
    )


def _fingerprint(weights: Path, meta: dict[str, Any], tokenizer: Path | None) -> str:
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps({k: meta[k] for k in ("kind", "model", "preprocess")}, sort_keys=True).encode())
    if tokenizer is not None:
        h.update(tokenizer.read_bytes())
    return h.hexdigest()[:16]
