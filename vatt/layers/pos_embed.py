"""Learned absolute positions: factorized e_t + e_h + e_w for video, 1-D for audio (and MA text).

As in VATT's released code the summed position embeddings pass through a LayerNorm before they are added
to the tokens, and the sum is followed by dropout. Tables are sized for the configured input grid; a
different grid at run time (e.g. 320x320 fine-tuning, or a shorter clip) resamples each 1-D table by
linear interpolation (the released code uses a cubic spline over the same normalised coordinates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resample_positions(table: torch.Tensor, size: int) -> torch.Tensor:
    """Resample a (n, D) table to (size, D) by linear interpolation over positions (identity if n == size)."""
    if table.shape[0] == size:
        return table
    x = table.t()[None]  # (1, D, n)
    return F.interpolate(x, size=size, mode="linear", align_corners=False)[0].t()  # (size, D)


class SpatioTemporalPositions(nn.Module):
    """Adds e_t + e_h + e_w to a video token grid (B, t, h, w, D) and flattens it to (B, t*h*w, D)."""

    def __init__(self, grid: tuple[int, int, int], dim: int, dropout: float = 0.0, ln_eps: float = 1e-6):
        super().__init__()
        t, h, w = grid
        std = dim**-0.5  # VATT's initializer range for position tables
        self.temporal = nn.Parameter(torch.randn(t, dim) * std)
        self.vertical = nn.Parameter(torch.randn(h, dim) * std)
        self.horizontal = nn.Parameter(torch.randn(w, dim) * std)
        self.norm = nn.LayerNorm(dim, eps=ln_eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, t, h, w, D = x.shape
        et = resample_positions(self.temporal, t)  # (t, D)
        eh = resample_positions(self.vertical, h)  # (h, D)
        ew = resample_positions(self.horizontal, w)  # (w, D)
        pos = et[:, None, None] + eh[None, :, None] + ew[None, None, :]  # (t, h, w, D)
        x = x + self.norm(pos)
        return self.drop(x.reshape(B, t * h * w, D))  # (B, N, D)


class TemporalPositions(nn.Module):
    """Adds a learned 1-D position table to (B, n, D) tokens.

    ``resample=True`` (audio) stretches the table when n differs from its length. ``resample=False`` (text)
    looks up the first n rows, so a padded sequence gives its real tokens the same positions as the
    unpadded one; n larger than the table is an error.
    """

    def __init__(self, length: int, dim: int, dropout: float = 0.0, ln_eps: float = 1e-6, resample: bool = True):
        super().__init__()
        self.table = nn.Parameter(torch.randn(length, dim) * dim**-0.5)
        self.norm = nn.LayerNorm(dim, eps=ln_eps)
        self.drop = nn.Dropout(dropout)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if self.resample:
            pos = resample_positions(self.table, n)
        elif n <= self.table.shape[0]:
            pos = self.table[:n]
        else:
            raise ValueError(f"sequence of {n} tokens is longer than the {self.table.shape[0]} learned positions")
        return self.drop(x + self.norm(pos))
