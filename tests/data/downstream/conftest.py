"""Tiny copies of the downstream datasets in their exact distributed layouts.

Readers only list files, so media files are placeholder bytes; ``write_lrw`` and ``write_speech_commands``
can also write real, decodable media (``real=True``) whose content says the class (a grey level and a tone
per word) for tests that decode. The builders are imported (``from tests.data.downstream.conftest import
write_lrw``); the fixtures build each dataset in a fresh directory, so a test may break its copy.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from data.synth.mediawriter import write_mp4

PLACEHOLDER = b"\x00"

UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "HandstandPushups")  # classInd order
UCF_GROUPS = (1, 2, 3, 4)  # split k tests group k, trains on the rest

HMDB_CLASSES = ("brush_hair", "climb", "climb_stairs")
# (source, ids in splits 1, 2, 3) per class; a source of None names the clip off the naming convention.
HMDB_VIDEOS = (
    ("April_09", (1, 2, 1)),
    ("April_09", (1, 2, 1)),
    ("Veoh_Alpha_Dog", (2, 1, 1)),
    ("TheBigBangTheory", (0, 1, 2)),
    (None, (1, 1, 0)),
)

# target, category, esc10: the ESC-10 targets are not 0..1, so re-indexing shows.
ESC_CLASSES = ((0, "dog", True), (1, "rooster", False), (2, "pig", False), (3, "rain", True))

SC_WORDS = ("down", "left", "right", "yes")
SC_SPEAKERS = ("0a1b2c3d", "bb05582b", "c0ffee00", "d00dfeed")
SC_VAL_SPEAKER, SC_TEST_SPEAKER = "bb05582b", "c0ffee00"
SC_RATE = 16000

LRW_WORDS = ("ABOUT", "ABSOLUTELY", "WORLD")
LRW_COUNTS = {"train": 3, "val": 1, "test": 2}
LRW_FPS, LRW_FRAMES, LRW_RATE = 25.0, 29, 16000


def tone(label: int, seconds: float, sample_rate: int) -> np.ndarray:
    """A sine whose pitch says the class: 300 Hz for label 0, 200 Hz higher per label."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * (300 + 200 * label) * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Mono 16-bit PCM, as Speech Commands and ESC-50 ship."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _placeholder(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PLACEHOLDER)
    return path


