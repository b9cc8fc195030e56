"""Learning-rate schedules as multipliers of the peak rate, for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, end_ratio: float) -> Callable[[int], float]:
    """Linear warmup from 0 to 1, then a quarter-period cosine from 1 down to ``end_ratio``.

    VATT pretraining: peak 1e-4, end 5e-5 (``end_ratio = 0.5``) at step ``total_steps``;
    ``m(t) = end + (1 - end) * cos(pi/2 * p)`` with ``p`` the fraction of the post-warmup steps done.
    """

    def multiplier(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        p = min(1.0, (step - warmup_steps) / span)
        return end_ratio + (1.0 - end_ratio) * math.cos(0.5 * math.pi * p)

    return multiplier
