"""Preprocessing config and the train/eval transforms for video and audio.

The defaults follow VATT (Akbari et al., 2021): 32 frames at 10 fps, 224x224 crops, values in [-1, 1],
48 kHz audio of the same 3.2 s (153,600 samples), 16 text tokens, 5 MIL-NCE positives. Training uses a
random resized crop, horizontal flip and colour jitter (torchvision.transforms.v2 on the whole clip, so
every frame gets the same crop and colours); evaluation resizes the shorter side and centre-crops.
Audio training augmentation is a random gain and Gaussian noise of ``audio_noise * max|x|`` (VATT uses
0.01). The config travels inside exports as a dict, so inference preprocesses exactly like training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.schema import ConfigError, build, check_ranges

_PREPROCESS_RANGES = {
    "num_frames": (">=", 1),
    "fps": (">", 0),
    "image_size": (">=", 1),
    "resize_size": (">=", 1),
    "sample_rate": (">=", 1),
    "max_text_len": (">=", 1),
    "num_positives": (">=", 1),
    "std": (">", 0),
    "color_jitter_prob": ("in", 0, 1),
    "brightness": (">=", 0),
    "contrast": (">=", 0),
    "saturation": (">=", 0),
    "hue": ("in", 0, 0.5),
    "audio_gain_db": (">=", 0),
    "audio_noise": (">=", 0),
}


@dataclass
class PreprocessConfig:
    """How clips are cut, sized, normalised and augmented (shared by training, eval and exports)."""

    num_frames: int = 32
    fps: float = 10.0
    image_size: int = 224  # square crop fed to the model
    resize_size: int = 256  # shorter side after decoding; eval centre-crops image_size from it
    sample_rate: int = 48000
    max_text_len: int = 16
    num_positives: int = 5  # MIL-NCE: the clip's caption plus the nearest ones in time
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Training augmentation.
    min_scale: float = 0.08  # random resized crop: smallest area fraction of the frame
    max_scale: float = 1.0
    hflip: bool = True  # turn off when captions name left/right
    color_jitter_prob: float = 0.8  # 0 disables colour jitter
    brightness: float = 32 / 255
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.2  # turn off when captions name colours
    audio_gain_db: float = 6.0  # random attenuation in [-audio_gain_db, 0] dB
    audio_noise: float = 0.01  # Gaussian noise std relative to max|x|
    # Zero mean and unit variance per clip, after augmentation, in training and evaluation alike. Off in
    # VATT. Quiet waveforms (std ~0.1) otherwise give nearly identical audio embeddings at initialisation,
    # and with a small batch NCE then settles at chance (2 ln B) instead of learning.
    audio_standardize: bool = False
    # A fixed (left, top, right, bottom) pixel box cut from every decoded frame before any resizing, e.g.
    # the mouth region of face-tracked talking-head clips; None keeps the whole frame.
    region: tuple[int, int, int, int] | None = None
    grayscale: bool = False  # luma repeated to three channels (as AVSR mouth crops are seen)

    def __post_init__(self) -> None:
        check_ranges(self, _PREPROCESS_RANGES, prefix="preprocess.")
        if self.region is not None:
            left, top, right, bottom = self.region
            if left < 0 or top < 0 or right <= left or bottom <= top:
                raise ConfigError(
                    f"preprocess.region must be (left, top, right, bottom) with right > left >= 0 "
                    f"and bottom > top >= 0, got {list(self.region)}"
                )
        if self.image_size > self.resize_size:
            raise ConfigError(
                f"config key 'preprocess.image_size': {self.image_size} is larger than preprocess.resize_size "
                f"{self.resize_size}"
            )
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ConfigError(
                f"config keys 'preprocess.min_scale' and 'preprocess.max_scale': need 0 < min_scale <= max_scale "
                f"<= 1, got {self.min_scale} and {self.max_scale}"
            )

    @property
    def audio_samples(self) -> int:
        """Samples per clip: the audio spans the same num_frames / fps seconds as the video."""
        return round(self.sample_rate * self.num_frames / self.fps)

    @property
    def clip_seconds(self) -> float:
        return self.num_frames / self.fps

    def to_dict(self) -> dict[str, Any]:
        """Plain data for exports and run configs, with the derived ``audio_samples`` included."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["audio_samples"] = self.audio_samples
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; an unknown key, a wrong type or a stale audio_samples fails."""
        values = dict(values)
        derived = values.pop("audio_samples", None)
        cfg = build(cls, values, prefix="preprocess.")
        if derived is not None and derived != cfg.audio_samples:
            raise ConfigError(
                f"preprocess.audio_samples is {derived!r} but sample_rate * num_frames / fps gives {cfg.audio_samples}"
            )
        return cfg


class VideoTransform:
    """uint8 (T, C, H, W) -> float32 (T, C, image_size, image_size) in [-1, 1] (with mean/std 0.5)."""

    def __init__(self, cfg: PreprocessConfig, train: bool) -> None:
        self.train = train
        self.region, self.grayscale = cfg.region, cfg.grayscale
        steps: list[Any] = []
        if train:
            steps.append(v2.RandomResizedCrop(cfg.image_size, scale=(cfg.min_scale, cfg.max_scale), antialias=True))
            if cfg.hflip:
                steps.append(v2.RandomHorizontalFlip())
            if cfg.color_jitter_prob > 0:
                jitter = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
                steps.append(v2.RandomApply([jitter], p=cfg.color_jitter_prob))
        else:
            steps += [v2.Resize(cfg.resize_size, antialias=True), v2.CenterCrop(cfg.image_size)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
        self.transform = v2.Compose(steps)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if self.region is not None:
            left, top, right, bottom = self.region
            h, w = video.shape[-2:]
            if right > w or bottom > h:
                raise ValueError(f"preprocess.region {list(self.region)} reaches outside the {w}x{h} frame")
            video = video[..., top:bottom, left:right]
        if self.grayscale:  # on the plain tensor: v2.Grayscale passes a tv_tensors.Video through unchanged
            video = v2.functional.rgb_to_grayscale(video, num_output_channels=3)
        # Wrapping as a Video makes v2 draw one set of random parameters for the whole clip.
        out = self.transform(tv_tensors.Video(video))
        return out.as_subclass(torch.Tensor)


class AudioTransform:
    """float32 (S,) -> (S,) in [-1, 1]: random gain and VATT's noise in training, identity in eval.

    With ``audio_standardize`` the result is then scaled to zero mean and unit variance (not in [-1, 1]).
    """

    def __init__(self, cfg: PreprocessConfig, train: bool) -> None:
        self.train = train
        self.gain_db = cfg.audio_gain_db
        self.noise = cfg.audio_noise
        self.standardize = cfg.audio_standardize

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        if self.train:
            if self.gain_db > 0:
                db = -self.gain_db * torch.rand(())
                audio = audio * torch.pow(10.0, db / 20)
            if self.noise > 0:
                audio = audio + torch.randn_like(audio) * (self.noise * audio.abs().max())
            audio = audio.clamp(-1.0, 1.0)
        return standardize_audio(audio) if self.standardize else audio


def standardize_audio(audio: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance over the last axis; silence stays zero."""
    centred = audio - audio.mean(dim=-1, keepdim=True)
    return centred / (centred.std(dim=-1, keepdim=True) + eps)
