"""LRW, Lip Reading in the Wild (Chung & Zisserman, 2016), as distributed: 500 words, one word per clip.

Layout (``lipread_mp4``, the directory the archive unpacks to, is ``ROOT``)::

    ROOT/<WORD>/{train,val,test}/<WORD>_00001.mp4
    ROOT/<WORD>/{train,val,test}/<WORD>_00001.txt   "Text: ABOUT", "Conf: ...", "Duration: ... seconds"

Each clip is 29 frames at 25 fps (1.16 s) of BBC television, face-tracked, with the word in the middle;
the mp4 carries the sound. The word is the label, the folders give the splits, and the whole clip is
used, as LRW models read it (the word's duration in the ``.txt`` is not needed and not read). LRW does
not say who speaks, so examples have no group.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.downstream.task import Example, Task, TaskError

SPLITS = ("train", "val", "test")


def read_lrw(root: str | Path) -> Task:
    """LRW under ``root``: "train", "val" and "test" examples from the split folders of every word."""
    root = Path(root)
    if not root.is_dir():
        raise TaskError(f"{root}: missing LRW folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TaskError(f"{root}: no word folders")

    splits: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for label, word in enumerate(classes):
        name = re.compile(rf"{re.escape(word)}_\d+\.mp4")
        for split in SPLITS:
            folder = root / word / split
            if not folder.is_dir():
                raise TaskError(f"{folder}: missing LRW split folder")
            clips = sorted(p for p in folder.glob("*.mp4") if p.is_file())
            if not clips:
                raise TaskError(f"{folder}: no .mp4 files")
            for path in clips:
                if not name.fullmatch(path.name):
                    raise TaskError(f"{path}: expected a name {word}_<n>.mp4 in the folder of {word!r}")
                splits[split].append(Example(label=label, path=path))
    for examples in splits.values():
        examples.sort(key=lambda ex: str(ex.path))
    return Task("lrw", classes, splits, ("video", "audio"), source=str(root))
