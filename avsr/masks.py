"""Padding masks from lengths. ``make_pad_mask`` is the project's one helper (shared with ``vatt``)."""

from __future__ import annotations

from torch import Tensor

from vatt.layers.mask import make_pad_mask

__all__ = ["make_pad_mask", "make_valid_mask"]


def make_valid_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Boolean (B, max_len) mask that is True on real positions: the complement of ``make_pad_mask``."""
    return ~make_pad_mask(lengths, max_len)
