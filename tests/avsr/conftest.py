"""Shared inputs for the AVSR tests: tiny utterances padded with garbage, so padding that leaks shows."""

from __future__ import annotations

import pytest
import torch

SPF = 640  # 16 kHz / 25 fps


def make_inputs(frames: list[int], image_size: int = 32, seed: int = 0, garbage: float = 3.0) -> dict:
    """Video (B, T, 1, H, W) and audio (B, T * 640) for utterances of ``frames`` frames; the padding is noise."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(frames), max(frames)
    video = torch.randn(b, t, 1, image_size, image_size, generator=g)
    audio = 0.1 * torch.randn(b, t * SPF, generator=g)
    audio_lengths = torch.tensor([f * SPF - 100 for f in frames])  # the last frame is partly filled
    for i, f in enumerate(frames):
        video[i, f:] = garbage * torch.randn(t - f, 1, image_size, image_size, generator=g)
        audio[i, int(audio_lengths[i]) :] = garbage
    return {
        "video": video,
        "video_lengths": torch.tensor(frames),
        "audio": audio,
        "audio_lengths": audio_lengths,
    }


def take(inputs: dict, i: int) -> dict:
    """Utterance ``i`` alone, cut to its own length."""
    f, s = int(inputs["video_lengths"][i]), int(inputs["audio_lengths"][i])
    return {
        "video": inputs["video"][i : i + 1, :f],
        "video_lengths": inputs["video_lengths"][i : i + 1],
        "audio": inputs["audio"][i : i + 1, :s],
        "audio_lengths": inputs["audio_lengths"][i : i + 1],
    }


@pytest.fixture(scope="session")
def inputs_fn():
    return make_inputs


@pytest.fixture(scope="session")
def take_fn():
    return take
