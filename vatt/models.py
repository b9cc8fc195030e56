"""Registered VATT architectures: the paper's models and CPU-sized ones, built from (name, overrides).

Every entry accepts keyword overrides of ``VattConfig`` fields (see ``vatt.config.apply_overrides``), e.g.
``create_model("vatt_tiny", num_frames=8, image_size=64, audio_samples=12800, vocab_size=1000)``.
"""

from __future__ import annotations

from typing import Any

from vatt.config import EncoderConfig, VattConfig, apply_overrides, base, large, medium, small
from vatt.model import VattModel
from vatt.registry import register_model


def _build(name: str, cfg: VattConfig, overrides: dict[str, Any]) -> VattModel:
    cfg = apply_overrides(cfg, overrides)
    return VattModel(cfg, model_name=name, overrides=overrides)


# Registry entries look alike on purpose: each spells out its whole architecture where a reader looks for it.
@register_model
def vatt_bbs(**overrides: Any) -> VattModel:
    """VATT-BBS: Base video, Base audio, Small text transformers (paper total 197M)."""
    return _build("vatt_bbs", VattConfig(name="vatt_bbs", video=base(), audio=base(), text=small()), overrides)


@register_model
def vatt_mbs(**overrides: Any) -> VattModel:
    """VATT-MBS: Medium video, Base audio, Small text transformers (paper total 264M)."""
    return _build("vatt_mbs", VattConfig(name="vatt_mbs", video=medium(), audio=base(), text=small()), overrides)


@register_model
def vatt_lbs(**overrides: Any) -> VattModel:
    """VATT-LBS: Large video, Base audio, Small text transformers (paper total 415M)."""
    return _build("vatt_lbs", VattConfig(name="vatt_lbs", video=large(), audio=base(), text=small()), overrides)


@register_model
def vatt_ma_medium(**overrides: Any) -> VattModel:
    """VATT-MA-Medium: one shared Medium transformer for video, audio and text (paper 155M)."""
    cfg = VattConfig(name="vatt_ma_medium", video=medium(), audio=medium(), text=medium(), shared_encoder=True)
    return _build("vatt_ma_medium", cfg, overrides)


def _tiny_encoder() -> EncoderConfig:
    return EncoderConfig(embed_dim=128, depth=3, num_heads=4, dropout=0.0)


@register_model
def vatt_tiny(**overrides: Any) -> VattModel:
    """CPU demo size: width 128, 3 layers per tower; 8 frames of 64x64, 0.8 s of 16 kHz audio."""
    cfg = VattConfig(
        name="vatt_tiny",
        num_frames=8,
        image_size=64,
        audio_samples=12_800,
        vocab_size=8000,
        text_word_dim=128,
        drop_token=1.0,
        video=_tiny_encoder(),
        audio=_tiny_encoder(),
        text=_tiny_encoder(),
        va_dim=256,
        vt_dim=128,
    )
    return _build("vatt_tiny", cfg, overrides)


def _test_encoder() -> EncoderConfig:
    return EncoderConfig(embed_dim=32, depth=2, num_heads=2, dropout=0.0)


@register_model
def vatt_test(**overrides: Any) -> VattModel:
    """Test size: width 32, 2 layers; 4 frames of 32x32, 1280 audio samples, 100 words."""
    cfg = VattConfig(
        name="vatt_test",
        num_frames=4,
        image_size=32,
        audio_samples=1280,
        vocab_size=100,
        max_text_len=8,
        text_word_dim=16,
        drop_token=1.0,
        video=_test_encoder(),
        audio=_test_encoder(),
        text=_test_encoder(),
        va_dim=24,
        vt_dim=16,
    )
    return _build("vatt_test", cfg, overrides)
