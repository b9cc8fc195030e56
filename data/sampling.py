"""Step-indexed sampling: the batch of step ``s`` is a pure function of ``(seed, s)``.

Training resumes exactly from any step, and N processes with batch B see the same items, in the same
order and with the same augmentation, as one process with batch N * B: the global batch of a step is
drawn first, then each process takes its contiguous slice. Every item carries its own seed, and
:class:`SeededItems` fetches it under that seed, so augmentation does not depend on which worker
process or how many workers loaded it.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start_step, start_step + 1, ...``, this process's ``(index, item_seed)`` list.

    Items are visited in epochs: each epoch is a fresh permutation of ``range(num_items)`` seeded by
    ``(seed, epoch)``, and global batches are consecutive runs of it (they may straddle epochs).
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        max_steps: int | None = None,
    ) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.max_steps = max_steps
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_items, generator=g)}
        return self._perms[epoch]

    def item_seed(self, pos: int) -> int:
        """The augmentation seed of the item drawn at position ``pos`` of the whole stream (step * batch + slot)."""
        return (self.seed * 7_919 + pos) % (2**31 - 1)

    def global_indices(self, step: int) -> list[tuple[int, int]]:
        """All ``(index, item_seed)`` pairs of the global batch of ``step``."""
        out = []
        for pos in range(step * self.global_batch, (step + 1) * self.global_batch):
            epoch, offset = divmod(pos, self.num_items)
            index = int(self._perm(epoch)[offset])
            out.append((index, self.item_seed(pos)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            batch = self.global_indices(step)
            lo = self.rank * self.local_batch
            yield batch[lo : lo + self.local_batch]
            step += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return max(0, self.max_steps - self.start_step)


class GroupedStepBatchSampler(StepBatchSampler):
    """A :class:`StepBatchSampler` whose global batch of each step comes from ``groups_per_batch`` groups.

    ``groups[i]`` names item i's group (e.g. its speaker). At every step that many distinct groups are
    drawn, then a near-equal share of the batch from each, distinct items while a group has enough of
    them. The draw is a pure function of ``(seed, step)``, so resuming and any number of processes see
    the same batches as :class:`StepBatchSampler` does; groups are visited at random, not in epochs.
    """

    def __init__(self, groups: Sequence[Hashable], global_batch: int, groups_per_batch: int, **steps: Any) -> None:
        """``steps``: :class:`StepBatchSampler`'s keywords (seed, rank, world_size, start_step, max_steps)."""
        super().__init__(len(groups), global_batch, **steps)
        members: dict[Hashable, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        self.members = [torch.tensor(v) for v in members.values()]
        if not 1 <= groups_per_batch <= min(len(self.members), global_batch):
            raise ValueError(
                f"groups_per_batch={groups_per_batch}: expected 1 to {min(len(self.members), global_batch)} "
                f"({len(self.members)} groups, batch {global_batch})"
            )
        self.groups_per_batch = groups_per_batch

    def global_indices(self, step: int) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 999_983 * (step + 1))
        chosen = torch.randperm(len(self.members), generator=g)[: self.groups_per_batch].tolist()
        share, extra = divmod(self.global_batch, self.groups_per_batch)
        index: list[int] = []
        for k, group in enumerate(chosen):
            members, n = self.members[group], share + (k < extra)
            if len(members) >= n:
                picks = torch.randperm(len(members), generator=g)[:n]
            else:
                picks = torch.randint(len(members), (n,), generator=g)
            index += members[picks].tolist()
        first = step * self.global_batch
        return [(i, self.item_seed(first + j)) for j, i in enumerate(index)]


class SeededItems(Dataset):
    """Wraps a map-style dataset so that ``ds[(index, seed)]`` fetches ``index`` under ``seed``.

    The torch, numpy and Python RNGs are seeded for the fetch and restored afterwards, so the caller's
    random streams are untouched (with ``num_workers=0`` the fetch runs in the training process).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what datasets use
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)  # noqa: NPY002
