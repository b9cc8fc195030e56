"""Architecture config of an AVSR model: one flat dataclass, so ``create_model(name, key=value)`` reaches
every field and a misspelt key fails at once. Derived numbers (samples per video frame) are computed
from ``sample_rate`` and ``fps``, never stored."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from avsr.frontends.frames import samples_per_frame
from avsr.fusion import MODALITIES

VIDEO_FRONTENDS = ("resnet18", "vatt")
AUDIO_FRONTENDS = ("conv", "fbank", "wav2vec2", "vatt")
ENCODERS = ("conformer", "transformer")


@dataclass
class AvsrConfig:
    """Everything that fixes the structure of an :class:`avsr.model.AvsrModel`."""

    name: str = "avsr"
    vocab_size: int = 40  # TokenSet.vocab_size: blank + units + sos/eos (LRS2 characters: 38 units + 2)
    modalities: str = "av"  # streams the model has: "a", "v" or "av"
    # inputs
    fps: float = 25.0
    sample_rate: int = 16_000
    in_channels: int = 1  # grayscale mouth crops
    # visual front-end
    video_frontend: str = "resnet18"  # "resnet18" (Conv3d stem + ResNet-18 trunk) or "vatt"
    video_resnet_layers: tuple[int, ...] = (2, 2, 2, 2)  # blocks per ResNet stage (ResNet-18: 2, 2, 2, 2)
    video_mean: float = 0.421  # normalisation of the crops; the VATT front-end undoes it
    video_std: float = 0.165
    # audio front-end
    audio_frontend: str = "conv"  # "conv" (raw waveform), "fbank" (log-mel), "wav2vec2" (torchaudio) or "vatt"
    audio_channels: int = 256
    audio_dim: int = 256
    audio_strides: tuple[int, ...] = ()  # conv strides; empty = factor sample_rate // fps
    audio_normalize: bool = True  # zero mean / unit variance per utterance
    audio_mels: int = 80  # log-mel bins of the fbank front-end
    wav2vec2_arch: str = "wav2vec2_base"  # a torchaudio.models factory, or "custom" (wav2vec2_kwargs = all fields)
    wav2vec2_kwargs: dict[str, Any] = field(default_factory=dict)
    # VATT tower front-ends
    vatt_model: str = "vatt_bbs"  # registry name of the VATT model whose tower is used
    vatt_overrides: dict[str, Any] = field(default_factory=dict)  # as stored in the VATT export
    vatt_image_size: int = 96  # crops resized to this (a multiple of the patch size)
    vatt_video_window: int = 0  # frames per tower clip; 0 = the VATT config's num_frames
    vatt_audio_window: int = 0  # frames per tower clip; 0 = the VATT config's audio_samples worth
    vatt_sample_rate: int = 48_000  # the audio tower's input rate (VATT: 48 kHz)
    # fusion
    fusion_hidden_dim: int = 1024
    audio_drop_prob: float = 0.25  # modality dropout in training, per utterance
    video_drop_prob: float = 0.25
    # encoder
    encoder: str = "conformer"  # "conformer" or "transformer"
    embed_dim: int = 256
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 4.0
    conv_kernel_size: int = 31
    dropout: float = 0.1
    # attention decoder
    decoder_depth: int = 6
    decoder_num_heads: int = 4
    decoder_mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        # exports store tuples as JSON lists
        self.video_resnet_layers = tuple(self.video_resnet_layers)
        self.audio_strides = tuple(self.audio_strides)
        checks = [
            ("modalities", self.modalities, MODALITIES),
            ("video_frontend", self.video_frontend, VIDEO_FRONTENDS),
            ("audio_frontend", self.audio_frontend, AUDIO_FRONTENDS),
            ("encoder", self.encoder, ENCODERS),
        ]
        for key, value, valid in checks:
            if value not in valid:
                raise ValueError(f"AVSR config {key}={value!r}; valid: {', '.join(valid)}")
        if self.embed_dim % self.num_heads or self.embed_dim % self.decoder_num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads and decoder_num_heads")
        if self.vocab_size < 3:
            raise ValueError("vocab_size counts blank, at least one unit and sos/eos")

    @property
    def samples_per_frame(self) -> int:
        return samples_per_frame(self.sample_rate, self.fps)


def apply_overrides(cfg: AvsrConfig, overrides: dict[str, Any]) -> AvsrConfig:
    """A copy of ``cfg`` with fields replaced; an unknown key raises ``KeyError`` naming the valid ones."""
    names = {f.name for f in dataclasses.fields(AvsrConfig)}
    for key in overrides:
        if key not in names:
            raise KeyError(f"unknown AVSR config key {key!r}; valid keys: {', '.join(sorted(names))}")
    return dataclasses.replace(cfg, **overrides)
