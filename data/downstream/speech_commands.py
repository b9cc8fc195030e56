"""Speech Commands (Warden, 2018) as distributed: one-second utterances of spoken words, by speaker.

Layout (``speech_commands_v0.02.tar.gz``, unpacked; v0.01 is the same with 30 words)::

    ROOT/<word>/<speaker>_nohash_<n>.wav    e.g. right/bb05582b_nohash_3.wav
    ROOT/validation_list.txt                "right/bb05582b_nohash_3.wav", one per line
    ROOT/testing_list.txt
    ROOT/_background_noise_/*.wav           noise for augmentation, not a class

The lists name the "val" and "test" utterances; every other utterance is "train". The lists are drawn
by speaker (a hash of the speaker id), so a speaker is in one split only; the speaker is the example's
``group``. The classes are all word folders (35 in v0.02), the full-vocabulary task.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.downstream.task import Example, Task, TaskError, class_index, numbered_lines

_NAME = re.compile(r"(.+)_nohash_\d+\.wav$")
LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}


def _speaker(path: Path) -> str:
    match = _NAME.match(path.name)
    if match is None:
        raise TaskError(f"{path}: expected a name <speaker>_nohash_<n>.wav")
    return match.group(1)


def read_speech_commands(root: str | Path) -> Task:
    """Speech Commands under ``root``: "train", "val" and "test" by the dataset's own lists."""
    root = Path(root)
    if not root.is_dir():
        raise TaskError(f"{root}: missing Speech Commands folder")
    # "_background_noise_" and anything hidden are not words.
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not classes:
        raise TaskError(f"{root}: no word folders")

    listed: dict[str, str] = {}  # "<word>/<file>.wav" -> where it is listed
    splits: dict[str, list[Example]] = {}
    for split, list_name in LISTS.items():
        file = root / list_name
        examples = []
        for n, line in numbered_lines(file, f"Speech Commands {split} list"):
            where = f"{file}:{n}"
            parts = line.split("/")
            if len(parts) != 2 or not all(parts) or ".." in parts:
                raise TaskError(f"{where}: expected '<word>/<file>.wav', got {line!r}")
            label = class_index(classes, parts[0], where)
            if line in listed:
                raise TaskError(f"{where}: {line} is listed twice (first at {listed[line]})")
            listed[line] = where
            path = root / line
            if not path.is_file():
                raise TaskError(f"{where}: {path} does not exist")
            examples.append(Example(label=label, path=path, group=_speaker(path)))
        splits[split] = sorted(examples, key=lambda ex: str(ex.path))

    train = []
    for label, word in enumerate(classes):
        wavs = sorted(p for p in (root / word).glob("*.wav") if p.is_file())
        if not wavs:
            raise TaskError(f"{root / word}: no .wav files")
        for path in wavs:
            if f"{word}/{path.name}" not in listed:
                train.append(Example(label=label, path=path, group=_speaker(path)))
    train.sort(key=lambda ex: str(ex.path))
    return Task("speech_commands", classes, {"train": train, **splits}, ("audio",), source=str(root))
