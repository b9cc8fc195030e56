"""Downstream tasks by name: ``read_task("esc50", root, fold=2)``; one line in :data:`READERS` adds one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.downstream.esc50 import read_esc50
from data.downstream.hmdb51 import read_hmdb51
from data.downstream.lrw import read_lrw
from data.downstream.speech_commands import read_speech_commands
from data.downstream.task import Task
from data.downstream.ucf101 import read_ucf101

READERS: dict[str, Callable[..., Task]] = {
    "ucf101": read_ucf101,
    "hmdb51": read_hmdb51,
    "esc50": read_esc50,
    "speech_commands": read_speech_commands,
    "lrw": read_lrw,
}


def read_task(kind: str, root: str | Path, **options: Any) -> Task:
    """The task ``kind`` read from ``root``; ``options`` go to its reader (``split``, ``fold``, ``esc10``)."""
    if kind not in READERS:
        raise ValueError(f"unknown downstream task {kind!r}; known: {', '.join(sorted(READERS))}")
    return READERS[kind](root, **options)
