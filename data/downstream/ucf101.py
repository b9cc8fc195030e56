"""UCF101 (Soomro et al., 2012) as distributed: 101 action classes, three official train/test splits.

Layout (``UCF101.rar`` and ``UCF101TrainTestSplits-RecognitionTask.zip``, unpacked side by side)::

    ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
    ROOT/ucfTrainTestlist/classInd.txt            "1 ApplyEyeMakeup" (1-based id, class name)
    ROOT/ucfTrainTestlist/trainlist0{1,2,3}.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ROOT/ucfTrainTestlist/testlist0{1,2,3}.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

The class of a listed video is its folder, which is what classInd names: the files of one class are
spelt differently from it (``HandstandPushups/v_HandStandPushups_g01_c01.avi``). Clips of one group
``gXX`` are cut from the same long video, and the official splits keep groups whole (test split k holds
groups 7k-6..7k), so the group is each example's ``group``: a validation set carved from "train" by
group keeps them whole as well.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.downstream.task import Example, Task, TaskError, class_index, numbered_lines

SPLITS = (1, 2, 3)
_GROUP = re.compile(r"_(g\d+)_c\d+\.avi$", re.IGNORECASE)


def _read_class_index(path: Path) -> list[str]:
    """Class names in the order of their 1-based ids in classInd.txt."""
    by_id: dict[int, str] = {}
    for n, line in numbered_lines(path, "UCF101 class index"):
        fields = line.split()
        if len(fields) != 2 or not (fields[0].isascii() and fields[0].isdigit()):
            raise TaskError(f"{path}:{n}: expected '<id> <class>', got {line!r}")
        idx, name = int(fields[0]), fields[1]
        if idx in by_id or name in by_id.values():
            raise TaskError(f"{path}:{n}: duplicate class entry {line!r}")
        by_id[idx] = name
    if not by_id:
        raise TaskError(f"{path}: no classes listed")
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise TaskError(f"{path}: class ids are not 1..{len(by_id)}")
    return [by_id[i] for i in range(1, len(by_id) + 1)]


def _read_list(path: Path, videos: Path, classes: list[str], seen: dict[str, str]) -> list[Example]:
    """Examples of a train or test list; ``seen`` maps each video already listed to where it was."""
    examples = []
    for n, line in numbered_lines(path, "UCF101 split list"):
        where = f"{path}:{n}"
        fields = line.split()
        if len(fields) not in (1, 2):
            raise TaskError(f"{where}: expected '<Class>/<video>.avi [id]', got {line!r}")
        rel = fields[0]
        parts = rel.split("/")
        if len(parts) != 2 or not all(parts) or ".." in parts:
            raise TaskError(f"{where}: expected '<Class>/<video>.avi', got {rel!r}")
        label = class_index(classes, parts[0], where)
        if len(fields) == 2:
            if not (fields[1].isascii() and fields[1].isdigit()):
                raise TaskError(f"{where}: class id {fields[1]!r} is not an integer")
            if int(fields[1]) != label + 1:
                raise TaskError(f"{where}: class id {fields[1]} does not match folder {parts[0]!r} (id {label + 1})")
        if rel in seen:
            raise TaskError(f"{where}: {rel} is listed twice (first at {seen[rel]})")
        seen[rel] = where
        group = _GROUP.search(parts[1])
        if group is None:
            raise TaskError(f"{where}: {parts[1]!r} has no group (expected v_<Class>_gXX_cYY.avi)")
        file = videos / rel
        if not file.is_file():
            raise TaskError(f"{where}: {file} does not exist")
        examples.append(Example(label=label, path=file, group=group.group(1).lower()))
    return sorted(examples, key=lambda ex: str(ex.path))


def read_ucf101(root: str | Path, split: int = 1) -> Task:
    """UCF101 split ``split`` (1, 2 or 3) of the dataset under ``root``: "train" and "test" examples."""
    if split not in SPLITS:
        raise ValueError(f"UCF101 split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    for folder in (videos, lists):
        if not folder.is_dir():
            raise TaskError(f"{folder}: missing UCF101 folder")
    classes = _read_class_index(lists / "classInd.txt")
    seen: dict[str, str] = {}
    splits = {
        "train": _read_list(lists / f"trainlist0{split}.txt", videos, classes, seen),
        "test": _read_list(lists / f"testlist0{split}.txt", videos, classes, seen),
    }
    return Task(f"ucf101/split{split}", classes, splits, ("video",), source=str(root))
