"""A query by sound decodes at most ``max_seconds`` of its file, and embeds the clips spread over them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import data.media
import data.noise
import eval.embed
from data.transforms import PreprocessConfig
from eval.embed import embed_audio_file

SR = 8000
SECONDS = 300
PRE = PreprocessConfig(num_frames=4, fps=5.0, image_size=32, resize_size=32, sample_rate=SR)  # 0.8 s clips


class AudioStats(torch.nn.Module):
    """Stands in for a VATT model: an "embedding" of statistics that tell clips apart by their samples."""

    def encode_audio(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        # (n, S) -> (n, 4)
        return {"audio_va": torch.stack([audio.mean(1), audio.pow(2).mean(1), audio[:, 0], audio[:, -1]], dim=1)}


def reference(wave: np.ndarray, clips: int) -> np.ndarray:
    """Float64: ``clips`` uniformly spaced clips of ``wave``, their statistics averaged, L2-normalised."""
    length = PRE.audio_samples
    slack = wave.shape[0] - length
    starts = [round(slack * i / (clips - 1)) for i in range(clips)]
    stats = np.array([[c.mean(), (c**2).mean(), c[0], c[-1]] for c in (wave[s : s + length] for s in starts)])
    mean = stats.mean(axis=0)
    return mean / np.linalg.norm(mean)


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Five minutes of 16-bit noise whose level drifts, so clips at different times differ; and the
    samples as FFmpeg decodes them (int16 / 32768)."""
    rng = np.random.default_rng(0)
    level = np.linspace(0.05, 0.9, SECONDS * SR)
    samples = (rng.uniform(-1, 1, SECONDS * SR) * level * 32767).astype(np.int16)
    path = tmp_path_factory.mktemp("query") / "long.wav"
    with av.open(str(path), "w", format="wav") as c:
        stream = c.add_stream("pcm_s16le", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SR, 0
        c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    return path, samples.astype(np.float64) / 32768.0


def test_audio_query_reads_only_max_seconds(long_wav):
    path, wave = long_wav
    model = AudioStats()
    tracemalloc.start()  # numpy buffers are traced: the decoded samples pass through them
    try:
        got = embed_audio_file(model, path, PRE)  # default cap: the first 60 s
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.shape == (1, 4)
    np.testing.assert_allclose(got[0].double().numpy(), reference(wave[: 60 * SR], 4), atol=1e-5)
    # 60 s at 8 kHz are 1.9 MB as float32; the whole file would pass 9.6 MB through each buffer.
    assert peak < 6 * 2**20
    short = embed_audio_file(model, path, PRE, clips_per_video=3, max_seconds=12.5)
    np.testing.assert_allclose(short[0].double().numpy(), reference(wave[: round(12.5 * SR)], 3), atol=1e-5)
    whole = embed_audio_file(model, path, PRE, max_seconds=None)
    np.testing.assert_allclose(whole[0].double().numpy(), reference(wave, 4), atol=1e-5)


def test_one_audio_loader_with_the_cap(long_wav):
    """Queries, babble noise and the media module share one loader, capped the same way."""
    path, wave = long_wav
    assert eval.embed.load_audio is data.media.load_audio and data.noise.load_audio is data.media.load_audio
    capped = data.media.load_audio(path, SR, max_seconds=7.0)
    np.testing.assert_allclose(capped.double().numpy(), wave[: 7 * SR], atol=1e-7)
    babble = data.noise.BabbleNoise([path], sample_rate=SR, talkers=1, max_seconds=7.0)
    (pool,) = babble.pool
    np.testing.assert_allclose(pool.double().numpy(), wave[: 7 * SR] / np.sqrt((wave[: 7 * SR] ** 2).mean()), atol=1e-5)
