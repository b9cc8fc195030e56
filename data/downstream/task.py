"""What every downstream reader returns: a :class:`Task`, labelled :class:`Example` s in named splits.

A reader only lists files and labels; decoding happens later, in the harness, with the preprocessing
of the tower being measured. So a reader is fast, needs no model, and can be tested on empty files in
the dataset's exact layout. A malformed layout raises :class:`TaskError` with one line naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Modality = Literal["video", "audio", "text"]


class TaskError(ValueError):
    """A dataset layout, list file or label that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Example:
    """One labelled example.

    ``path`` is a media file (video with or without an audio track, or audio); ``start``/``end`` cut a
    segment in seconds (None: the whole file). Text examples carry ``text`` and no path. ``group`` names
    where the example comes from (a speaker, a source video) so that splits made later keep groups whole.
    Frame tasks label every ``Task.frame_hop`` seconds from ``start`` in ``frame_labels``.
    """

    label: int  # index into Task.classes; -1 for frame tasks
    path: Path | None = None
    start: float | None = None
    end: float | None = None
    text: str | None = None
    group: str = ""
    frame_labels: tuple[int, ...] | None = None


@dataclass
class Task:
    """A classification task: ``classes`` and the examples of each split ("train", "val", "test").

    ``modalities`` lists what an example offers (a video file with sound offers both "video" and
    "audio"); the harness picks the one its tower reads. ``frame_hop`` is set for frame-level tasks.
    ``prompts`` maps each class to text prompts for zero-shot classification, where the classes can
    be said in words.
    """

    name: str
    classes: list[str]
    splits: dict[str, list[Example]]
    modalities: tuple[Modality, ...]
    frame_hop: float | None = None
    prompts: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""  # the directory or corpus it was read from

    def __post_init__(self) -> None:
        n = len(self.classes)
        for split, examples in self.splits.items():
            for ex in examples:
                bad = [x for x in (ex.frame_labels or ()) if not -1 <= x < n]
                if not (ex.label == -1 and ex.frame_labels is not None) and not 0 <= ex.label < n or bad:
                    where = ex.path or ex.text
                    raise TaskError(f"{self.name}: example {where} in {split!r} has a label outside 0..{n - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        return {split: len(examples) for split, examples in self.splits.items()}


def class_index(classes: Sequence[str], name: str, where: str) -> int:
    """Position of ``name`` in ``classes``; TaskError naming ``where`` if it is not one of them."""
    try:
        return list(classes).index(name)
    except ValueError:
        raise TaskError(f"{where}: unknown class {name!r}") from None


def numbered_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-empty stripped lines of a list file with their 1-based line numbers, for messages that point
    at a line; TaskError naming the file if it is missing or not text."""
    if not path.is_file():
        raise TaskError(f"{path}: missing {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read {what} ({type(exc).__name__})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a list file; TaskError naming the file if it is missing or not text."""
    return [line for _, line in numbered_lines(path, what)]
