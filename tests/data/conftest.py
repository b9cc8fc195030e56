"""Small media files with known content, written once per test session."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data.synth.mediawriter import write_mp4

SR = 16000  # sample rate of the generated audio
GREY_FPS = 10.0
GREY_FRAMES = 48


def grey_level(i: int) -> int:
    """The grey value of frame ``i`` in the grey-ramp file: 4 levels apart, inside the video range."""
    return 20 + 4 * i


def fast_level(i: int) -> int:
    """The grey value of frame ``i`` in the 25 fps file."""
    return 10 + 3 * i


def sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5, onset: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * (t - onset)) * (t >= onset)).astype(np.float32)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def grey_ramp(media_dir: Path) -> Path:
    """48 frames at 10 fps, frame i uniformly grey_level(i); a 1 kHz sine starting at 1.0 s; gop 5."""
    frames = np.zeros((GREY_FRAMES, 32, 48, 3), np.uint8)
    for i in range(GREY_FRAMES):
        frames[i] = grey_level(i)
    audio = sine(1000.0, GREY_FRAMES / GREY_FPS, onset=1.0)
    return write_mp4(media_dir / "grey.mp4", frames, GREY_FPS, audio, SR, gop=5)


@pytest.fixture(scope="session")
def fast_ramp(media_dir: Path) -> Path:
    """60 frames at 25 fps (not a multiple of 10), frame i uniformly fast_level(i); no audio stream."""
    frames = np.zeros((60, 32, 32, 3), np.uint8)
    for i in range(60):
        frames[i] = fast_level(i)
    return write_mp4(media_dir / "fast.mp4", frames, 25.0, None, SR, gop=12)


@pytest.fixture(scope="session")
def rgb_file(media_dir: Path) -> Path:
    """Three seconds at 10 fps: red, then green, then blue, one second each."""
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
    frames = np.zeros((30, 32, 32, 3), np.uint8)
    for i in range(30):
        frames[i] = colours[i // 10]
    return write_mp4(media_dir / "rgb.mp4", frames, 10.0, sine(440.0, 3.0), SR)


@pytest.fixture(scope="session")
def stereo_44k(media_dir: Path) -> Path:
    """A 44.1 kHz stereo AAC track (left 300 Hz, right 300 Hz at half amplitude) with 2 s of video."""
    path = media_dir / "stereo.mp4"
    sr = 44100
    t = np.arange(2 * sr) / sr
    left = 0.6 * np.sin(2 * np.pi * 300 * t)
    right = 0.3 * np.sin(2 * np.pi * 300 * t)
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("h264", rate=Fraction(10))
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        aus = c.add_stream("aac", rate=sr, layout="stereo")
        for i in range(20):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 100, np.uint8), format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
        af = av.AudioFrame.from_ndarray(np.stack([left, right]).astype(np.float32), format="fltp", layout="stereo")
        af.sample_rate, af.pts = sr, 0
        c.mux(aus.encode(af))
        c.mux(aus.encode(None))
    return path


@pytest.fixture(scope="session")
def audio_only(media_dir: Path) -> Path:
    """An m4a with an AAC stream and no video stream."""
    path = media_dir / "audio_only.m4a"
    with av.open(str(path), "w", format="mp4") as c:
        aus = c.add_stream("aac", rate=SR, layout="mono")
        af = av.AudioFrame.from_ndarray(sine(440.0, 1.0)[None], format="fltp", layout="mono")
        af.sample_rate, af.pts = SR, 0
        c.mux(aus.encode(af))
        c.mux(aus.encode(None))
    return path


@pytest.fixture(scope="session")
def bad_files(media_dir: Path, grey_ramp: Path, audio_only: Path) -> dict[str, Path]:
    """One file per kind of bad media the loaders must survive."""
    d = media_dir / "bad"
    d.mkdir()
    data = grey_ramp.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "text.mp4").write_text("this is not a video\n" * 20)
    (d / "empty.mp4").write_bytes(b"")
    # Index first (as streaming sites write them), then cut: opens fine, the frames stop early.
    frames = np.full((48, 32, 32, 3), 90, np.uint8)
    fast = write_mp4(d / "faststart_full.mp4", frames, 10.0, sine(440.0, 4.8), SR, faststart=True)
    blob = fast.read_bytes()
    (d / "truncated_faststart.mp4").write_bytes(blob[: len(blob) // 3])
    return {
        "truncated": d / "truncated.mp4",
        "truncated_faststart": d / "truncated_faststart.mp4",
        "text": d / "text.mp4",
        "empty": d / "empty.mp4",
        "missing": d / "does_not_exist.mp4",
        "no_video": audio_only,
    }
