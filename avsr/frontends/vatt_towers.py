"""Front-ends that are VATT towers (Pan et al. 2022: start AVSR from self-supervised unimodal towers).

:class:`VattVideoFrontend` runs a VATT video tower on mouth crops and :class:`VattAudioFrontend` a VATT
audio tower on 16 kHz waveforms; both give one feature per video frame.

How a variable-length utterance meets a tower pretrained on fixed clips: the utterance is cut into
windows of the tower's clip length in video frames (``window_frames``, default the VATT config's
``num_frames`` for video and ``audio_samples`` worth of frames for audio), the last window padded with
zeros, and every window goes through the tower as one clip (DropToken off). Window k of an utterance
depends on its frames k*W .. (k+1)*W - 1 only, which makes the result independent of batch padding;
windows holding no real frame are skipped. The token grid of each window is then averaged over space
(video) and mapped to frames with :func:`avsr.frontends.frames.tokens_to_frames`: a video tubelet of
``patch_time`` frames is repeated over its frames, audio patches are averaged within each frame.

Inputs: video crops come normalised as ``(x - video_mean) / video_std`` in [0, 1] units (LRS2: 0.421 /
0.165) and one channel; they are mapped back to VATT's [-1, 1], repeated to the tower's channels and
resized to ``image_size`` (a multiple of the patch size; the tower's positions are interpolated).
Waveforms are resampled from ``sample_rate`` to the tower's ``tower_sample_rate`` (VATT: 48 kHz).

Initialisation from a VATT export: ``load_pretrained(export.state_dict)``. The towers' keys in a
``VattModel`` start with ``video_tower.`` / ``audio_tower.``; a modality-agnostic model (VATT-MA) keeps
its shared transformer under ``encoder.``, which is loaded too.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

import vatt
from avsr.frontends.frames import frames_for_samples, tokens_to_frames
from avsr.masks import make_valid_mask

log = logging.getLogger(__name__)


def _build_vatt(model_name: str, overrides: dict[str, Any]) -> vatt.VattModel:
    overrides = {**overrides, "drop_token": 1.0}  # no DropToken when fine-tuning (VATT, Sec. 4)
    return vatt.create_model(model_name, **overrides)


def _windows(x: Tensor, lengths: Tensor, window: int) -> tuple[Tensor, Tensor, int]:
    """Cut (B, T, ...) into (B * K, window, ...) windows; returns them, a (B, K) mask of windows that hold a
    real frame, and K. Frames beyond each length are zeroed first."""
    b, t = x.shape[:2]
    k = -(-t // window)
    x = x * make_valid_mask(lengths, t).view(b, t, *([1] * (x.dim() - 2))).to(x.dtype)
    x = F.pad(x, [0, 0] * (x.dim() - 2) + [0, k * window - t])
    used = torch.arange(k, device=x.device)[None, :] * window < lengths[:, None]  # (B, K)
    return x.reshape(b * k, window, *x.shape[2:]), used, k


class _VattTowerFrontend(nn.Module):
    prefix = ""

    def _keep_tower(self, model: vatt.VattModel, tower: nn.Module) -> None:
        self.tower = tower
        # VATT-MA: the transformer is shared and lives on the model; own it here so it trains and saves.
        self.encoder = model.encoder if model.cfg.shared_encoder else None

    def load_pretrained(self, state_dict: dict[str, Tensor], prefix: str | None = None) -> None:
        """Copy the tower (and a shared VATT-MA transformer) from a ``VattModel`` state dict."""
        prefix = self.prefix if prefix is None else prefix
        own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.tower.load_state_dict(own, strict=True)
        if self.encoder is not None:
            enc = {k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.")}
            self.encoder.load_state_dict(enc, strict=True)
        log.info("loaded VATT tower %r (%d tensors)", prefix, len(own))


class VattVideoFrontend(_VattTowerFrontend):
    """VATT video tower on mouth crops: (B, T, C, H, W) -> (B, T, D)."""

    prefix = "video_tower."

    def __init__(
        self,
        model_name: str,
        overrides: dict[str, Any] | None = None,
        image_size: int = 96,
        window_frames: int = 0,
        video_mean: float = 0.421,
        video_std: float = 0.165,
    ) -> None:
        super().__init__()
        model = _build_vatt(model_name, dict(overrides or {}))
        self._keep_tower(model, model.video_tower)
        cfg = model.cfg
        if image_size % cfg.patch_size:
            raise ValueError(f"VATT video image_size={image_size} must be a multiple of patch {cfg.patch_size}")
        self.window = window_frames or cfg.num_frames
        if self.window % cfg.patch_time:
            raise ValueError(f"VATT window of {self.window} frames must be a multiple of patch_time {cfg.patch_time}")
        self.patch_time, self.in_chans, self.image_size = cfg.patch_time, cfg.in_chans, image_size
        self.video_mean, self.video_std = video_mean, video_std
        self.out_dim = cfg.video.embed_dim

    def forward(self, video: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        b, t = video.shape[:2]
        x = (video * self.video_std + self.video_mean) * 2.0 - 1.0  # back to VATT's [-1, 1]
        win, used, k = _windows(x, lengths, self.window)  # (B*K, W, C, H, W)
        win = win[used.flatten()]  # windows with real frames only
        n, w, c, h, wd = win.shape
        if (h, wd) != (self.image_size, self.image_size):
            win = F.interpolate(win.flatten(0, 1), size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
            win = win.view(n, w, c, self.image_size, self.image_size)
        if c == 1 and self.in_chans > 1:  # grayscale crops into an RGB tower
            win = win.expand(-1, -1, self.in_chans, -1, -1)
        elif c != self.in_chans:
            raise ValueError(f"video has {c} channels, the VATT tower takes {self.in_chans}")
        tokens = self.tower(win)["tokens"]  # (n, t*h*w, D), (t, h, w) raster order
        grid = self.tower.token_grid(w, self.image_size)
        tokens = tokens.view(n, grid[0], grid[1] * grid[2], -1).mean(2)  # (n, t, D): one token per tubelet
        per_window = grid[0]
        full = tokens.new_zeros(b * k, per_window, tokens.shape[-1])
        full[used.flatten()] = tokens
        full = full.view(b, k * per_window, -1)  # (B, K * t, D)
        token_lengths = torch.div(lengths + self.patch_time - 1, self.patch_time, rounding_mode="floor")
        x = tokens_to_frames(full, token_lengths, float(self.patch_time), lengths, 1.0, max_frames=t)
        return x, lengths  # (B, T, D)


class VattAudioFrontend(_VattTowerFrontend):
    """VATT audio tower on waveforms: (B, S) at ``sample_rate`` -> (B, T, D) at ``fps``."""

    prefix = "audio_tower."

    def __init__(
        self,
        model_name: str,
        samples_per_frame: int,
        sample_rate: int,
        overrides: dict[str, Any] | None = None,
        tower_sample_rate: int = 48_000,
        window_frames: int = 0,
    ) -> None:
        super().__init__()
        model = _build_vatt(model_name, dict(overrides or {}))
        self._keep_tower(model, model.audio_tower)
        cfg = model.cfg
        self.samples_per_frame = samples_per_frame
        self.sample_rate = sample_rate
        self.tower_sample_rate = tower_sample_rate
        tower_spf = samples_per_frame * tower_sample_rate / sample_rate
        if tower_spf != int(tower_spf):
            raise ValueError(f"{tower_sample_rate=} gives {tower_spf} samples per video frame; it must be whole")
        self.tower_spf = int(tower_spf)
        self.window = window_frames or max(1, cfg.audio_samples // self.tower_spf)
        self.patch = cfg.audio_patch
        if (self.window * self.tower_spf) % self.patch:
            raise ValueError(
                f"an audio window of {self.window} frames x {self.tower_spf} samples is not a whole number of "
                f"{self.patch}-sample patches; choose window_frames accordingly"
            )
        self.out_dim = cfg.audio.embed_dim

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        frames = frames_for_samples(lengths, self.samples_per_frame)  # (B,)
        t = int(frames.max())
        b = audio.shape[0]
        x = audio * make_valid_mask(lengths, audio.shape[1])
        x = F.pad(x[:, : t * self.samples_per_frame], (0, max(0, t * self.samples_per_frame - x.shape[1])))
        if self.tower_sample_rate != self.sample_rate:
            x = torchaudio.functional.resample(x, self.sample_rate, self.tower_sample_rate)  # (B, T * tower_spf)
        tower_lengths = torch.div(
            lengths * self.tower_sample_rate + self.sample_rate - 1, self.sample_rate, rounding_mode="floor"
        )
        x = F.pad(x[:, : t * self.tower_spf], (0, max(0, t * self.tower_spf - x.shape[1])))
        x = x.view(b, t, self.tower_spf)  # frames of tower samples
        win, used, k = _windows(x, frames, self.window)  # (B*K, W, tower_spf)
        win = win.flatten(1)[used.flatten()]  # (n, W * tower_spf): windows with real frames only
        tokens = self.tower(win)["tokens"]  # (n, window samples / patch, D)
        per_window = tokens.shape[1]
        full = tokens.new_zeros(b * k, per_window, tokens.shape[-1])
        full[used.flatten()] = tokens
        full = full.view(b, k * per_window, -1)  # (B, K * n, D)
        token_lengths = torch.div(tower_lengths + self.patch - 1, self.patch, rounding_mode="floor")
        x = tokens_to_frames(full, token_lengths, float(self.patch), frames, float(self.tower_spf), max_frames=t)
        return x, frames  # (B, T, D)
