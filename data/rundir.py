"""Run directories, atomic file writes, metrics logs and the one logging format.

A run directory holds the resolved config (``config.yaml``), ``metrics.jsonl``, training states under
``states/`` and an export under ``export/``. Everything written here goes to a temporary file first
and is renamed into place, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, main_process: bool = True) -> None:
    """Configure the root logger once, for scripts; libraries only call ``logging.getLogger``."""
    logging.basicConfig(
        level=level if main_process else logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S", force=True
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def new_run_dir(output_dir: str | None, root: str | Path = "runs", prefix: str = "run") -> Path:
    """``output_dir`` if given, else a fresh timestamped directory under ``root``."""
    if output_dir:
        path = Path(output_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{prefix}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / f"{prefix}-{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; each line is flushed as it is written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
