"""Two augmented views of a mouth clip, for contrastive pretraining of the visual front-end (MoCo v2).

Pan et al. (2022) pretrain the lip-reading front-end with MoCo v2 on unlabelled mouth videos. Each view
of a clip takes its own window of ``frames`` consecutive frames (temporal jitter: the two windows start at
different frames whenever the clip allows it), its own ``crop`` x ``crop`` square from the 96x96 mouth
image, a horizontal flip with probability ``hflip_prob`` and a mild brightness and contrast change; then it
is normalised like :class:`data.lrs2.MouthTransform` (grayscale, mean 0.421, std 0.165). Every frame of a
view shares that view's parameters, so a view is a plausible clip of the same mouth.

The random parameters are drawn from ``generator``, so a seeded generator gives the same views on every
machine and in every data-loader worker; the pixel operations are torchvision's ``transforms.v2``
functionals (their random classes draw from the global generator, which a dataset should not consume).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

MEAN = 0.421  # as LRS2Config / auto_avsr
STD = 0.165


class View(NamedTuple):
    """One view: ``video`` float32 (frames, 1, crop, crop), zero after ``length`` real frames."""

    video: Tensor
    length: int


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [0, high]."""
    return int(torch.randint(high + 1, (), generator=generator))


def _window_starts(num_frames: int, frames: int, generator: torch.Generator | None) -> tuple[int, int]:
    """Start frames of the two views' windows: distinct when the clip has room for two, else both 0."""
    room = num_frames - frames  # last valid start
    if room <= 0:
        return 0, 0
    first = _randint(room, generator)
    second = _randint(room - 1, generator)  # uniform over the other room starts
    return first, second + (second >= first)


def _view(
    clip: Tensor,
    start: int,
    *,
    crop: int,
    frames: int,
    hflip_prob: float,
    brightness: float,
    contrast: float,
    mean: float,
    std: float,
    generator: torch.Generator | None,
) -> View:
    h, w = clip.shape[-2:]
    x = clip[start : start + frames]  # (n, 1, H, W), n <= frames
    top, left = _randint(h - crop, generator), _randint(w - crop, generator)
    flip = float(torch.rand((), generator=generator)) < hflip_prob
    bright = _uniform(1 - brightness, 1 + brightness, generator)
    contr = _uniform(1 - contrast, 1 + contrast, generator)

    x = TF.crop(x, top, left, crop, crop)  # (n, 1, crop, crop)
    if flip:
        x = TF.horizontal_flip(x)
    if brightness > 0:
        x = TF.adjust_brightness(x, bright)
    if contrast > 0:
        x = TF.adjust_contrast(x, contr)  # towards each frame's mean grey
    x = TF.normalize(x, [mean], [std])
    n = x.shape[0]
    if n < frames:  # zero padding, as a batch collator would add; the length says where it starts
        x = torch.cat([x, x.new_zeros(frames - n, *x.shape[1:])])
    return View(x, n)


def two_views(
    clip: Tensor,
    *,
    crop: int = 88,
    frames: int = 16,
    hflip_prob: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    mean: float = MEAN,
    std: float = STD,
    generator: torch.Generator | None = None,
) -> tuple[View, View]:
    """Two views of ``clip`` (T, C, H, W), grayscale or RGB, uint8 or float in [0, 1], H and W >= crop.

    Brightness and contrast factors are uniform in [1 - brightness, 1 + brightness] and
    [1 - contrast, 1 + contrast]; zero turns a jitter off. A clip shorter than ``frames`` gives views of
    all its frames, zero-padded to ``frames``, with ``length`` = T.
    """
    if clip.ndim != 4 or clip.shape[1] not in (1, 3):
        raise ValueError(f"clip must be (T, C, H, W) with C = 1 or 3, got {tuple(clip.shape)}")
    t, _, h, w = clip.shape
    if t == 0 or min(h, w) < crop:
        raise ValueError(f"clip {tuple(clip.shape)} has no frames or is smaller than the {crop}x{crop} crop")
    if not (0 <= brightness <= 1 and 0 <= contrast <= 1):
        raise ValueError(f"brightness and contrast must be in [0, 1], got {brightness} and {contrast}")
    x = TF.to_dtype(clip, torch.float32, scale=True)  # uint8 -> [0, 1]; float stays
    if x.shape[1] == 3:
        x = TF.rgb_to_grayscale(x)  # (T, 1, H, W)
    starts = _window_starts(t, frames, generator)
    view = partial(
        _view,
        crop=crop,
        frames=frames,
        hflip_prob=hflip_prob,
        brightness=brightness,
        contrast=contrast,
        mean=mean,
        std=std,
        generator=generator,
    )
    return view(x, starts[0]), view(x, starts[1])
