"""The one padding-mask helper: lengths travel with padded tensors and become masks here."""

from __future__ import annotations

import torch


def make_pad_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Boolean mask (N, L) that is True at padded positions (index >= length)."""
    max_len = int(lengths.max().item()) if max_len is None else max_len
    steps = torch.arange(max_len, device=lengths.device)
    return steps[None, :] >= lengths[:, None]  # (N, L)
