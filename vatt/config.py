"""Architecture configs for VATT models: dataclasses, so a misspelt override key fails at once.

A registered model is ``(name, overrides)``: the registry entry builds its default ``VattConfig`` and
``apply_overrides`` replaces fields. Keys may be flat top-level fields (``num_frames=8``), dotted paths into a
tower (``**{"video.depth": 2}``) or a dict for a tower (``video={"depth": 2}``); the pseudo-tower ``encoder``
changes all three towers at once (``**{"encoder.dropout": 0.0}``, handy for the shared VATT-MA transformer).
Everything is plain data, so ``(name, overrides)`` stored in an export rebuilds the same architecture.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EncoderConfig:
    """Size of one transformer (Table 7 of the VATT paper: layers / hidden / MLP / heads)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # VATT's dropout_rate: positions, attention probabilities, residual branches, MLP
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    qkv_bias: bool = True


# VATT paper, Table 7: the transformer sizes (the MLP is 4 x embed_dim wide in each, mlp_ratio's default)
ENCODER_SIZES: dict[str, dict[str, int]] = {
    "Small": {"embed_dim": 512, "depth": 6, "num_heads": 8},
    "Base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "Medium": {"embed_dim": 1024, "depth": 12, "num_heads": 16},
    "Large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def encoder_size(size: str) -> EncoderConfig:
    """A fresh :class:`EncoderConfig` of a Table 7 size (``"Small"``, ``"Base"``, ``"Medium"``, ``"Large"``)."""
    return EncoderConfig(**ENCODER_SIZES[size])


def small() -> EncoderConfig:
    return encoder_size("Small")


def base() -> EncoderConfig:
    return encoder_size("Base")


def medium() -> EncoderConfig:
    return encoder_size("Medium")


def large() -> EncoderConfig:
    return encoder_size("Large")


@dataclass
class VattConfig:
    """Everything that fixes a VATT model's structure; defaults are the paper's pretraining sizes."""

    name: str = "vatt"
    # inputs (the preprocessing config must agree; exports store both)
    num_frames: int = 32
    image_size: int = 224
    in_chans: int = 3
    audio_samples: int = 153_600  # 3.2 s at 48 kHz
    vocab_size: int = 2**16
    max_text_len: int = 16
    # tokenizers
    patch_time: int = 4
    patch_size: int = 16
    audio_patch: int = 128
    # "waveform": each patch of raw samples through a linear map (the paper); "spectrogram": the log-power
    # spectrum around each patch (vatt.layers.patch_embed.SpectrogramEmbed), the same number of tokens
    audio_input: str = "waveform"
    text_word_dim: int = 300  # the paper's frozen word2vec width; a linear layer maps it to the text width
    text_embed_file: str = ""  # optional frozen word-embedding matrix (see vatt.layers.word_embed)
    text_vocab_file: str = ""  # optional vocabulary of that matrix, one token per line (line i = id i)
    text_embed_trainable: bool | None = None  # None: trainable unless loaded from text_embed_file
    # text positions: T5 relative bias in the modality-specific text tower
    rel_pos_buckets: int = 32
    rel_pos_max_distance: int = 64
    # DropToken keep ratio for video and audio in training (1.0 = off)
    drop_token: float = 0.5
    # transformers
    video: EncoderConfig = field(default_factory=base)
    audio: EncoderConfig = field(default_factory=base)
    text: EncoderConfig = field(default_factory=small)
    shared_encoder: bool = False  # VATT-MA: one transformer for all modalities (video/audio/text must be equal)
    grad_checkpointing: bool = False
    # captions run through the text tower in this many groups of similar length, each cut to its longest
    # caption: padding is masked, so outputs are unchanged and the work shrinks with the spread of lengths
    text_length_groups: int = 4
    # FAC heads
    va_dim: int = 512
    vt_dim: int = 256
    bn_momentum: float = 0.1  # TF's 0.9 decay
    bn_eps: float = 1e-5
    audio_head_bn: bool = False  # a batch norm after the audio -> S_va projection (vatt.heads.FACHead)

    def __post_init__(self) -> None:
        for k in ("video", "audio", "text"):
            v = getattr(self, k)
            if isinstance(v, dict):
                setattr(self, k, _build(EncoderConfig, v, prefix=f"{k}."))
        self.validate()

    def validate(self) -> None:
        """Check derived sizes now, naming the field, rather than failing deep inside a forward pass."""
        if self.num_frames % self.patch_time:
            raise ValueError(f"num_frames={self.num_frames} must be a multiple of patch_time={self.patch_time}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if self.audio_input not in ("waveform", "spectrogram"):
            raise ValueError(f"audio_input={self.audio_input!r} must be 'waveform' or 'spectrogram'")
        if self.audio_samples < self.audio_patch:
            raise ValueError(f"audio_samples={self.audio_samples} is shorter than one audio_patch={self.audio_patch}")
        if not 0.0 < self.drop_token <= 1.0:
            raise ValueError(f"drop_token={self.drop_token} is a keep ratio in (0, 1]")
        for k in ("video", "audio", "text"):
            enc = getattr(self, k)
            if enc.embed_dim % enc.num_heads:
                raise ValueError(f"{k}.embed_dim={enc.embed_dim} must be divisible by {k}.num_heads={enc.num_heads}")
        if self.shared_encoder and not (self.video == self.audio == self.text):
            raise ValueError("shared_encoder=True needs identical video, audio and text encoder configs")

    @property
    def video_grid(self) -> tuple[int, int, int]:
        """Token grid (t, h, w) of the configured video input."""
        s = self.image_size // self.patch_size
        return self.num_frames // self.patch_time, s, s

    @property
    def audio_tokens(self) -> int:
        """Audio tokens of the configured input (a trailing partial patch is dropped, as by the Conv1d)."""
        return self.audio_samples // self.audio_patch


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise KeyError(f"unknown config key {prefix + k!r}; valid keys: {', '.join(sorted(names))}")
    return cls(**values)


def apply_overrides(cfg: VattConfig, overrides: dict[str, Any]) -> VattConfig:
    """A copy of ``cfg`` with ``overrides`` applied; an unknown key raises ``KeyError`` naming it."""
    top = {f.name: f for f in dataclasses.fields(VattConfig)}
    towers = ("video", "audio", "text")
    changes: dict[str, Any] = {}
    tower_changes: dict[str, dict[str, Any]] = {t: {} for t in towers}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head == "encoder":  # every tower
            vals = {rest: value} if rest else dict(value)
            for t in towers:
                tower_changes[t].update(vals)
            continue
        if head not in top:
            valid = ", ".join(sorted([*top, "encoder"]))
            raise KeyError(f"unknown VATT config key {key!r}; valid keys: {valid}")
        if rest:
            if head not in towers:
                raise KeyError(f"unknown VATT config key {key!r}: {head!r} has no sub-keys")
            tower_changes[head][rest] = value
        elif head in towers and isinstance(value, dict):
            tower_changes[head].update(value)
        else:
            changes[head] = value
    for t, vals in tower_changes.items():
        if vals:
            base_enc = changes.get(t, getattr(cfg, t))
            names = {f.name for f in dataclasses.fields(EncoderConfig)}
            for k in vals:
                if k not in names:
                    raise KeyError(f"unknown VATT config key '{t}.{k}'; valid keys: {', '.join(sorted(names))}")
            changes[t] = dataclasses.replace(base_enc, **vals)
    return dataclasses.replace(copy.deepcopy(cfg), **changes)
