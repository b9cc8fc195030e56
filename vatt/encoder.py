"""Pre-LN transformer encoder with a learned AGG token whose output is the pooled feature (VATT Sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vatt.config import EncoderConfig
from vatt.layers.attention import Attention
from vatt.layers.drop import DropPath
from vatt.layers.mlp import Mlp


class Block(nn.Module):
    """x + DropPath(Dropout(Attn(LN(x)))), then x + DropPath(Dropout(MLP(LN(x))))."""

    def __init__(self, cfg: EncoderConfig, drop_path: float = 0.0):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, attn_drop=cfg.dropout, proj_drop=cfg.dropout)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), dropout=cfg.dropout)
        self.drop_mlp = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.drop_mlp(self.mlp(self.norm2(x))))


class Encoder(nn.Module):
    """Transformer stack + final LayerNorm over ``[AGG; tokens]``.

    ``forward(x (B, N, D), agg (D,), attn_mask)`` prepends the AGG token, runs the blocks and returns the
    token outputs (B, N, D) and the AGG output (B, D). ``attn_mask`` covers the N + 1 positions: a bool
    keep-mask or an additive float bias broadcastable to (B, heads, N+1, N+1). Modality-agnostic models
    share one Encoder and pass each modality's own AGG token.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        # stochastic depth grows linearly with depth (plain Python: also works under a meta-device context)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.grad_checkpointing = False
        self.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of storing its activations (memory for compute)."""
        self.grad_checkpointing = enable

    def forward(
        self, x: torch.Tensor, agg: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B = x.shape[0]
        x = torch.cat([agg.to(x.dtype).expand(B, 1, -1), x], dim=1)  # (B, 1 + N, D)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask)
        x = self.norm(x)
        return x[:, 1:], x[:, 0]  # tokens (B, N, D), pooled (B, D)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
