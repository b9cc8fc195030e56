"""Load a VATT export (``train.export``) into a ready model, its preprocessing and its tokenizer.

The export names a registered architecture and its overrides, so the model is rebuilt with
``vatt.create_model`` and the weights are loaded strictly (a missing or extra tensor is an error,
never a silently random layer). The model comes back in eval mode, where DropToken is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import vatt
from data.schema import ConfigError
from data.tokenizer import Tokenizer
from data.transforms import PreprocessConfig
from train.export import ExportError, read_export, read_export_meta


@dataclass
class VattExport:
    """A loaded export: ``model`` (eval mode, on ``device``), ``preprocess``, ``tokenizer`` and ``fingerprint``."""

    model: torch.nn.Module
    preprocess: PreprocessConfig
    tokenizer: Tokenizer | None
    fingerprint: str
    path: Path
    extra: dict[str, Any]


def load_vatt_export(
    path: str | Path, device: str | torch.device = "cpu", *, random_seed: int | None = None
) -> VattExport:
    """Read ``path`` (kind ``"vatt"``), rebuild the model and load its weights; raises ExportError with one line.

    With ``random_seed``, the model keeps the weights it is built with from that seed instead (the
    random-init baseline of the same architecture, preprocessing and tokenizer); its fingerprint says so.
    """
    path = Path(path)
    exp = read_export(path, kind="vatt")
    try:
        with torch.random.fork_rng(devices=[]):
            if random_seed is not None:
                torch.manual_seed(random_seed)
            model = vatt.create_model(exp.model_name, **exp.overrides)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"export {str(path)!r} names a model that cannot be built: {_first_line(exc)}") from None
    try:
        if random_seed is None:
            model.load_state_dict(exp.state_dict, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"export {str(path)!r} weights do not fit {exp.model_name!r}: {_first_line(exc)}") from None
    fingerprint = exp.fingerprint if random_seed is None else f"{exp.fingerprint}-random{random_seed}"
    try:
        preprocess = PreprocessConfig.from_dict(exp.preprocess)
    except ConfigError as exc:
        raise ExportError(f"export {str(path)!r} has an invalid preprocessing config: {_first_line(exc)}") from None
    try:
        tokenizer = Tokenizer(exp.tokenizer_path) if exp.tokenizer_path is not None else None
    except (OSError, RuntimeError, ValueError) as exc:  # sentencepiece raises these for a broken model file
        raise ExportError(f"export {str(path)!r} has an unusable tokenizer: {_first_line(exc)}") from None
    model.to(device).eval()
    return VattExport(model, preprocess, tokenizer, fingerprint, path, exp.extra)


def export_fingerprint(path: str | Path) -> str:
    """The fingerprint recorded in an export, without loading its weights; raises ExportError with one line."""
    return read_export_meta(path)["fingerprint"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
