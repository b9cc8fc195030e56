"""Video, audio and text towers with one interface: ``forward(...) -> {"tokens": (B, N, D), "pooled": (B, D)}``.

Each tower is tokenizer -> positions -> (DropToken) -> transformer with an AGG token; "pooled" is the AGG
output and "tokens" the outputs of the other positions (after DropToken when it is active; in eval mode
video tokens are in (t, h, w) raster order and audio tokens in time order, see ``token_grid``).

Modality-specific towers (VATT-BBS/MBS/LBS) own their transformer. The modality-agnostic VATT-MA passes one
shared ``Encoder`` to all three towers and adds VATT's per-modality pre- and post-transformer projections
(Dense + GELU); the shared encoder is then registered once, on the model, not inside each tower.
"""

from __future__ import annotations

import torch
from torch import nn

from vatt.config import EncoderConfig, VattConfig
from vatt.encoder import Encoder
from vatt.layers.drop import DropToken
from vatt.layers.mask import make_pad_mask
from vatt.layers.patch_embed import SpectrogramEmbed, VoxelEmbed, WaveformEmbed, WordEmbed
from vatt.layers.pos_embed import SpatioTemporalPositions, TemporalPositions
from vatt.layers.rel_pos_bias import RelativePositionBias
from vatt.layers.word_embed import load_word_embeddings


def _projection(dim: int) -> nn.Module:
    """VATT-MA's per-modality pre/post-transformer projection: Dense + GELU."""
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU())


