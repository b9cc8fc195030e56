"""Contact sheets: a few frames of each search hit in one PNG, one row per hit with its rank and score.

People judge retrieval faster by looking than by reading paths. Frames are decoded with
:mod:`data.media` at evenly spaced times inside the hit's segment (the whole file when the item has
no start/end); a file that cannot be decoded gets an empty row that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from data.files import atomic_path, check_output_path
from data.media import MediaError, MediaReader
from eval.index import Hit

logger = logging.getLogger(__name__)


def hit_frames(media: str | Path, start: float | None, end: float | None, num: int, size: int) -> np.ndarray:
    """``num`` RGB frames (num, H, W, 3) uint8, centred in ``num`` equal slices of [start, end)."""
    with MediaReader(media) as reader:
        lo = start if start is not None else 0.0
        hi = end if end is not None else reader.info.duration
        span = max(hi - lo, 1e-3)
        fps = num / span
        video = reader.read_video(lo + 0.5 / fps, num, fps, size=size)  # (T, C, H, W)
    return video.permute(0, 2, 3, 1).numpy()


def contact_sheet(
    hits: Sequence[Hit],
    out: str | Path,
    *,
    title: str = "",
    frames_per_hit: int = 4,
    frame_size: int = 96,
) -> Path:
    """Write a PNG with ``frames_per_hit`` frames of every hit (rows in rank order); returns ``out``.

    ``out`` is checked before any frame is decoded: a folder this project did not write is refused
    (:class:`data.files.OutputPathError`) and left as it was.
    """
    out = check_output_path(out)
    if not hits:
        raise ValueError("no hits to draw")
    if frames_per_hit < 1 or frame_size < 1:
        raise ValueError(f"frames_per_hit and frame_size must be >= 1, got {frames_per_hit} and {frame_size}")
    rows, cols = len(hits), frames_per_hit
    fig = Figure(figsize=(1.7 * cols + 0.2, 1.9 * rows + (0.5 if title else 0.1)), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, hit in enumerate(hits):
        try:
            frames = hit_frames(hit.media, hit.item.get("start"), hit.item.get("end"), cols, frame_size)
        except (MediaError, TypeError) as exc:
            logger.warning("contact sheet: cannot show %s: %s", hit.media, exc)
            frames = None
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if frames is not None:
                ax.imshow(frames[c])
            elif c == 0:
                ax.text(0.05, 0.5, "unreadable", transform=ax.transAxes)
        name = Path(hit.media).name if hit.media else hit.id
        axes[r, 0].set_title(f"#{hit.rank}  {hit.score:.3f}  {name}", loc="left", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    logger.info("wrote contact sheet %s (%d hits)", out, rows)
    return out
