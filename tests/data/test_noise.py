"""Additive noise: the measured SNR equals the requested one; babble is built from the given speech."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data.noise import AddNoise, BabbleNoise, load_audio, mix_at_snr, white_noise
from data.synth.mediawriter import write_mp4

SR = 16000


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Independent float64 reference: 10 log10(sum clean^2 / sum (noisy - clean)^2)."""
    clean = np.asarray(clean, np.float64)
    added = np.asarray(noisy, np.float64) - clean
    return 10 * np.log10((clean**2).sum() / (added**2).sum())


def speechlike(seconds: float, seed: int, amp: float = 0.1, sr: int = SR) -> np.ndarray:
    """An amplitude-modulated harmonic tone with pauses: not white, not stationary."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(90, 220)
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t), 0, None)
    return (amp * tone * envelope / 2).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sr: int = SR) -> Path:
    with av.open(str(path), "w", format="wav") as c:
        stream = c.add_stream("pcm_s16le", rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray((wave[None] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = sr, 0
        c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("babble")
    (folder / "spk1").mkdir()
    (folder / "spk2").mkdir()
    write_wav(folder / "spk1" / "00001.wav", speechlike(1.3, 1))
    write_wav(folder / "spk1" / "00002.wav", speechlike(0.9, 2))
    write_wav(folder / "spk2" / "00001.wav", speechlike(1.1, 3, sr=22050), sr=22050)  # another rate: resampled
    frames = np.full((10, 32, 32, 3), 80, np.uint8)  # speech inside a video file (LRS2-style mp4)
    write_mp4(folder / "spk2" / "00002.mp4", frames, 25.0, speechlike(0.4, 4), SR)
    (folder / "notes.txt").write_text("not audio")
    return folder


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_white_noise_at_requested_snr(snr):
    clean = torch.from_numpy(speechlike(2.0, 0))
    noise = white_noise(clean.shape[0], torch.Generator().manual_seed(1))
    noisy = mix_at_snr(clean, noise, snr)
    assert measured_snr(clean.numpy(), noisy.numpy()) == pytest.approx(snr, abs=1e-4)
    # The added part is the noise, only scaled.
    added = (noisy - clean).double().numpy()
    assert abs(np.corrcoef(added, noise.double().numpy())[0, 1] - 1) < 1e-6


def test_batched_snr_and_silence():
    clean = torch.from_numpy(np.stack([speechlike(1.0, s) for s in range(3)]))
    clean[2] = 0.0  # a silent row has no SNR: left as it is
    noise = torch.randn(3, clean.shape[1], generator=torch.Generator().manual_seed(0))
    noisy = mix_at_snr(clean, noise, torch.tensor([-5.0, 10.0, 0.0]))
    assert measured_snr(clean[0].numpy(), noisy[0].numpy()) == pytest.approx(-5.0, abs=1e-4)
    assert measured_snr(clean[1].numpy(), noisy[1].numpy()) == pytest.approx(10.0, abs=1e-4)
    assert torch.equal(noisy[2], clean[2])
    with pytest.raises(ValueError, match="shape"):
        mix_at_snr(clean, noise[:, :10], 0.0)


def test_load_audio_resamples_and_reads_video_files(speech_folder):
    wave = load_audio(speech_folder / "spk2" / "00001.wav", SR)
    assert abs(wave.shape[0] - round(1.1 * SR)) <= 2  # 22.05 kHz resampled to 16 kHz
    ref = speechlike(1.1, 3)
    # Compare with the 16 kHz version of the same signal, away from the edges.
    a, b = wave[200:-200].double().numpy(), ref[200 : 200 + wave.shape[0] - 400].astype(np.float64)
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert load_audio(speech_folder / "spk2" / "00002.mp4", SR).shape[0] >= round(0.4 * SR) - 2


def test_babble_mixes_talkers_from_the_folder_and_respects_exclusions(speech_folder):
    babble = BabbleNoise.from_folder(speech_folder, talkers=3, exclude=["spk1/00002"])
    names = sorted(f"{p.parent.name}/{p.name}" for p in babble.files)
    assert names == ["spk1/00001.wav", "spk2/00001.wav", "spk2/00002.mp4"]
    g = torch.Generator().manual_seed(0)
    out = babble(SR * 2, g)
    assert out.shape == (SR * 2,) and float(out.double().pow(2).mean()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="no speech files"):
        BabbleNoise([speech_folder / "spk1" / "00001.wav"], exclude=["00001"])


def test_single_talker_babble_is_a_looped_shift_of_the_file(speech_folder):
    path = speech_folder / "spk1" / "00002.wav"
    babble = BabbleNoise([path], talkers=1)
    out = babble(2 * SR, torch.Generator().manual_seed(5)).double().numpy()
    src = load_audio(path, SR).double().numpy()
    src = src / np.sqrt((src**2).mean())
    looped = np.tile(src, 4)
    # Score every start at once (circular cross-correlation through the FFT of the output folded onto
    # the file's period); the best one must reproduce the output exactly (up to the final scaling).
    L = len(src)
    folded = np.bincount(np.arange(len(out)) % L, weights=out, minlength=L)
    scores = np.fft.irfft(np.fft.rfft(src) * np.conj(np.fft.rfft(folded)), n=L)
    best = int(np.argmax(scores))
    seg = looped[best : best + 2 * SR]
    assert np.allclose(out, seg / np.sqrt((seg**2).mean()), atol=1e-5)


def test_add_noise_transform(speech_folder):
    clean = torch.from_numpy(speechlike(1.5, 9, amp=0.05))
    babble = BabbleNoise.from_folder(speech_folder, talkers=2)
    for kind in ("white", "babble"):
        t = AddNoise(kind, -5.0, babble=babble, seed=3, deterministic=True)
        a, b, c = t(clean, "spk/00001"), t(clean, "spk/00001"), t(clean, "spk/00002")
        assert torch.equal(a, b) and not torch.equal(a, c)  # the noise of an utterance depends on its id only
        assert measured_snr(clean.numpy(), a.numpy()) == pytest.approx(-5.0, abs=0.05)  # small clipping allowed
    ranged = AddNoise("white", (0.0, 10.0), seed=1, deterministic=True)
    snrs = [measured_snr(clean.numpy(), ranged(clean, f"k{i}").numpy()) for i in range(20)]
    assert min(snrs) >= -1e-3 and max(snrs) <= 10 + 1e-3 and max(snrs) - min(snrs) > 3
    never = AddNoise("white", 0.0, prob=0.0)
    assert torch.equal(never(clean, "x"), clean)
    with pytest.raises(ValueError, match="folder of speech"):
        AddNoise("babble", 0.0)
