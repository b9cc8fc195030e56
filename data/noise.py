"""Additive noise at a chosen signal-to-noise ratio: white noise, or babble from a folder of speech.

The SNR is measured over the whole utterance, as AVSR papers report it: the noise is scaled so that
``10 log10(P_signal / P_noise) = snr_db`` with ``P`` the mean square. Babble is the sum of several
utterances drawn from a folder of speech the user provides (which must not hold the evaluation set;
:class:`BabbleNoise` can exclude files by clip id). :class:`AddNoise` is the dataset transform for
training augmentation (random SNR, probability) and for evaluation at a fixed SNR, where the noise of
an utterance depends only on its id and the seed, so every run and worker sees the same noisy audio.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from data.media import MediaError, load_audio

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".mp4", ".mkv", ".webm")


def power(x: torch.Tensor) -> torch.Tensor:
    """Mean square over the last axis (float64 for a stable ratio of small numbers)."""
    return x.double().pow(2).mean(dim=-1)


def snr_db(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """10 log10 of the power ratio of ``clean`` to ``noise`` over the last axis."""
    return 10.0 * torch.log10(power(clean) / power(noise))


def mix_at_snr(clean: torch.Tensor, noise: torch.Tensor, snr: float | torch.Tensor) -> torch.Tensor:
    """``clean + g * noise`` with ``g`` chosen so the mixture has the requested SNR in dB.

    ``clean`` and ``noise`` are (..., S); ``snr`` a number or a tensor broadcasting over the leading
    axes. A silent signal has no defined SNR and is returned unchanged. No clipping is applied (clip
    afterwards if the consumer needs [-1, 1]; that changes the SNR slightly)."""
    if clean.shape != noise.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and noise {tuple(noise.shape)} differ in shape")
    p_clean, p_noise = power(clean), power(noise)
    snr = torch.as_tensor(snr, dtype=torch.float64)
    gain = torch.sqrt(p_clean / (p_noise.clamp_min(1e-30) * 10.0 ** (snr / 10.0)))
    gain = torch.where(p_clean > 0, gain, torch.zeros_like(gain))
    return clean + (gain[..., None] * noise.double()).to(clean.dtype)


def white_noise(num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian white noise (num_samples,) with unit variance."""
    return torch.randn(num_samples, generator=generator)


class BabbleNoise:
    """Babble: ``talkers`` utterances from a pool of speech files, each at unit power and a random
    circular offset, summed. The pool is decoded once (up to ``max_files`` files, chosen by ``seed``;
    at most the first ``max_seconds`` of each, so a folder of long recordings cannot fill the memory).

    ``exclude`` lists clip ids (``<programme>/<clip>``) or file stems whose files must not be used,
    e.g. the ids of the evaluation split when the folder is a whole corpus."""

    def __init__(
        self,
        files: Sequence[str | Path],
        sample_rate: int = 16000,
        talkers: int = 6,
        max_files: int = 200,
        exclude: Iterable[str] = (),
        seed: int = 0,
        max_seconds: float | None = 60.0,
    ) -> None:
        if talkers < 1:
            raise ValueError(f"babble needs at least one talker, got {talkers}")
        excluded = set(exclude)

        def allowed(p: Path) -> bool:
            rel = f"{p.parent.name}/{p.stem}"
            return rel not in excluded and p.stem not in excluded and str(p) not in excluded

        paths = sorted({Path(f) for f in files if allowed(Path(f))})
        if not paths:
            raise ValueError("no speech files left for babble noise (empty folder or everything excluded)")
        rng = np.random.default_rng(seed)
        if len(paths) > max_files:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), max_files, replace=False))]
        self.sample_rate = sample_rate
        self.talkers = talkers
        self.files = paths
        self.pool: list[torch.Tensor] = []
        for p in paths:
            try:
                wave = load_audio(p, sample_rate, max_seconds)
            except MediaError as exc:
                logger.warning("babble: skipping %s (%s)", p, exc)
                continue
            p_wave = float(power(wave))
            if p_wave > 0:
                self.pool.append(wave / math.sqrt(p_wave))
        if not self.pool:
            raise ValueError("none of the babble files has audible audio")
        logger.info("babble noise from %d files, %d talkers", len(self.pool), talkers)

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs: object) -> BabbleNoise:
        """All audio/video files under ``folder`` (recursively)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"babble folder {folder} does not exist")
        files = [p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()]
        return cls(files, **kwargs)  # type: ignore[arg-type]

    def __call__(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Babble (num_samples,) with unit power."""
        out = torch.zeros(num_samples, dtype=torch.float64)
        picks = torch.randint(len(self.pool), (self.talkers,), generator=generator)
        for k in picks.tolist():
            wave = self.pool[k]
            reps = -(-num_samples // wave.shape[0])  # loop short utterances
            tiled = wave.repeat(reps + 1)
            start = int(torch.randint(wave.shape[0], (1,), generator=generator))
            out += tiled[start : start + num_samples].double()
        p = float(out.pow(2).mean())
        return (out / math.sqrt(p) if p > 0 else out).float()


def item_seed(seed: int, key: str) -> int:
    """A stable per-utterance seed (the same in every process and run)."""
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**62)


class AddNoise:
    """Audio transform ``(audio (S,), key) -> noisy audio (S,)`` clipped to [-1, 1].

    ``snr_db`` is a fixed SNR or a ``(low, high)`` range drawn uniformly per utterance; ``prob`` is the
    chance an utterance gets noise. With ``deterministic=True`` (evaluation) the draw depends only on
    ``(seed, key)``; otherwise on torch's global generator (seeded per item by the sampler)."""

    def __init__(
        self,
        kind: Literal["white", "babble"],
        snr_db: float | tuple[float, float],
        prob: float = 1.0,
        babble: BabbleNoise | None = None,
        seed: int = 0,
        deterministic: bool = False,
    ) -> None:
        if kind == "babble" and babble is None:
            raise ValueError("babble noise needs a BabbleNoise (a folder of speech that is not the test set)")
        if kind not in ("white", "babble"):
            raise ValueError(f"unknown noise kind {kind!r}; expected 'white' or 'babble'")
        self.kind = kind
        self.snr_db = snr_db
        self.prob = prob
        self.babble = babble
        self.seed = seed
        self.deterministic = deterministic

    def __call__(self, audio: torch.Tensor, key: str = "") -> torch.Tensor:
        gen = torch.Generator().manual_seed(item_seed(self.seed, key)) if self.deterministic else None
        if self.prob < 1.0 and float(torch.rand((), generator=gen)) >= self.prob:
            return audio
        if isinstance(self.snr_db, (tuple, list)):
            lo, hi = self.snr_db
            snr = lo + (hi - lo) * float(torch.rand((), generator=gen))
        else:
            snr = float(self.snr_db)
        n = audio.shape[-1]
        noise = white_noise(n, gen) if self.kind == "white" else self.babble(n, gen)  # type: ignore[misc]
        return mix_at_snr(audio, noise, snr).clamp(-1.0, 1.0)
