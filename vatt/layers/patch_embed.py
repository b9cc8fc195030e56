"""Tokenizers: raw video voxels, raw waveform patches (or their spectra) and word ids to token embeddings."""

from __future__ import annotations

import torch
from torch import nn


class VoxelEmbed(nn.Module):
    """Video (B, T, C, H, W) to a token grid (B, t, h, w, D) through a strided Conv3d over t x p x p voxels."""

    def __init__(self, in_chans: int, embed_dim: int, patch_time: int, patch_size: int):
        super().__init__()
        kernel = (patch_time, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.proj(video.transpose(1, 2))  # (B, C, T, H, W) -> (B, D, t, h, w)
        return x.permute(0, 2, 3, 4, 1)  # (B, t, h, w, D)


class WaveformEmbed(nn.Module):
    """Waveform (B, S) to tokens (B, n, D) through a strided Conv1d over patches of ``patch`` samples."""

    def __init__(self, embed_dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv1d(1, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(audio[:, None]).transpose(1, 2)  # (B, 1, S) -> (B, D, n) -> (B, n, D)


class SpectrogramEmbed(nn.Module):
    """Waveform (B, S) to tokens (B, n, D): one log-power spectrum per ``patch`` samples, then a Linear.

    Token i reads the Hann-windowed ``2 * patch`` samples centred on patch i (zeros beyond the ends), so
    there are ``S // patch`` tokens, as from :class:`WaveformEmbed`. The log spectrogram is standardised
    over each clip's time and frequency, which keeps the clip's loud and quiet moments apart but not its
    overall gain. Unlike raw patches, the spectrum does not depend on where a period starts in the patch:
    on short windows of speech that invariance is what a small tower cannot learn from raw samples.
    """

    def __init__(self, embed_dim: int, patch: int):
        super().__init__()
        if patch % 2:
            raise ValueError(f"audio_patch={patch} must be even for the spectrogram input")
        self.patch = patch
        self.register_buffer("window", torch.hann_window(2 * patch, periodic=True), persistent=False)
        self.proj = nn.Linear(patch + 1, embed_dim)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """The standardised log-power spectra (B, n, patch + 1), computed in float32 at least."""
        p = self.patch
        n = audio.shape[1] // p
        x = audio[:, : n * p].to(torch.promote_types(audio.dtype, torch.float32))
        x = nn.functional.pad(x, (p // 2, p // 2))  # frame i covers samples [i p - p/2, i p + 3p/2)
        spec = torch.stft(x, 2 * p, hop_length=p, window=self.window.to(x.dtype), center=False, return_complex=True)
        logp = torch.log(spec.real.square() + spec.imag.square() + 1e-10).transpose(1, 2)  # (B, n, p + 1)
        mean = logp.mean((1, 2), keepdim=True)
        std = logp.std((1, 2), keepdim=True).clamp(min=1e-5)
        return (logp - mean) / std

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(audio).to(self.proj.weight.dtype))


class WordEmbed(nn.Module):
    """Word ids (N, L) to tokens (N, L, D): a ``word_dim`` table, then Linear (no bias) + GELU to ``embed_dim``.

    The two steps mirror VATT's text input: a 300-d word2vec table (frozen in the paper) and a dense
    pre-projection with GELU into the transformer width. The table can be loaded from a file and frozen.
    """

    def __init__(self, vocab_size: int, word_dim: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.proj = nn.Linear(word_dim, embed_dim, bias=False)
        self.act = nn.GELU()

    def load_table(self, weight: torch.Tensor, trainable: bool = False) -> None:
        """Copy a (vocab_size, word_dim) matrix into the table; freeze it unless ``trainable``."""
        if tuple(weight.shape) != tuple(self.embed.weight.shape):
            raise ValueError(
                f"word-embedding matrix has shape {tuple(weight.shape)}, the model expects "
                f"{tuple(self.embed.weight.shape)} (vocab_size, text_word_dim)"
            )
        with torch.no_grad():
            self.embed.weight.copy_(weight)
        self.embed.weight.requires_grad_(trainable)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.act(self.proj(self.embed(ids)))  # (N, L, D)
