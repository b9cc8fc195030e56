"""Sinusoidal absolute positions (Vaswani et al. 2017), computed on the fly for any length."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_positions(length: int, dim: int, offset: int = 0, device: torch.device | None = None) -> Tensor:
    """(length, dim) table: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...), p from ``offset``."""
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return pe