class _Tower(nn.Module):
    """Shared plumbing: the AGG token and either an own or a shared (unregistered) encoder."""

    def _init_tower(
        self, enc_cfg: EncoderConfig, encoder: Encoder | None, grad_checkpointing: bool, pre_proj: bool = True
    ) -> None:
        self.embed_dim = enc_cfg.embed_dim
        self.agg_token = nn.Parameter(torch.zeros(enc_cfg.embed_dim))
        nn.init.trunc_normal_(self.agg_token, std=0.02)
        if encoder is None:
            self.encoder = Encoder(enc_cfg)
            self.encoder.set_grad_checkpointing(grad_checkpointing)
        else:
            self._shared_encoder = (encoder,)  # a tuple is not registered: the owner holds the weights once
        projections = encoder is not None
        self.pre_proj = _projection(enc_cfg.embed_dim) if projections and pre_proj else nn.Identity()
        self.post_proj = _projection(enc_cfg.embed_dim) if projections else nn.Identity()

    @property
    def transformer(self) -> Encoder:
        return self.encoder if "encoder" in self._modules else self._shared_encoder[0]

    def _encode(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        tokens, pooled = self.transformer(x, self.agg_token, attn_mask)
        tokens, pooled = self.post_proj(tokens), self.post_proj(pooled)
        return {"tokens": tokens, "pooled": pooled}


class VideoTower(_Tower):
    """Raw frames (B, T, C, H, W) in [-1, 1] -> 4x16x16 voxel tokens + e_t + e_h + e_w -> transformer."""

    def __init__(self, cfg: VattConfig, encoder: Encoder | None = None):
        super().__init__()
        enc = cfg.video
        self.patch_time, self.patch_size = cfg.patch_time, cfg.patch_size
        self.patch_embed = VoxelEmbed(cfg.in_chans, enc.embed_dim, cfg.patch_time, cfg.patch_size)
        self.pos_embed = SpatioTemporalPositions(cfg.video_grid, enc.embed_dim, enc.dropout, enc.ln_eps)
        self.drop_token = DropToken(cfg.drop_token)
        self._init_tower(enc, encoder, cfg.grad_checkpointing)

    def token_grid(self, num_frames: int, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
        """Token grid (t, h, w) for an input of ``num_frames`` frames of ``image_size``."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return num_frames // self.patch_time, h // self.patch_size, w // self.patch_size

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """Tokens entering the transformer (B, N, D): after positions and, in training, DropToken."""
        x = self.pre_proj(self.patch_embed(video))  # (B, t, h, w, D)
        x = self.pos_embed(x)  # (B, t*h*w, D)
        return self.drop_token(x)  # (B, N, D)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._encode(self.embed(video))


class AudioTower(_Tower):
    """Raw waveform (B, S) in [-1, 1] -> 128-sample patches (or their spectra) + learned 1-D positions ->
    transformer."""

    def __init__(self, cfg: VattConfig, encoder: Encoder | None = None):
        super().__init__()
        enc = cfg.audio
        self.patch = cfg.audio_patch
        embed = SpectrogramEmbed if cfg.audio_input == "spectrogram" else WaveformEmbed
        self.patch_embed = embed(enc.embed_dim, cfg.audio_patch)
        self.pos_embed = TemporalPositions(cfg.audio_tokens, enc.embed_dim, enc.dropout, enc.ln_eps, resample=True)
        self.drop_token = DropToken(cfg.drop_token)
        self._init_tower(enc, encoder, cfg.grad_checkpointing)

    def token_grid(self, num_samples: int) -> tuple[int]:
        """Number of audio tokens for ``num_samples`` samples (a trailing partial patch is dropped)."""
        return (num_samples // self.patch,)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.pre_proj(self.patch_embed(audio))  # (B, n, D)
        return self.drop_token(self.pos_embed(x))  # (B, N, D)

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._encode(self.embed(audio))


class TextTower(_Tower):
    """Token ids (N, L) with lengths (N,) -> word table + Linear/GELU -> transformer over real tokens only.

    Modality-specific: T5 relative position bias (shared by all layers), as VATT's Small text model.
    Modality-agnostic: learned 1-D positions (VATT-MA's released code). Padded positions are masked out
    of attention, so a caption encodes the same alone and inside a padded batch. Text is never dropped.
    """

    def __init__(self, cfg: VattConfig, encoder: Encoder | None = None):
        super().__init__()
        enc = cfg.text
        self.word_embed = WordEmbed(cfg.vocab_size, cfg.text_word_dim, enc.embed_dim)
        self.vocab: list[str] | None = None
        if cfg.text_embed_file:
            matrix, self.vocab = load_word_embeddings(cfg.text_embed_file, cfg.text_vocab_file)
            trainable = bool(cfg.text_embed_trainable)  # None (default) -> frozen, as in the paper
            self.word_embed.load_table(matrix, trainable=trainable)
        elif cfg.text_embed_trainable is False:
            self.word_embed.embed.weight.requires_grad_(False)
        if encoder is None:
            self.rel_pos = RelativePositionBias(enc.num_heads, cfg.rel_pos_buckets, cfg.rel_pos_max_distance)
            self.pos_embed = None
            self.embed_drop = nn.Dropout(enc.dropout)
        else:
            self.rel_pos = None
            self.pos_embed = TemporalPositions(cfg.max_text_len, enc.embed_dim, enc.dropout, enc.ln_eps, resample=False)
        # WordEmbed's Linear + GELU already is VATT's text pre-projection
        self._init_tower(enc, encoder, cfg.grad_checkpointing, pre_proj=False)

    def forward(self, text_ids: torch.Tensor, text_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        N, L = text_ids.shape
        x = self.word_embed(text_ids)  # (N, L, D)
        x = self.embed_drop(x) if self.pos_embed is None else self.pos_embed(x)
        keep = ~make_pad_mask(text_lengths.clamp(max=L), L)  # (N, L) True at real tokens
        keep = torch.cat([keep.new_ones(N, 1), keep], dim=1)[:, None, None, :]  # (N, 1, 1, 1 + L), AGG always kept
        if self.rel_pos is not None:
            bias = self.rel_pos(L + 1)  # (1, heads, 1 + L, 1 + L)
            attn_mask = bias.masked_fill(~keep, float("-inf"))  # (N, heads, 1 + L, 1 + L)
        else:
            attn_mask = keep
        return self._encode(x, attn_mask)


def build_video_tower(cfg: VattConfig, encoder: Encoder | None = None) -> VideoTower:
    return VideoTower(cfg, encoder)


def build_audio_tower(cfg: VattConfig, encoder: Encoder | None = None) -> AudioTower:
    return AudioTower(cfg, encoder)


def build_text_tower(cfg: VattConfig, encoder: Encoder | None = None) -> TextTower:
    return TextTower(cfg, encoder)
