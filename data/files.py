"""Output files written so that nothing is lost: atomically, fsynced, and never over a folder this
project did not write.

Everything goes to a temporary name beside its destination first and is renamed into place, so a kill
never leaves half a file behind. Folders written here carry :data:`OUTPUT_MARKER`; an existing folder
is only replaced when it has it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

# Folders this project writes carry this file; an existing folder is only ever replaced when it has it.
OUTPUT_MARKER = ".vatt-avsr-output"


class OutputPathError(ValueError):
    """An output path that would replace something this project did not write."""


def is_ours(path: str | Path) -> bool:
    """Whether ``path`` is a folder this project wrote (it carries :data:`OUTPUT_MARKER`)."""
    return (Path(path) / OUTPUT_MARKER).is_file()


def mark_ours(path: str | Path) -> None:
    (Path(path) / OUTPUT_MARKER).write_text("written by vatt-avsr; its next output to this path may replace it\n")


def check_output_path(path: str | Path, kind: Literal["file", "dir", "any"] = "file") -> Path:
    """Raise :class:`OutputPathError` unless ``path`` may receive a new output of ``kind``.

    A missing path may; an existing file may receive a file (the user named it); an existing folder
    may receive a folder only when this project wrote it (:func:`is_ours`), and never a file (a PNG
    does not replace an index by a slip of the path). Commands call it before the work whose result
    goes there, so a wrong path fails at once rather than after the work. ``kind="any"`` checks only
    what holds for both.
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return path
    if path.is_dir():
        if not is_ours(path):
            raise OutputPathError(
                f"{path} is an existing folder that this project did not write; refusing to replace it "
                "(choose another output path)"
            )
        if kind == "file":
            raise OutputPathError(f"{path} is an existing output folder; refusing to replace it with a file")
    elif kind == "dir":
        raise OutputPathError(f"{path} is an existing file; refusing to replace it with a folder")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(path: Path) -> None:
    """Remove the temp siblings of ``path`` that a killed earlier write of this project left behind.

    They are named ``.<name>.tmp-<pid>-...`` and ``.<name>.old-<pid>-...``; one whose process still
    runs is another write in progress and stays.
    """
    if not path.parent.is_dir():
        return
    for kind in ("tmp", "old"):
        prefix = f".{path.name}.{kind}-"
        for p in path.parent.iterdir():
            if not p.name.startswith(prefix):
                continue
            pid = p.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                remove_path(p)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush ``path`` (a file, or a folder with everything in it) to disk."""
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        if not p.is_symlink():
            fsync_path(p)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (file or folder).

    What was written is fsynced before the rename, so a crash leaves the old output or the new one,
    never a torn one. A folder written here gets :data:`OUTPUT_MARKER`; an existing folder at ``path``
    is only replaced when it has that marker (:func:`check_output_path`). Temp names that a killed
    earlier write left beside ``path`` are removed on the next write to it.
    """
    path = Path(path)
    check_output_path(path, "any")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if tmp.is_dir():
            mark_ours(tmp)
        check_output_path(path, "dir" if tmp.is_dir() else "file")
        fsync_tree(tmp)
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
