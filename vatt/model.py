"""The multimodal VATT model: three towers (or one shared transformer), FAC heads, L2-normalised outputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vatt.config import VattConfig
from vatt.encoder import Encoder
from vatt.heads import FACHead
from vatt.towers import build_audio_tower, build_text_tower, build_video_tower


class VattModel(nn.Module):
    """VATT (Akbari et al. 2021): video, audio and text transformers mapped into S_va and S_vt.

    ``encode_video(video (B, T, C, H, W)) -> {"video_va", "video_vt"}``, ``encode_audio(audio (B, S)) ->
    {"audio_va"}``, ``encode_text(text_ids (N, L), text_lengths (N,)) -> {"text_vt"}``; ``forward`` runs all
    three with text of P positives per clip (B, P, L) and returns ``text_vt`` as (B, P, D_vt). All outputs
    are L2-normalised. With ``cfg.shared_encoder`` (VATT-MA) one transformer, held here as ``encoder``,
    serves all modalities, which pass through it separately.
    """

    def __init__(self, cfg: VattConfig, model_name: str = "", overrides: dict[str, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        self.model_name = model_name or cfg.name
        self.overrides = dict(overrides or {})  # with model_name: enough to rebuild via create_model
        shared = None
        if cfg.shared_encoder:
            self.encoder = shared = Encoder(cfg.video)
            shared.set_grad_checkpointing(cfg.grad_checkpointing)
        self.video_tower = build_video_tower(cfg, shared)
        self.audio_tower = build_audio_tower(cfg, shared)
        self.text_tower = build_text_tower(cfg, shared)
        self.head = FACHead(
            cfg.video.embed_dim,
            cfg.audio.embed_dim,
            cfg.text.embed_dim,
            cfg.va_dim,
            cfg.vt_dim,
            cfg.bn_momentum,
            cfg.bn_eps,
            cfg.audio_head_bn,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, Encoder):
                m.set_grad_checkpointing(enable)

    def encode_video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        va, vt = self.head.video(self.video_tower(video)["pooled"])
        return {"video_va": F.normalize(va, dim=-1), "video_vt": F.normalize(vt, dim=-1)}

    def encode_audio(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        va = self.head.audio(self.audio_tower(audio)["pooled"])
        return {"audio_va": F.normalize(va, dim=-1)}

    def encode_text(self, text_ids: torch.Tensor, text_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        vt = self.head.text(self._pooled_text(text_ids, text_lengths))
        return {"text_vt": F.normalize(vt, dim=-1)}

    def _pooled_text(self, text_ids: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """Text tower's pooled output (N, D), computed in ``cfg.text_length_groups`` groups of similar length."""
        groups = self.cfg.text_length_groups
        if groups <= 1 or text_ids.shape[0] < 2 * groups:
            return self.text_tower(text_ids, text_lengths)["pooled"]
        order = text_lengths.argsort()
        pooled = []
        for idx in order.tensor_split(groups):
            longest = max(int(text_lengths[idx].max()), 1)
            pooled.append(self.text_tower(text_ids[idx, :longest], text_lengths[idx])["pooled"])
        return torch.cat(pooled)[order.argsort()]  # back to the input order

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, text_ids: torch.Tensor, text_lengths: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        B, P, L = text_ids.shape
        out = {**self.encode_video(video), **self.encode_audio(audio)}
        text = self.encode_text(text_ids.reshape(B * P, L), text_lengths.reshape(B * P))["text_vt"]
        out["text_vt"] = text.reshape(B, P, -1)  # (B, P, D_vt)
        return out
