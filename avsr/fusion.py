"""Fusion of per-frame audio and visual features, with modality dropout.

Each stream is layer-normalised, a missing or dropped stream is replaced by zeros (the mean of a
normalised stream), the two are concatenated and an MLP maps them to the encoder width:
``MLP([LN(v_t) * keep_v ; LN(a_t) * keep_a])`` per frame ``t``.

Modality dropout (training only): for each utterance, with probability ``audio_drop_prob`` the audio
stream is zeroed, else with probability ``video_drop_prob`` the video stream is, for the whole
utterance; so the one model also learns the visual-only and audio-only inputs. At inference the
``modality`` argument of the model zeroes the absent stream in exactly the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODALITIES = ("a", "v", "av")


class Fusion(nn.Module):
    """Concatenate + MLP over per-frame features of the streams this model has."""

    def __init__(
        self,
        video_dim: int,
        audio_dim: int,
        embed_dim: int,
        hidden_dim: int,
        dropout: float = 0.1,
        audio_drop_prob: float = 0.0,
        video_drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if audio_drop_prob < 0 or video_drop_prob < 0 or audio_drop_prob + video_drop_prob > 1:
            raise ValueError(f"modality dropout {audio_drop_prob=} {video_drop_prob=} must be >= 0 and sum to <= 1")
        self.video_dim, self.audio_dim = video_dim, audio_dim  # 0 = this model has no such stream
        self.video_norm = nn.LayerNorm(video_dim) if video_dim else None
        self.audio_norm = nn.LayerNorm(audio_dim) if audio_dim else None
        self.mlp = nn.Sequential(
            nn.Linear(video_dim + audio_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, embed_dim),
        )
        self.audio_drop_prob = audio_drop_prob
        self.video_drop_prob = video_drop_prob

    def forward(self, video: Tensor | None, audio: Tensor | None) -> Tensor:
        """(B, T, video_dim) and/or (B, T, audio_dim), None for an absent stream -> (B, T, embed_dim)."""
        ref = video if video is not None else audio
        if ref is None:
            raise ValueError("fusion needs at least one stream")
        b, t = ref.shape[:2]
        parts = []
        keep_v, keep_a = self._keep(b, ref.device, video is not None, audio is not None)
        if self.video_norm is not None:
            v = (
                self.video_norm(video) * keep_v[:, None, None]
                if video is not None
                else ref.new_zeros(b, t, self.video_dim)
            )
            parts.append(v)
        if self.audio_norm is not None:
            a = (
                self.audio_norm(audio) * keep_a[:, None, None]
                if audio is not None
                else ref.new_zeros(b, t, self.audio_dim)
            )
            parts.append(a)
        return self.mlp(torch.cat(parts, dim=-1))  # (B, T, embed_dim)

    def columns(self, modality: str) -> slice:
        """The input columns of the MLP's first layer that read stream ``"v"`` or ``"a"``."""
        if modality == "v" and self.video_dim:
            return slice(0, self.video_dim)
        if modality == "a" and self.audio_dim:
            return slice(self.video_dim, self.video_dim + self.audio_dim)
        raise ValueError(f"this fusion has no {modality!r} stream")

    def _keep(self, b: int, device: torch.device, has_v: bool, has_a: bool) -> tuple[Tensor, Tensor]:
        ones = torch.ones(b, device=device)
        if not (self.training and has_v and has_a) or self.audio_drop_prob + self.video_drop_prob == 0:
            return ones, ones
        u = torch.rand(b, device=device)
        drop_a = u < self.audio_drop_prob
        drop_v = (u >= self.audio_drop_prob) & (u < self.audio_drop_prob + self.video_drop_prob)
        return (~drop_v).to(ones.dtype), (~drop_a).to(ones.dtype)
