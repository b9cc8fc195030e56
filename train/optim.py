"""Optimizer and learning-rate schedule of a run, from its ``optim.*`` section."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from train.schedule import warmup_cosine

# Ranges of the ``optim.*`` keys, checked before any work (train.config.check_ranges).
OPTIM_RANGES = {
    "optim.lr": (">", 0),
    "optim.end_lr": (">=", 0),
    "optim.warmup_steps": (">=", 0),
    "optim.betas": ("in", 0, 0.999999),
    "optim.weight_decay": (">=", 0),
    "optim.grad_clip": (">=", 0),
}


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    end_lr: float = 1e-5  # reached at max_steps by the cosine schedule
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 disables clipping


def build_optimizer(o: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over every parameter (frozen weights simply get no gradient while frozen)."""
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def lr_schedule(o: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Multiplier of ``optim.lr`` per step: linear warmup, then cosine to ``end_lr`` or constant."""
    if o.schedule == "constant":
        return lambda step: min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    return warmup_cosine(o.warmup_steps, max_steps, o.end_lr / o.lr)


def build_scheduler(
    o: OptimConfig, optimizer: torch.optim.Optimizer, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(o, max_steps))
