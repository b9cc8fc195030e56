"""Batch norm whose batch moments span all processes, on CPU (gloo) and GPU alike.

VATT's heads use cross-replica batch norm. ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so this layer
reduces the moments itself with the autograd-aware ``torch.distributed.nn.functional.all_reduce``: in
training, with a process group of more than one process, N processes with B rows each normalise exactly
as one process with the N*B rows would, and gradients flow back through the reduction. Otherwise (eval,
no process group, or one process) it is plain ``nn.BatchNorm1d``. Running statistics are updated as usual
(unbiased variance, ``momentum``), identically on every process.
"""

from __future__ import annotations

import torch
from torch import nn

from vatt.distributed import world_size


class CrossProcessBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over (B, C) inputs with moments reduced across processes in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        if x.ndim != 2:
            raise ValueError(f"CrossProcessBatchNorm1d expects (B, C) inputs, got {tuple(x.shape)}")
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = all_reduce(xf.new_tensor([float(x.shape[0])]))  # total rows over all processes
        mean = all_reduce(xf.sum(0)) / count  # (C,)
        # second pass on centred values: no cancellation, unlike E[x^2] - E[x]^2
        var = all_reduce(((xf - mean) ** 2).sum(0)) / count  # biased, used to normalise
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.detach())
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        n = float(count)
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