def write_ucf101(root: Path) -> Path:
    """3 classes x 4 groups x 2 clips, Archery g01 with 3; HandstandPushups files spelt HandStandPushups."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    # The distributed lists end lines with CRLF.
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(UCF_CLASSES, 1)))
    clips = []  # (label, group, relative path)
    for label, cls in enumerate(UCF_CLASSES):
        spelt = "HandStandPushups" if cls == "HandstandPushups" else cls
        for g in UCF_GROUPS:
            for c in range(1, 4 if (cls, g) == ("Archery", 1) else 3):
                rel = f"{cls}/v_{spelt}_g{g:02d}_c{c:02d}.avi"
                _placeholder(root / "UCF-101" / rel)
                clips.append((label, g, rel))
    for k in (1, 2, 3):
        train = "".join(f"{rel} {label + 1}\r\n" for label, g, rel in clips if g != k)
        test = "".join(f"{rel}\r\n" for label, g, rel in clips if g == k)
        (lists / f"trainlist0{k}.txt").write_text(train)
        (lists / f"testlist0{k}.txt").write_text(test)
    return root


def hmdb_name(cls: str, source: str | None, i: int) -> str:
    if source is None:
        return f"odd_clip_{cls}_{i}.avi"
    return f"{source}_{cls}_u_nm_np1_fr_goo_{i}.avi"


def write_hmdb51(root: Path) -> Path:
    """3 classes x 5 videos with the split ids of HMDB_VIDEOS; split lines end with a space, as shipped."""
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    for cls in HMDB_CLASSES:
        names = [hmdb_name(cls, source, i) for i, (source, _) in enumerate(HMDB_VIDEOS)]
        for name in names:
            _placeholder(root / "hmdb51_org" / cls / name)
        for k in (1, 2, 3):
            lines = "".join(f"{name} {ids[k - 1]} \n" for name, (_, ids) in zip(names, HMDB_VIDEOS))
            (lists / f"{cls}_test_split{k}.txt").write_text(lines)
    return root


def esc_name(fold: int, target: int, take: str) -> str:
    return f"{fold}-{1000 * fold + target}-{take}-{target}.wav"


def write_esc50(root: Path) -> Path:
    """5 folds x 4 classes, one clip each, plus a second take of dog in fold 1 from the same source."""
    (root / "meta").mkdir(parents=True)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, category, esc10 in ESC_CLASSES:
            for take in ("A", "B") if (fold, target) == (1, 0) else ("A",):
                name = esc_name(fold, target, take)
                _placeholder(root / "audio" / name)
                rows.append(f"{name},{fold},{target},{category},{esc10},{1000 * fold + target},{take}")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def sc_utterances(word: str) -> list[tuple[str, int]]:
    """(speaker, n) of each utterance of ``word``: every speaker once, the first speaker also says
    "yes" a second time."""
    extra = [(SC_SPEAKERS[0], 1)] if word == "yes" else []
    return [(speaker, 0) for speaker in SC_SPEAKERS] + extra


def write_speech_commands(root: Path, real: bool = False) -> Path:
    """4 words x 4 speakers (+1); one speaker's utterances listed for validation, one for test.

    ``real``: 1 s 16 kHz wavs with a tone per word; else placeholder bytes.
    """
    listed: dict[str, list[str]] = {SC_VAL_SPEAKER: [], SC_TEST_SPEAKER: []}
    for label, word in enumerate(SC_WORDS):
        (root / word).mkdir(parents=True)
        for speaker, n in sc_utterances(word):
            path = root / word / f"{speaker}_nohash_{n}.wav"
            if real:
                write_wav(path, tone(label, 1.0, SC_RATE), SC_RATE)
            else:
                _placeholder(path)
            listed.get(speaker, []).append(f"{word}/{path.name}")
    _placeholder(root / "_background_noise_" / "white_noise.wav")
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "validation_list.txt").write_text("".join(f"{x}\n" for x in listed[SC_VAL_SPEAKER]))
    (root / "testing_list.txt").write_text("".join(f"{x}\n" for x in listed[SC_TEST_SPEAKER]))
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return root


def write_lrw(root: Path, real: bool = False) -> Path:
    """3 words with LRW_COUNTS clips per split, a metadata .txt beside each.

    ``real``: 29 frames at 25 fps, 32x32, grey level per word, with a tone per word at 16 kHz; else
    placeholder bytes.
    """
    for label, word in enumerate(LRW_WORDS):
        for split, count in LRW_COUNTS.items():
            folder = root / word / split
            folder.mkdir(parents=True)
            for i in range(1, count + 1):
                path = folder / f"{word}_{i:05d}.mp4"
                if real:
                    frames = np.full((LRW_FRAMES, 32, 32, 3), 40 + 60 * label, np.uint8)
                    write_mp4(path, frames, LRW_FPS, tone(label, LRW_FRAMES / LRW_FPS, LRW_RATE), LRW_RATE)
                else:
                    _placeholder(path)
                meta = f"Text: {word}\nConf: 6\n\nDuration: 0.{30 + 5 * i} seconds\n"
                path.with_suffix(".txt").write_text(meta)
    return root


@pytest.fixture
def ucf101_root(tmp_path: Path) -> Path:
    return write_ucf101(tmp_path / "ucf101")


@pytest.fixture
def hmdb51_root(tmp_path: Path) -> Path:
    return write_hmdb51(tmp_path / "hmdb51")


@pytest.fixture
def esc50_root(tmp_path: Path) -> Path:
    return write_esc50(tmp_path / "ESC-50-master")


@pytest.fixture
def speech_commands_root(tmp_path: Path) -> Path:
    return write_speech_commands(tmp_path / "speech_commands_v0.02")


@pytest.fixture
def lrw_root(tmp_path: Path) -> Path:
    return write_lrw(tmp_path / "lipread_mp4")
