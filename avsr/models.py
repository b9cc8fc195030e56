"""Registered AVSR architectures, built from (name, overrides) like the VATT ones.

Every entry accepts keyword overrides of :class:`avsr.config.AvsrConfig` fields, e.g.
``create_model("avsr_conformer_small", vocab_size=tokens.vocab_size, modalities="v")`` or, with VATT towers
as front-ends, ``create_model("avsr_conformer_small", video_frontend="vatt", audio_frontend="vatt",
vatt_model="vatt_mbs", vatt_overrides=export.overrides)``.
"""

from __future__ import annotations

from typing import Any

from avsr.build import build_model
from avsr.config import AvsrConfig, apply_overrides
from avsr.model import AvsrModel
from avsr.registry import register_model


def _build(name: str, cfg: AvsrConfig, overrides: dict[str, Any]) -> AvsrModel:
    return build_model(apply_overrides(cfg, overrides), model_name=name, overrides=overrides)


# Registry entries look alike on purpose: each spells out its whole architecture where a reader looks for it.
@register_model
def avsr_conformer_base(**overrides: Any) -> AvsrModel:
    """auto_avsr's sizes: Conformer 12 x 768 (12 heads, FFN 3072, kernel 31), decoder 6 x 768."""
    cfg = AvsrConfig(
        name="avsr_conformer_base",
        embed_dim=768,
        depth=12,
        num_heads=12,
        decoder_depth=6,
        decoder_num_heads=12,
        fusion_hidden_dim=4096,
        audio_channels=512,
        audio_dim=512,
    )
    return _build("avsr_conformer_base", cfg, overrides)


@register_model
def avsr_conformer_small(**overrides: Any) -> AvsrModel:
    """Conformer 12 x 256 (4 heads, FFN 1024, kernel 31), decoder 6 x 256; ResNet-18 and raw-waveform front-ends."""
    cfg = AvsrConfig(name="avsr_conformer_small", embed_dim=256, depth=12, num_heads=4, decoder_depth=6)
    return _build("avsr_conformer_small", cfg, overrides)


@register_model
def avsr_transformer_tiny(**overrides: Any) -> AvsrModel:
    """CPU demo size: transformer 4 x 128, decoder 2 x 128, a one-block-per-stage ResNet trunk."""
    cfg = AvsrConfig(
        name="avsr_transformer_tiny",
        encoder="transformer",
        embed_dim=128,
        depth=4,
        num_heads=4,
        decoder_depth=2,
        decoder_num_heads=4,
        fusion_hidden_dim=256,
        video_resnet_layers=(1, 1, 1, 1),
        audio_channels=64,
        audio_dim=128,
    )
    return _build("avsr_transformer_tiny", cfg, overrides)


@register_model
def avsr_test(**overrides: Any) -> AvsrModel:
    """Test size: Conformer 2 x 32 (kernel 5), decoder 1 x 32, one block per ResNet stage, 16 audio channels."""
    cfg = AvsrConfig(
        name="avsr_test",
        embed_dim=32,
        depth=2,
        num_heads=2,
        conv_kernel_size=5,
        decoder_depth=1,
        decoder_num_heads=2,
        fusion_hidden_dim=64,
        video_resnet_layers=(1, 1, 1, 1),
        audio_channels=16,
        audio_dim=32,
        vatt_model="vatt_test",
        vatt_image_size=32,
    )
    return _build("avsr_test", cfg, overrides)
