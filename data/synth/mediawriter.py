"""Write synthetic clips as real mp4 files (H.264 yuv420p video, AAC mono audio) through PyAV.

Every synthetic corpus goes through this one writer so that its files are decoded by exactly the code
that reads a user's media (:mod:`data.media`). Files are written to a temporary sibling and renamed,
so a reader never sees half an mp4.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from data.files import atomic_path

logger = logging.getLogger(__name__)


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def write_mp4(
    path: str | Path,
    frames: np.ndarray | torch.Tensor,
    fps: float,
    audio: np.ndarray | torch.Tensor | None,
    sample_rate: int,
    *,
    crf: int = 18,
    preset: str = "veryfast",
    gop: int | None = None,
    faststart: bool = False,
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB at ``fps`` and mono ``audio`` (S,) float in [-1, 1].

    ``audio=None`` writes a file with no audio stream. H and W must be even (yuv420p halves chroma).
    ``crf``/``preset`` are libx264 quality/speed knobs; ``gop`` is the keyframe interval in frames
    (default: one keyframe per second), which bounds how far a seek has to decode; ``faststart`` puts
    the index (moov) before the data, as streaming sites do. Returns ``path``.
    """
    path = Path(path)
    video = _as_numpy(frames)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {video.dtype} {tuple(video.shape)}")
    num_frames, height, width, _ = video.shape
    if num_frames == 0:
        raise ValueError("frames is empty; an mp4 needs at least one frame")
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {height}x{width}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    wave = None
    if audio is not None:
        wave = _as_numpy(audio).astype(np.float32, copy=False)
        if wave.ndim != 1:
            raise ValueError(f"audio must be mono (S,), got shape {tuple(wave.shape)}")
        wave = np.clip(wave, -1.0, 1.0)
    rate = Fraction(fps).limit_denominator(1001)

    with atomic_path(path) as tmp:
        options = {"movflags": "faststart"} if faststart else {}
        with av.open(str(tmp), mode="w", format="mp4", options=options) as container:
            vstream = container.add_stream("h264", rate=rate)
            vstream.width = width
            vstream.height = height
            vstream.pix_fmt = "yuv420p"
            vstream.codec_context.time_base = 1 / rate
            vstream.codec_context.gop_size = gop if gop is not None else max(1, round(float(fps)))
            # mb-tree off: with it, libx264 output changes from run to run at some frame sizes (seen with
            # 112x112 and 64x64, not 128x128); off, a corpus is byte-identical for a seed.
            vstream.options = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
            astream = None
            if wave is not None:
                astream = container.add_stream("aac", rate=sample_rate, layout="mono")
                astream.codec_context.time_base = Fraction(1, sample_rate)

            for i in range(num_frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(video[i]), format="rgb24")
                frame.pts = i
                frame.time_base = vstream.codec_context.time_base
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))

            if astream is not None and wave is not None and wave.size:
                # PyAV re-chunks the frame to the encoder's frame size (1024 samples for AAC).
                aframe = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
                aframe.sample_rate = sample_rate
                aframe.pts = 0
                aframe.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(aframe))
            if astream is not None:
                container.mux(astream.encode(None))
    logger.debug("wrote %s (%d frames at %s fps)", path, num_frames, fps)
    return path
