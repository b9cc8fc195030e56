"""Batching for :class:`data.manifest.ManifestDataset`, and the bad-media budget of a run.

Items whose media failed arrive as :class:`ItemFailure` records (they were produced in a
DataLoader worker, where raising would kill the epoch). :func:`collate` drops them and lists them in
``batch["failures"]``; :class:`FailureTracker`, in the main process, counts attempts and failures over
all workers, logs each bad path once and stops the run when too large a fraction fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class ItemFailure:
    """What a dataset item returns instead of raising when its media is unusable."""

    path: str
    reason: str
    video_index: int


def collate(items: Sequence[dict[str, Any] | ItemFailure]) -> dict[str, Any]:
    """Stack good items into the pretraining batch contract; failed ones go to ``batch["failures"]``.

    Keys: ``video`` (B, T, C, H, W), ``audio`` (B, S), ``audio_mask`` (B,), ``text_ids`` (B, P, L),
    ``text_lengths`` (B, P), ``text_mask`` (B,), ``video_index`` (B,), ``clip_index`` (B,), ``ids``
    (list of B clip ids) and ``failures`` (list of (path, reason)). When every item failed the batch
    holds only ``ids = []`` and ``failures``: check ``batch_size(batch)`` before using it. ``L`` is the
    longest caption of the batch: the padding beyond it is cut (the text tower masks padding, so this
    only saves work).
    """
    good = [x for x in items if not isinstance(x, ItemFailure)]
    failures = [(x.path, x.reason) for x in items if isinstance(x, ItemFailure)]
    if not good:
        return {"ids": [], "failures": failures}
    text_lengths = torch.stack([x["text_lengths"] for x in good])  # (B, P)
    longest = max(int(text_lengths.max()), 1)
    return {
        "video": torch.stack([x["video"] for x in good]),  # (B, T, C, H, W)
        "audio": torch.stack([x["audio"] for x in good]),  # (B, S)
        "audio_mask": torch.tensor([x["audio_mask"] for x in good], dtype=torch.float32),
        "text_ids": torch.stack([x["text_ids"][:, :longest] for x in good]),  # (B, P, L)
        "text_lengths": text_lengths,
        "text_mask": torch.tensor([x["text_mask"] for x in good], dtype=torch.float32),
        "video_index": torch.tensor([x["video_index"] for x in good], dtype=torch.int64),
        "clip_index": torch.tensor([x["clip_index"] for x in good], dtype=torch.int64),
        "ids": [x["id"] for x in good],
        "failures": failures,
    }


def batch_size(batch: dict[str, Any]) -> int:
    """Number of good clips in a collated batch (0 when every item failed)."""
    return len(batch["ids"])


class DataFailureError(RuntimeError):
    """Too many media files failed to decode; the message lists the first ones."""


class FailureTracker:
    """Counts clip attempts and failures across DataLoader workers; aborts past ``max_fail_fraction``.

    Call :meth:`update` with every collated batch. The fraction is only judged after ``min_attempts``
    clips (so one early bad file does not stop a large run), and always by ``check(final=True)``,
    e.g. at the end of an epoch or an evaluation.
    """

    def __init__(self, max_fail_fraction: float = 0.01, min_attempts: int = 1000, max_listed: int = 10) -> None:
        if not 0.0 <= max_fail_fraction <= 1.0:
            raise ValueError(f"max_fail_fraction must be in [0, 1], got {max_fail_fraction}")
        self.max_fail_fraction = max_fail_fraction
        self.min_attempts = min_attempts
        self.max_listed = max_listed
        self.attempts = 0
        self.failed = 0
        self.failed_paths: dict[str, str] = {}  # path -> first reason, in order of first failure

    def update(self, batch: dict[str, Any], check: bool = True) -> None:
        """Count a collated batch; ``check=False`` leaves the budget to a caller that sums processes."""
        failures = batch.get("failures", [])
        self.attempts += batch_size(batch) + len(failures)
        self.failed += len(failures)
        for path, reason in failures:
            if path not in self.failed_paths:
                self.failed_paths[path] = reason
                logger.warning("skipping bad media (logged once per file): %s", reason)
        if check:
            self.check()

    @property
    def fraction(self) -> float:
        return self.failed / self.attempts if self.attempts else 0.0

    def check(self, final: bool = False, totals: tuple[int, int] | None = None) -> None:
        """Raise :class:`DataFailureError` if the failed fraction exceeds the budget.

        ``totals`` = (attempts, failed) over every process of a run, when several share the budget;
        the paths listed are this process's.
        """
        attempts, failed = totals if totals is not None else (self.attempts, self.failed)
        fraction = failed / attempts if attempts else 0.0
        if not (final or attempts >= self.min_attempts) or fraction <= self.max_fail_fraction:
            return
        listed = list(self.failed_paths.items())[: self.max_listed]
        lines = "\n".join(f"  {path}: {reason}" for path, reason in listed)
        more = len(self.failed_paths) - len(listed)
        raise DataFailureError(
            f"{failed} of {attempts} clips failed to decode ({100 * fraction:.1f}% > "
            f"max_fail_fraction {100 * self.max_fail_fraction:g}%), from {len(self.failed_paths)} file(s) here; "
            f"first failures:\n{lines}" + (f"\n  ... and {more} more" if more > 0 else "")
        )

    def state_dict(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "failed": self.failed, "failed_paths": dict(self.failed_paths)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.attempts = int(state["attempts"])
        self.failed = int(state["failed"])
        self.failed_paths = dict(state["failed_paths"])
