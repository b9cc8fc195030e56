"""Batches by a frame budget, with length bucketing and a curriculum on utterance length.

Speech utterances vary a lot in length, so a fixed batch size either wastes memory on padding or runs
out of it on long batches. :class:`FrameBudgetBatchSampler` packs utterances of similar length
together so that ``batch size x longest utterance`` (the padded frames, which is what memory scales
with) stays within ``max_frames``, as ESPnet's ``numel`` batches and fairseq's ``max_tokens`` do.
Items are shuffled, cut into pools of ``pool_size``, sorted by length inside each pool and packed
greedily, then the batches are shuffled. A :class:`LengthCurriculum` admits only utterances up to a
maximum length that grows with the epoch or step, so training starts on short, easy utterances.

The sampler is step-indexed like :class:`data.sampling.StepBatchSampler`: the batches of an epoch are
a pure function of ``(seed, epoch)`` (and, for a step curriculum, of the step the epoch starts at), so a
run resumes exactly from ``start_step``. With ``world_size`` processes, step ``s`` of an epoch gives
process ``r`` batch ``s * world_size + r``; an epoch's leftover batches that cannot serve every process
are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass
class LengthCurriculum:
    """Maximum utterance length (frames) growing linearly from ``start`` to ``end`` over ``ramp``
    epochs or steps, then staying at ``end``; ``end = None`` grows to the longest utterance."""

    start: int
    end: int | None = None
    ramp: int = 1
    unit: Literal["epoch", "step"] = "epoch"

    def __post_init__(self) -> None:
        if self.start < 1 or self.ramp < 1:
            raise ValueError(f"curriculum start and ramp must be >= 1, got {self.start}, {self.ramp}")
        if self.end is not None and self.end < self.start:
            raise ValueError(f"curriculum end {self.end} is below its start {self.start}")
        if self.unit not in ("epoch", "step"):
            raise ValueError(f"curriculum unit must be 'epoch' or 'step', got {self.unit!r}")

    def max_length(self, epoch: int, step: int, longest: int) -> int:
        """The longest admitted utterance at ``epoch`` / global ``step``; ``longest`` stands in for
        ``end = None``."""
        end = max(self.start, longest) if self.end is None else self.end
        t = epoch if self.unit == "epoch" else step
        return end if t >= self.ramp else int(self.start + (end - self.start) * t / self.ramp)


class FrameBudgetBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices whose padded size ``len(batch) * max(lengths)`` fits ``max_frames``.

    ``lengths`` are the utterance lengths (frames). An utterance longer than ``max_frames`` gets a batch
    of its own; ``max_length`` drops longer ones instead. ``shuffle=False`` gives one deterministic
    pass in order of length (evaluation). ``epochs`` / ``max_steps`` bound the iteration (None = no
    bound). ``with_seeds=True`` yields ``(index, item_seed)`` pairs for :class:`data.sampling.SeededItems`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames: int,
        *,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        pool_size: int = 1000,
        curriculum: LengthCurriculum | None = None,
        max_length: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        max_steps: int | None = None,
        epochs: int | None = None,
        with_seeds: bool = False,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError("lengths must be a non-empty 1-D sequence")
        self.max_frames = max_frames
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_size = max(1, pool_size)
        self.curriculum = curriculum
        self.max_length = max_length
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.max_steps = max_steps
        self.epochs = epochs
        self.with_seeds = with_seeds
        self._plans: dict[tuple[int, int], list[list[int]]] = {}
        self._steps: dict[tuple[int, int], int] = {}  # steps per (epoch, first step), for fast resume

    def _limit(self, epoch: int, step: int) -> int | None:
        limits = [] if self.max_length is None else [self.max_length]
        if self.curriculum is not None:
            limits.append(self.curriculum.max_length(epoch, step, int(self.lengths.max())))
        return min(limits) if limits else None

    def _pack(self, indices: np.ndarray) -> list[list[int]]:
        """Greedy packing of ``indices`` sorted by decreasing length (so a batch's first item is its longest)."""
        order = indices[np.argsort(-self.lengths[indices], kind="stable")]
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order.tolist():
            n = int(self.lengths[i])
            longest_if = max(longest, n)
            full = self.max_batch_size is not None and len(current) >= self.max_batch_size
            if current and (full or (len(current) + 1) * longest_if > self.max_frames):
                batches.append(current)
                current, longest = [], 0
                longest_if = n
            current.append(i)
            longest = longest_if
        if current:
            batches.append(current)
        return batches

    def plan(self, epoch: int, first_step: int = 0) -> list[list[int]]:
        """The global batches of ``epoch`` (all processes), which begins at global step ``first_step``."""
        key = (epoch, first_step if self.curriculum is not None and self.curriculum.unit == "step" else 0)
        if key in self._plans:
            return self._plans[key]
        all_items = np.arange(len(self.lengths))
        if not self.shuffle:
            limit = self._limit(epoch, first_step)
            keep = all_items if limit is None else all_items[self.lengths <= limit]
            batches = self._pack(keep)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(all_items)
            batches = []
            step_unit = self.curriculum is not None and self.curriculum.unit == "step"
            for lo in range(0, len(perm), self.pool_size):
                pool = perm[lo : lo + self.pool_size]
                # A step curriculum is re-read at every pool, at the step its first batch will run.
                step = first_step + len(batches) // self.world_size
                limit = self._limit(epoch, step)
                if limit is not None:
                    pool = pool[self.lengths[pool] <= limit]
                packed = self._pack(pool)
                if step_unit:  # keep pools in order so later pools see the longer limit
                    packed = [packed[i] for i in rng.permutation(len(packed))]
                batches.extend(packed)
            if not step_unit:
                batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) - len(batches) % self.world_size
        if usable == 0 and batches:
            logger.warning("epoch %d has %d batches, fewer than the %d processes", epoch, len(batches), self.world_size)
        self._plans = {key: batches[:usable]}  # keep only the latest plan
        return self._plans[key]

    def steps_in_epoch(self, epoch: int, first_step: int = 0) -> int:
        key = (epoch, first_step)
        if key not in self._steps:
            self._steps[key] = len(self.plan(epoch, first_step)) // self.world_size
        return self._steps[key]

    def _epoch_at(self, step: int) -> tuple[int, int]:
        """(epoch, first step of that epoch) holding global ``step``."""
        epoch, first = 0, 0
        while True:
            n = self.steps_in_epoch(epoch, first)
            if n == 0:
                raise ValueError("no utterance fits the length limits; nothing to batch")
            if step < first + n:
                return epoch, first
            epoch, first = epoch + 1, first + n

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        step = self.start_step
        epoch, first = self._epoch_at(step)
        while (self.max_steps is None or step < self.max_steps) and (self.epochs is None or epoch < self.epochs):
            batches = self.plan(epoch, first)
            n = len(batches) // self.world_size
            while step < first + n and (self.max_steps is None or step < self.max_steps):
                pos = (step - first) * self.world_size + self.rank
                batch = batches[pos]
                if self.with_seeds:
                    base = (self.seed * 1_000_003 + epoch) * 1_000_003 + pos * 4096
                    yield [(i, (base + j) % (2**31 - 1)) for j, i in enumerate(batch)]
                else:
                    yield list(batch)
                step += 1
            epoch, first = epoch + 1, first + n

    def __len__(self) -> int:
        """Steps from ``start_step`` to the end (needs ``epochs`` or ``max_steps``)."""
        if self.epochs is None and self.max_steps is None:
            raise TypeError("an endless FrameBudgetBatchSampler has no length; set epochs or max_steps")
        if self.epochs is None:
            return max(0, self.max_steps - self.start_step)  # type: ignore[operator]
        total, first = 0, 0
        for epoch in range(self.epochs):
            total += self.steps_in_epoch(epoch, first)
            first = total
        end = total if self.max_steps is None else min(total, self.max_steps)
        return max(0, end - self.start_step)
