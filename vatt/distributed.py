"""Process-group helpers for the contrastive losses: gathers that carry gradients, and world info.

Distributed logic lives in the losses (and the heads' batch norm), never in the towers. Everything here is
a no-op on a single process or when ``torch.distributed`` is not initialised.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    ``torch.distributed.nn.functional.all_gather`` on gloo sends gradients back through scatter into
    ``empty_like(grad)`` buffers; a non-contiguous gradient (e.g. from an einsum's backward) then arrives
    scrambled (seen with torch 2.11). Making it contiguous first avoids that.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.contiguous()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping gradients (open_clip's gather_with_grad).

    The backward pass sums the gradients arriving from every process into each process's own rows
    (``torch.distributed.nn.functional.all_gather``). All processes must pass the same shape.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat([_ContiguousGrad.apply(part) for part in all_gather(x)], dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, without gradients (masks, counts)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum_no_grad(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def check_same_batch(n: int, device: torch.device) -> None:
    """Raise if processes disagree on the local batch size (gathers need equal shapes; use drop_last)."""
    if world_size() == 1:
        return
    sizes = gather_no_grad(torch.tensor([n], device=device))
    if not bool((sizes == n).all()):
        raise ValueError(f"local batch sizes differ across processes: {sizes.tolist()}; use equal batches (drop_last)")
