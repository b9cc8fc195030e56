"""VATT's projection heads into the common spaces: the MMV "fine-and-coarse" (FAC) hierarchy.

Following the released code (``FACHead``; Alayrac et al. 2020 for the FAC design):
- video -> S_va: Linear (no bias) - BN - ReLU - Linear (no bias) - BN
- S_va  -> S_vt: ReLU - Linear (no bias) - BN   (applied to the video's S_va vector before normalisation)
- audio -> S_va: Linear;  text -> S_vt: Linear
- with ``audio_bn``: audio -> S_va: Linear (no bias) - BN. Not in the released code: there the audio
  embeddings share one large common component while the tower's outputs barely differ from clip to clip
  (as at the start of training from scratch), and normalised embeddings that differ by little give the
  NCE almost no gradient; the batch norm removes that component, as the video head's does.
Batch norms use the cross-process layer (VATT uses cross-replica BN). The model L2-normalises the outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from vatt.layers.batchnorm import CrossProcessBatchNorm1d


class FACHead(nn.Module):
    def __init__(
        self,
        video_dim: int,
        audio_dim: int,
        text_dim: int,
        va_dim: int = 512,
        vt_dim: int = 256,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        audio_bn: bool = False,
    ):
        super().__init__()

        def bn(d: int) -> nn.Module:
            return CrossProcessBatchNorm1d(d, eps=bn_eps, momentum=bn_momentum)

        self.video_to_va = nn.Sequential(
            nn.Linear(video_dim, va_dim, bias=False),
            bn(va_dim),
            nn.ReLU(),
            nn.Linear(va_dim, va_dim, bias=False),
            bn(va_dim),
        )
        self.va_to_vt = nn.Sequential(nn.ReLU(), nn.Linear(va_dim, vt_dim, bias=False), bn(vt_dim))
        if audio_bn:
            self.audio_to_va: nn.Module = nn.Sequential(nn.Linear(audio_dim, va_dim, bias=False), bn(va_dim))
        else:
            self.audio_to_va = nn.Linear(audio_dim, va_dim)
        self.text_to_vt = nn.Linear(text_dim, vt_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def video(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled video (B, Dv) -> (S_va (B, va_dim), S_vt (B, vt_dim)), not normalised."""
        va = self.video_to_va(pooled)
        return va, self.va_to_vt(va)

    def audio(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.audio_to_va(pooled)  # (B, va_dim)

    def text(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text_to_vt(pooled)  # (N, vt_dim)
