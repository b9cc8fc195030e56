"""A tiny corpus (real mp4 files), a tokenizer and an export of the ``vatt_test`` model, once per session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from data.synth.mediawriter import write_mp4
from data.tokenizer import train_tokenizer
from tests.conftest import save_tiny_vatt_export

SR = 8000  # the sample rate of the export (tiny_vatt_preprocess in tests/conftest.py)
FPS = 10.0
NUM_FRAMES = 16  # 1.6 s per video: four 0.8 s clips at different offsets

# (RGB, tone in Hz or None for a file without audio, captions)
VIDEOS = [
    ((220, 30, 30), 300.0, ["a red square", "red block moving"]),
    ((30, 200, 40), 450.0, ["a green thing"]),
    ((240, 240, 240), 600.0, []),  # no captions: in the t2v gallery, not a v2t query
    ((30, 60, 230), 800.0, ["blue", "a blue one again", "the blue box"]),
    ((240, 220, 20), None, ["yellow disc"]),  # no audio stream: left out of v2a / a2v
    ((200, 40, 60), 1000.0, ["a red square"]),  # same caption as video 0: an exact tie in t2v
]


@pytest.fixture(autouse=True, scope="session")
def _tiny_indexes(single_threaded_faiss):
    """Every test here builds or searches tiny FAISS indexes (see tests/conftest.py)."""


def write_video(path: Path, rgb: tuple[int, int, int], tone: float | None, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    frames = np.zeros((NUM_FRAMES, 32, 32, 3), np.uint8)
    frames[:] = (np.array(rgb) * 0.3).astype(np.uint8)
    for i in range(NUM_FRAMES):  # a bright square moving right, plus a little noise
        x = 2 + i
        frames[i, 10:20, x : x + 10] = rgb
        frames[i] = np.clip(frames[i] + rng.integers(0, 20, frames[i].shape), 0, 255).astype(np.uint8)
    audio = None
    if tone is not None:
        t = np.arange(round(NUM_FRAMES / FPS * SR)) / SR
        audio = (0.4 * np.sin(2 * np.pi * tone * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5).astype(np.float32)
    return write_mp4(path, frames, FPS, audio, SR)


@dataclass
class Corpus:
    root: Path
    manifest: Path
    videos: list[Path]
    export: Path
    other_export: Path  # the same architecture with other weights


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("retrieval_corpus")
    (root / "videos").mkdir()
    videos, lines = [], []
    for i, (rgb, tone, caps) in enumerate(VIDEOS):
        path = write_video(root / "videos" / f"v{i}.mp4", rgb, tone, seed=i)
        videos.append(path)
        lines.append(json.dumps({"media": f"videos/v{i}.mp4", "id": f"v{i}", "captions": caps}))
    manifest = root / "val.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    tok = train_tokenizer([c for *_, caps in VIDEOS for c in caps], 40, root / "tok.model")
    export = save_tiny_vatt_export(root / "export", seed=0, tokenizer=tok)
    other = save_tiny_vatt_export(root / "other_export", seed=1, tokenizer=tok)
    return Corpus(root, manifest, videos, export, other)
