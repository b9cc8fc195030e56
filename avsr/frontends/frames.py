"""Map a token sequence at one rate onto video frames: one feature per frame, padding-exact.

Front-ends whose natural output rate differs from the video frame rate (wav2vec 2.0 at 50 Hz, a VATT
video tower with 4-frame tubelets, a VATT audio tower with 128-sample patches) go through
:func:`tokens_to_frames`. Token ``n`` is taken to cover the time span ``[n * token_hop, (n + 1) * token_hop)``
and frame ``t`` the span ``[t * frame_hop, (t + 1) * frame_hop)`` (both in the same unit, e.g. samples);
each frame is the overlap-weighted mean of the tokens it overlaps. Coarser tokens are thus repeated
over the frames they cover, finer tokens averaged. A frame that overlaps no real token (the tail of an
utterance whose last token was cut by a convolution) takes the last real token. Only real tokens and
real frames take part, so the result for an utterance does not depend on how the batch is padded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avsr.masks import make_valid_mask


def samples_per_frame(sample_rate: int, fps: float) -> int:
    """Audio samples per video frame (``sample_rate // fps``); audio and video frames must line up exactly."""
    spf = sample_rate / fps
    if spf != int(spf):
        raise ValueError(f"sample_rate={sample_rate} is not a whole number of samples per frame at fps={fps}")
    return int(spf)


def frames_for_samples(num_samples: Tensor, samples_per_frame: int) -> Tensor:
    """Number of video frames covered by ``num_samples`` audio samples (a started frame counts)."""
    return torch.div(num_samples + samples_per_frame - 1, samples_per_frame, rounding_mode="floor")


def tokens_to_frames(
    tokens: Tensor,
    token_lengths: Tensor,
    token_hop: float,
    num_frames: Tensor,
    frame_hop: float,
    max_frames: int | None = None,
) -> Tensor:
    """(B, N, D) tokens with ``token_lengths`` -> (B, T, D) frame features (zero beyond ``num_frames``)."""
    b, n, _ = tokens.shape
    t_max = int(num_frames.max()) if max_frames is None else max_frames
    device = tokens.device
    dtype = torch.float64  # overlap arithmetic in float64: exact for the integer hops used in practice
    t = torch.arange(t_max, device=device, dtype=dtype)
    k = torch.arange(n, device=device, dtype=dtype)
    start = torch.maximum(t[:, None] * frame_hop, k[None, :] * token_hop)
    end = torch.minimum((t[:, None] + 1) * frame_hop, (k[None, :] + 1) * token_hop)
    overlap = (end - start).clamp(min=0.0)  # (T, N)
    weight = overlap[None].expand(b, t_max, n).clone()  # (B, T, N)
    token_ok = make_valid_mask(token_lengths, n)  # (B, N)
    frame_ok = make_valid_mask(num_frames, t_max)  # (B, T)
    weight = weight * token_ok[:, None, :] * frame_ok[:, :, None]
    # Frames past the last real token: copy the last real token.
    orphan = frame_ok & (weight.sum(-1) == 0)  # (B, T)
    if orphan.any():
        last = (token_lengths - 1).clamp(min=0)  # (B,)
        fill = torch.zeros_like(weight)
        fill.scatter_(2, last[:, None, None].expand(b, t_max, 1), 1.0)
        weight = torch.where(orphan[:, :, None], fill, weight)
    weight = weight / weight.sum(-1, keepdim=True).clamp(min=1e-12)
    return torch.bmm(weight.to(tokens.dtype), tokens)  # (B, T, D)
