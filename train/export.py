"""Exports: what inference and evaluation load.

An export is a directory::

    model.safetensors   weights (loading never unpickles code)
    export.json         {"kind", "model": {"name", "overrides"}, "preprocess": {...},
                         "tokenizer": file name or null, "fingerprint", "extra": {...}}
    <tokenizer file>    copied beside the weights

The directory is written to a temporary sibling and renamed into place, so a reader never sees
half an export; an existing folder at the path is only replaced when this project wrote it
(:func:`data.files.check_output_path`). ``fingerprint`` hashes the weights and configs: indexes built
from an export record it and refuse queries embedded by another. Reading checks every field of
``export.json`` and raises :class:`ExportError` with one line naming the file and what was wrong.
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

from data.files import atomic_path, check_output_path

WEIGHTS = "model.safetensors"
META = "export.json"


class ExportError(ValueError):
    """An export directory that is missing, unreadable or malformed; the message is one line."""


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
    """Write an export directory atomically; returns its path.

    Refuses (:class:`data.files.OutputPathError`) before any work when ``path`` is an existing file or a
    folder this project did not write.
    """
    path = check_output_path(path, "dir")
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
    meta = read_export_meta(path)
    if kind is not None and meta["kind"] != kind:
        raise ExportError(f"export {str(path)!r} holds a {meta['kind']!r} model, expected {kind!r}")
    if not (path / WEIGHTS).is_file():
        raise ExportError(f"export {str(path)!r} has no {WEIGHTS}")
    try:
        state_dict = load_file(str(path / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing to the user
        raise ExportError(f"export {str(path)!r} is unreadable: {type(exc).__name__}: {_one_line(exc)}") from None
    tok = meta["tokenizer"]
    return Export(
        kind=meta["kind"],
        model_name=meta["model"]["name"],
        overrides=meta["model"]["overrides"],
        preprocess=meta["preprocess"],
        state_dict=state_dict,
        fingerprint=meta["fingerprint"],
        tokenizer_path=path / tok if tok else None,
        extra=meta["extra"],
    )


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """The checked ``export.json`` of an export directory (without loading the weights).

    Every field :func:`save_export` writes must be there with its type; ``tokenizer`` must name a file
    inside the export folder, since loading reads it. Raises :class:`ExportError` with one line.
    """
    path = Path(path)
    file = path / META
    if not path.is_dir() or not file.is_file():
        raise ExportError(f"export {str(path)!r} not found: expected a directory with {META} and {WEIGHTS}")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ExportError(f"{file}: unreadable: {exc.strerror or exc}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{file}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{file}: expected a JSON object, got {_json_type(meta)}")
    meta.setdefault("tokenizer", None)  # optional: exports without text
    meta.setdefault("extra", {})
    for key, want in _META_FIELDS.items():
        where, value = meta, None
        for part in key.split("."):
            if not isinstance(where, dict) or part not in where:
                raise ExportError(f"{file}: missing key {key!r}")
            value = where = where[part]
        if not isinstance(value, want) or isinstance(value, bool):
            expected = " or ".join(_json_type(t()) for t in (want if isinstance(want, tuple) else (want,)))
            raise ExportError(f"{file}: {key!r} must be {expected}, got {_json_type(value)}")
    if not meta["kind"] or not meta["model"]["name"]:
        raise ExportError(f"{file}: 'kind' and 'model.name' must not be empty")
    tok = meta["tokenizer"]
    if tok is not None:
        if tok in ("", ".", "..") or "/" in tok or "\\" in tok or Path(tok).is_absolute():
            raise ExportError(f"{file}: 'tokenizer' must name a file inside the export folder, got {tok!r}")
        if not (path / tok).is_file():
            raise ExportError(f"{file}: tokenizer file {tok!r} is missing from the export folder")
    return meta


# Keys of export.json and their JSON types (``a.b``: key b of object a).
_META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "model": dict,
    "model.name": str,
    "model.overrides": dict,
    "preprocess": dict,
    "tokenizer": (str, type(None)),
    "fingerprint": str,
    "extra": dict,
}


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fingerprint(weights: Path, meta: dict[str, Any], tokenizer: Path | None) -> str:
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps({k: meta[k] for k in ("kind", "model", "preprocess")}, sort_keys=True).encode())
    if tokenizer is not None:
        h.update(tokenizer.read_bytes())
    return h.hexdigest()[:16]
