"""T5 relative position bias (Raffel et al. 2020), as in the text tower of VATT's released code.

Relative distances are binned into ``num_buckets`` (half per direction): exact buckets for small distances,
logarithmically wider ones up to ``max_distance``, beyond which all distances share the last bucket. Each
bucket holds one learned scalar per head, added to the attention logits. As in T5 the bias is computed
once and shared by every layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def relative_position_bucket(
    relative_position: torch.Tensor, num_buckets: int = 32, max_distance: int = 64
) -> torch.Tensor:
    """Bidirectional T5 bucket of ``key_position - query_position`` (int64 tensor of any shape)."""
    num_buckets //= 2
    ret = (relative_position > 0).long() * num_buckets  # keys to the right use the upper half
    n = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return ret + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias (1, heads, L, L) for a sequence of length L."""

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 64):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bias = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.bias.weight, std=0.02)

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, device=self.bias.weight.device)
        rel = pos[None, :] - pos[:, None]  # (L, L): key - query
        buckets = relative_position_bucket(rel, self.num_buckets, self.max_distance)
        return self.bias(buckets).permute(2, 0, 1)[None]  # (1, heads, L, L)
