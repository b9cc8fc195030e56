"""Builders: an :class:`~avsr.config.AvsrConfig` -> built parts -> :class:`~avsr.model.AvsrModel`.

This is the one place where config strings (front-end and encoder names) become classes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from avsr.config import AvsrConfig
from avsr.decoder import TransformerDecoder
from avsr.encoder import ConformerEncoder, TransformerEncoder
from avsr.frontends import (
    ConvAudioFrontend,
    FbankAudioFrontend,
    ResNetVideoFrontend,
    VattAudioFrontend,
    VattVideoFrontend,
    Wav2Vec2AudioFrontend,
)
from avsr.fusion import Fusion
from avsr.model import AvsrModel


def build_video_frontend(cfg: AvsrConfig) -> nn.Module:
    if cfg.video_frontend == "resnet18":
        return ResNetVideoFrontend(cfg.in_channels, cfg.video_resnet_layers)
    return VattVideoFrontend(
        cfg.vatt_model,
        cfg.vatt_overrides,
        image_size=cfg.vatt_image_size,
        window_frames=cfg.vatt_video_window,
        video_mean=cfg.video_mean,
        video_std=cfg.video_std,
    )


def build_audio_frontend(cfg: AvsrConfig) -> nn.Module:
    spf = cfg.samples_per_frame
    if cfg.audio_frontend == "conv":
        return ConvAudioFrontend(spf, cfg.audio_channels, cfg.audio_dim, cfg.audio_strides, cfg.audio_normalize)
    if cfg.audio_frontend == "fbank":
        return FbankAudioFrontend(spf, cfg.sample_rate, cfg.audio_channels, cfg.audio_dim, cfg.audio_mels)
    if cfg.audio_frontend == "wav2vec2":
        return Wav2Vec2AudioFrontend(spf, cfg.wav2vec2_arch, cfg.wav2vec2_kwargs)
    return VattAudioFrontend(
        cfg.vatt_model,
        spf,
        cfg.sample_rate,
        cfg.vatt_overrides,
        tower_sample_rate=cfg.vatt_sample_rate,
        window_frames=cfg.vatt_audio_window,
    )


def build_encoder(cfg: AvsrConfig) -> nn.Module:
    if cfg.encoder == "conformer":
        return ConformerEncoder(
            cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.conv_kernel_size, cfg.dropout
        )
    return TransformerEncoder(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)


def build_model(cfg: AvsrConfig, model_name: str = "", overrides: dict[str, Any] | None = None) -> AvsrModel:
    video = build_video_frontend(cfg) if "v" in cfg.modalities else None
    audio = build_audio_frontend(cfg) if "a" in cfg.modalities else None
    fusion = Fusion(
        video.out_dim if video is not None else 0,
        audio.out_dim if audio is not None else 0,
        cfg.embed_dim,
        cfg.fusion_hidden_dim,
        cfg.dropout,
        cfg.audio_drop_prob,
        cfg.video_drop_prob,
    )
    decoder = TransformerDecoder(
        cfg.vocab_size, cfg.embed_dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_mlp_ratio, cfg.dropout
    )
    ctc_head = nn.Linear(cfg.embed_dim, cfg.vocab_size)
    return AvsrModel(cfg, video, audio, fusion, build_encoder(cfg), ctc_head, decoder, model_name, overrides)
