"""Stochastic depth (DropPath) and VATT's DropToken."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Drop a residual branch per sample with probability ``p`` in training (Huang et al. 2016)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class DropToken(nn.Module):
    """Keep a random subset of tokens in training (VATT, Akbari et al. 2021, Sec. 3.3).

    One random permutation per step is shared by the whole batch, as in the released code, so the kept
    tokens stay a dense (B, n_keep, D) tensor. Applied after positions are added, so every kept token still
    knows where it came from. The kept indices are sorted, which keeps raster order (order is irrelevant to
    the transformer but convenient for anyone reading token outputs). Identity in eval mode.
    """

    def __init__(self, keep: float = 1.0):
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"DropToken keep ratio must be in (0, 1], got {keep}")
        self.keep = keep

    def num_kept(self, n: int) -> int:
        return max(1, int(n * self.keep))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep >= 1.0:
            return x
        n = x.shape[1]
        idx = torch.randperm(n, device=x.device)[: self.num_kept(n)].sort().values
        return x[:, idx]  # (B, n_keep, D)
