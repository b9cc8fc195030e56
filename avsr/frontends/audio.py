"""Audio front-ends: 16 kHz waveforms -> one feature per video frame.

* :class:`ConvAudioFrontend` — a raw-waveform convolution stack whose strides multiply to the number of
  samples per video frame (``sample_rate // fps``, 640 for 16 kHz and 25 fps), so its output rate is the
  video frame rate by construction.
* :class:`FbankAudioFrontend` — log-mel filterbanks (torchaudio) and two stride-2 convolutions, the
  ESPnet-style input: learns far faster than raw samples when data and compute are small.
* :class:`Wav2Vec2AudioFrontend` — ``torchaudio.models.wav2vec2_model`` (as in Pan et al. 2022), its
  transformer output mapped from its own rate (50 Hz for the standard extractor) to video frames with
  :func:`avsr.frontends.frames.tokens_to_frames`. Pretrained weights are a state dict of torchaudio's
  ``Wav2Vec2Model`` (for example ``torchaudio.pipelines.WAV2VEC2_BASE.get_model().state_dict()`` saved
  with ``torch.save``), read with :func:`read_state_dict` and loaded with
  :meth:`Wav2Vec2AudioFrontend.load_pretrained` (or ``AvsrModel.load_frontend_state("a", ...)``); a training
  script does this when its config names a weights file.

An utterance of ``n`` samples gives ``ceil(n / samples_per_frame)`` frames in both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn

from avsr.frontends.frames import frames_for_samples, tokens_to_frames
from avsr.masks import make_valid_mask

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict saved with ``torch.save`` (loaded with ``weights_only=True``: no code is unpickled)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return obj


def split_strides(total: int, max_stride: int = 8) -> tuple[int, ...]:
    """Factor ``total`` into convolution strides no larger than ``max_stride`` where its primes allow.

    Prime factors are taken largest first and merged while the product stays within ``max_stride``;
    640 gives (5, 8, 8, 2). A prime larger than ``max_stride`` becomes a stride of its own.
    """
    primes, n, p = [], total, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    strides: list[int] = []
    for q in sorted(primes, reverse=True):
        if strides and strides[-1] * q <= max_stride:
            strides[-1] *= q
        else:
            strides.append(q)
    return tuple(strides) or (1,)


def normalize_waveform(audio: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance per utterance over its real samples; padding stays zero."""
    valid = make_valid_mask(lengths, audio.shape[1]).to(audio.dtype)  # (B, S)
    n = valid.sum(1, keepdim=True).clamp(min=1.0)
    mean = (audio * valid).sum(1, keepdim=True) / n
    var = (((audio - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return (audio - mean) / torch.sqrt(var + eps) * valid


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor: per time step, so padding cannot leak in."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvAudioFrontend(nn.Module):
    """(B, S) waveform -> (B, T, out_dim) with T = ceil(S / samples_per_frame).

    Each layer is Conv1d(kernel 3s, stride s, padding s) -> LayerNorm over channels -> GELU, which maps a
    length divisible by s to exactly length / s; padding positions are re-zeroed after every layer so
    the next convolution sees the same zeros as it would at the end of the utterance alone.
    """

    def __init__(
        self,
        samples_per_frame: int,
        channels: int = 256,
        out_dim: int = 256,
        strides: tuple[int, ...] = (),
        normalize: bool = True,
    ) -> None:
        super().__init__()
        strides = tuple(strides) or split_strides(samples_per_frame)
        product = 1
        for s in strides:
            product *= s
        if product != samples_per_frame:
            raise ValueError(
                f"audio conv strides {strides} multiply to {product}, not {samples_per_frame} samples/frame"
            )
        self.samples_per_frame = samples_per_frame
        self.strides = strides
        self.normalize = normalize
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        in_ch = 1
        for s in strides:
            self.convs.append(nn.Conv1d(in_ch, channels, kernel_size=3 * s, stride=s, padding=s))
            self.norms.append(_ChannelNorm(channels))
            in_ch = channels
        self.act = nn.GELU()
        self.proj = nn.Linear(channels, out_dim)
        self.out_dim = out_dim

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        spf = self.samples_per_frame
        frames = frames_for_samples(lengths, spf)  # (B,)
        t = int(frames.max())
        x = audio[:, : t * spf]
        x = nn.functional.pad(x, (0, t * spf - x.shape[1]))  # (B, T * spf)
        if self.normalize:
            x = normalize_waveform(x, lengths)
        else:
            x = x * make_valid_mask(lengths, x.shape[1])
        x = x[:, None, :]  # (B, 1, S)
        n_valid = lengths
        for s, conv, norm in zip(self.strides, self.convs, self.norms):
            x = self.act(norm(conv(x)))  # (B, C, S / s)
            n_valid = torch.div(n_valid + s - 1, s, rounding_mode="floor")
            x = x * make_valid_mask(n_valid, x.shape[-1])[:, None, :]
        x = self.proj(x.transpose(1, 2))  # (B, T, out_dim)
        return x * make_valid_mask(frames, t)[:, :, None], frames


class FbankAudioFrontend(nn.Module):
    """(B, S) waveform -> log-mel filterbanks -> strided Conv1d subsampling -> (B, T, out_dim).

    The ESPnet-style alternative to learning from raw samples: ``n_mels`` log-mel energies every ``hop``
    samples (``samples_per_frame // 4``: 10 ms at 16 kHz and 25 fps) over 25 ms windows
    (``torchaudio.transforms.MelSpectrogram``), normalised per utterance and mel bin over its real frames,
    then stride-2 convolutions down to one feature per video frame. A window that runs past the end of an
    utterance sees zeros there, as it would alone, so the output does not depend on batch padding.
    """

    def __init__(
        self,
        samples_per_frame: int,
        sample_rate: int,
        channels: int = 256,
        out_dim: int = 256,
        n_mels: int = 80,
        fbank_per_frame: int = 4,
    ) -> None:
        super().__init__()
        if samples_per_frame % fbank_per_frame or fbank_per_frame & (fbank_per_frame - 1):
            raise ValueError(
                f"fbank_per_frame={fbank_per_frame} must be a power of two dividing {samples_per_frame} samples/frame"
            )
        self.samples_per_frame, self.hop = samples_per_frame, samples_per_frame // fbank_per_frame
        win = round(2.5 * self.hop)
        self.n_fft = 1 << (win - 1).bit_length()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=self.n_fft, win_length=win, hop_length=self.hop, n_mels=n_mels, center=False
        )
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        in_ch = n_mels
        for _ in range(fbank_per_frame.bit_length() - 1):
            self.convs.append(nn.Conv1d(in_ch, channels, kernel_size=3, stride=2, padding=1))
            self.norms.append(_ChannelNorm(channels))
            in_ch = channels
        self.act = nn.GELU()
        self.proj = nn.Linear(in_ch, out_dim)
        self.out_dim = out_dim

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised log-mel (B, n_mels, 4T) and the number of real filterbank frames per utterance."""
        spf = self.samples_per_frame
        t = int(frames_for_samples(lengths, spf).max())
        x = audio[:, : t * spf] * make_valid_mask(lengths, min(audio.shape[1], t * spf))
        x = nn.functional.pad(x, (0, t * spf + self.n_fft - self.hop - x.shape[1]))
        with torch.autocast(x.device.type, enabled=False):
            feats = torch.log(self.mel(x.float()) + 1e-6)  # (B, n_mels, 4T)
        n = torch.div(lengths + self.hop - 1, self.hop, rounding_mode="floor")
        valid = make_valid_mask(n, feats.shape[-1])[:, None, :].to(feats.dtype)
        count = valid.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (feats * valid).sum(-1, keepdim=True) / count
        var = (((feats - mean) * valid) ** 2).sum(-1, keepdim=True) / count
        return (feats - mean) / torch.sqrt(var + 1e-5) * valid, n

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        frames = frames_for_samples(lengths, self.samples_per_frame)
        x, n_valid = self.features(audio, lengths)
        for conv, norm in zip(self.convs, self.norms):
            x = self.act(norm(conv(x)))
            n_valid = torch.div(n_valid + 1, 2, rounding_mode="floor")
            x = x * make_valid_mask(n_valid, x.shape[-1])[:, None, :]
        x = self.proj(x.transpose(1, 2))  # (B, T, out_dim)
        return x * make_valid_mask(frames, x.shape[1])[:, :, None], frames


def _extractor_hop(conv_layers: list[tuple[int, int, int]] | None) -> int:
    hop = 1
    for _, _, stride in conv_layers or [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2:
        hop *= stride
    return hop


class Wav2Vec2AudioFrontend(nn.Module):
    """``torchaudio.models.wav2vec2_model`` as an audio front-end: (B, S) -> (B, T, out_dim).

    ``arch`` names a torchaudio factory (``wav2vec2_base``, ``wav2vec2_large``, ``hubert_base``, ...) whose
    keyword arguments are ``kwargs``; ``arch="custom"`` passes ``kwargs`` to ``wav2vec2_model`` itself
    (every architecture field, e.g. a tiny test model). With the ``group_norm`` feature extractor of the
    base models the first conv layer normalises over the whole padded time axis, so an utterance is not
    exactly padding-invariant there; the ``layer_norm`` extractor (large models) is.
    """

    def __init__(
        self, samples_per_frame: int, arch: str = "wav2vec2_base", kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        kwargs.setdefault("aux_num_out", None)  # no CTC head of its own
        if arch == "custom":
            self.model = torchaudio.models.wav2vec2_model(**kwargs)
            conv_layers = kwargs.get("extractor_conv_layer_config")
        else:
            factory = getattr(torchaudio.models, arch, None)
            if factory is None or not callable(factory):
                raise ValueError(f"unknown torchaudio wav2vec2 architecture {arch!r}")
            self.model = factory(**kwargs)
            conv_layers = None  # the factories use the standard 7-layer extractor
        self.model.aux = None
        # torchaudio leaves the conv feature encoder at PyTorch's default init, which shrinks the signal
        # about 3x per layer: 0.002 rms features from speech at 0.1 rms through the 6-layer CPU encoder, below
        # the feature projection's layer-norm eps, so pretraining starts from noise-driven codes. Kaiming
        # normal, as the released wav2vec 2.0 initialises these layers, keeps them near unit scale.
        for module in self.model.feature_extractor.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight)
        self.token_hop = _extractor_hop(conv_layers)
        self.samples_per_frame = samples_per_frame
        self.out_dim = self.model.encoder.feature_projection.projection.out_features

    def load_pretrained(self, state_dict: dict[str, Tensor], prefix: str = "") -> None:
        """Load torchaudio ``Wav2Vec2Model`` weights (keys under ``prefix``); an ``aux`` head is ignored."""
        own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        own = {k: v for k, v in own.items() if not k.startswith("aux.")}
        missing, unexpected = self.model.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise ValueError(f"wav2vec2 weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        log.info("loaded %d wav2vec2 tensors", len(own))

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        frames = frames_for_samples(lengths, self.samples_per_frame)
        audio = audio * make_valid_mask(lengths, audio.shape[1])
        tokens, token_lengths = self.model(audio, lengths)  # (B, N, D) at sample_rate / token_hop
        if token_lengths is None:  # pragma: no cover - torchaudio returns lengths when given lengths
            token_lengths = torch.full_like(lengths, tokens.shape[1])
        x = tokens_to_frames(tokens, token_lengths, float(self.token_hop), frames, float(self.samples_per_frame))
        return x, frames  # (B, T, D)
