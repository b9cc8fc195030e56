"""ESC-50 (Piczak, 2015) as distributed: 2000 five-second clips of 50 environmental sound classes.

Layout (the ``ESC-50-master`` repository)::

    ROOT/meta/esc50.csv   filename,fold,target,category,esc10,src_file,take
                          1-100032-A-0.wav,1,0,dog,True,100032,A
    ROOT/audio/<filename>

Evaluation is 5-fold cross-validation over the ``fold`` column: fold k is the test set and the other four
train. Clips cut from one Freesound recording (``src_file``) share a fold; it is the example's
``group``. ESC-10 is the subset of 10 classes flagged in the ``esc10`` column, re-indexed 0..9 in the
order of their ESC-50 targets.
"""

from __future__ import annotations

import csv
from pathlib import Path

from data.downstream.task import Example, Task, TaskError

FOLDS = (1, 2, 3, 4, 5)
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file")


def _integer(value: str, column: str, where: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise TaskError(f"{where}: {column} {value!r} is not a non-negative integer")
    return int(value)


def _read_rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    """The csv rows with ``path:line`` for messages; TaskError if the file or a column is missing."""
    if not path.is_file():
        raise TaskError(f"{path}: missing ESC-50 metadata")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise TaskError(f"{path}:1: missing column(s) {', '.join(missing)}")
            rows = []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(row[c] is None for c in COLUMNS):
                    raise TaskError(f"{where}: expected {len(reader.fieldnames or [])} fields")
                rows.append((where, {c: row[c].strip() for c in COLUMNS}))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaskError(f"{path}: cannot read ESC-50 metadata ({type(exc).__name__})") from None
    if not rows:
        raise TaskError(f"{path}: no clips listed")
    return rows


def read_esc50(root: str | Path, fold: int = 1, esc10: bool = False) -> Task:
    """ESC-50 (or its ESC-10 subset) under ``root`` with fold ``fold`` as "test", the others as "train"."""
    if fold not in FOLDS:
        raise ValueError(f"ESC-50 fold must be one of {FOLDS}, got {fold!r}")
    root = Path(root)
    audio = root / "audio"
    if not audio.is_dir():
        raise TaskError(f"{audio}: missing ESC-50 folder")

    names: dict[int, str] = {}  # target -> category
    clips: list[tuple[str, int, int, str]] = []  # filename, fold, target, src_file
    in_esc10: set[int] = set()
    seen: dict[str, str] = {}
    for where, row in _read_rows(root / "meta" / "esc50.csv"):
        target = _integer(row["target"], "target", where)
        row_fold = _integer(row["fold"], "fold", where)
        if row_fold not in FOLDS:
            raise TaskError(f"{where}: fold {row_fold} is not one of {FOLDS}")
        if names.setdefault(target, row["category"]) != row["category"]:
            raise TaskError(f"{where}: target {target} is {row['category']!r} here but {names[target]!r} above")
        if row["esc10"] not in ("True", "False"):
            raise TaskError(f"{where}: esc10 {row['esc10']!r} is not True or False")
        if row["esc10"] == "True":
            in_esc10.add(target)
        name = row["filename"]
        if name in seen:
            raise TaskError(f"{where}: {name} is listed twice (first at {seen[name]})")
        seen[name] = where
        if "/" in name or name in (".", ".."):
            raise TaskError(f"{where}: expected a file name, got {name!r}")
        if not (audio / name).is_file():
            raise TaskError(f"{where}: {audio / name} does not exist")
        clips.append((name, row_fold, target, row["src_file"]))

    meta = root / "meta" / "esc50.csv"
    if sorted(names) != list(range(len(names))):
        raise TaskError(f"{meta}: targets are not 0..{len(names) - 1}")
    if len(set(names.values())) != len(names):
        raise TaskError(f"{meta}: one category has two targets")
    targets = sorted(in_esc10) if esc10 else sorted(names)
    if not targets:
        raise TaskError(f"{meta}: no clip is flagged esc10")
    index = {t: i for i, t in enumerate(targets)}
    splits: dict[str, list[Example]] = {"train": [], "test": []}
    for name, row_fold, target, src in sorted(clips):
        if target in index:
            split = "test" if row_fold == fold else "train"
            splits[split].append(Example(label=index[target], path=audio / name, group=src))
    if not splits["test"]:
        raise TaskError(f"{meta}: no clip in fold {fold}")
    name = f"esc10/fold{fold}" if esc10 else f"esc50/fold{fold}"
    return Task(name, [names[t] for t in targets], splits, ("audio",), source=str(root))
