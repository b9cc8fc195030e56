"""HMDB51 (Kuehne et al., 2011) as distributed: 51 action classes, three official 70/30 splits.

Layout (``hmdb51_org.rar``, one rar per class inside, and ``test_train_splits.rar``, unpacked)::

    ROOT/hmdb51_org/<class>/<video>.avi
    ROOT/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt   "<video>.avi <id>"

In a split file id 1 puts the video in the training set, 2 in the test set, and 0 leaves it out (each
class has 70 training and 30 test videos per split). The classes are named by the split files. A video
name is ``<source>_<class>_<body>_<camera motion>_<people>_<viewpoint>_<quality>_<n>.avi``
(``April_09_brush_hair_u_nm_np1_ba_goo_0.avi``); ``<source>``, the film or web video the clip was cut
from, is the example's ``group``, so a validation set carved from "train" keeps each source whole.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.downstream.task import Example, Task, TaskError, numbered_lines

SPLITS = (1, 2, 3)
_IDS = {"1": "train", "2": "test"}  # "0": not used in this split


def _source(name: str, cls: str) -> str:
    """The source video a clip was cut from; the whole stem if the name does not follow the convention."""
    meta = re.match(rf"(.+)_{re.escape(cls)}_[fhul]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+\.avi$", name)
    return meta.group(1) if meta else Path(name).stem


def read_hmdb51(root: str | Path, split: int = 1) -> Task:
    """HMDB51 split ``split`` (1, 2 or 3) of the dataset under ``root``: "train" and "test" examples."""
    if split not in SPLITS:
        raise ValueError(f"HMDB51 split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    videos, lists = root / "hmdb51_org", root / "testTrainMulti_7030_splits"
    for folder in (videos, lists):
        if not folder.is_dir():
            raise TaskError(f"{folder}: missing HMDB51 folder")
    suffix = f"_test_split{split}.txt"
    # Sorted by class name: by file name "climb_stairs_test..." would come before "climb_test...".
    classes = sorted(p.name[: -len(suffix)] for p in lists.iterdir() if p.name.endswith(suffix))
    classes = [c for c in classes if c]
    if not classes:
        raise TaskError(f"{lists}: no <class>{suffix} files")

    splits: dict[str, list[Example]] = {"train": [], "test": []}
    seen: dict[str, str] = {}
    for label, cls in enumerate(classes):
        file = lists / f"{cls}{suffix}"
        for n, line in numbered_lines(file, "HMDB51 split file"):
            where = f"{file}:{n}"
            fields = line.rsplit(maxsplit=1)
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise TaskError(f"{where}: expected '<video>.avi <0|1|2>', got {line!r}")
            name, tag = fields
            if "/" in name or name in ("", ".", ".."):
                raise TaskError(f"{where}: expected a file name, got {name!r}")
            if name in seen:
                raise TaskError(f"{where}: {name} is listed twice (first at {seen[name]})")
            seen[name] = where
            path = videos / cls / name
            if not path.is_file():
                raise TaskError(f"{where}: {path} does not exist")
            if tag in _IDS:
                splits[_IDS[tag]].append(Example(label=label, path=path, group=_source(name, cls)))
    for examples in splits.values():
        examples.sort(key=lambda ex: str(ex.path))
    return Task(f"hmdb51/split{split}", classes, splits, ("video",), source=str(root))
