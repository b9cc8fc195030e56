import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from data.sampling import GroupedStepBatchSampler, SeededItems, StepBatchSampler
from train.schedule import warmup_cosine


def test_every_item_once_per_epoch_and_shards_tile_the_global_batch():
    n, gb = 10, 4
    single = StepBatchSampler(n, gb, seed=3, max_steps=5)
    seen = [i for batch in single for i, _ in batch]
    assert sorted(seen[:10]) == list(range(10))  # first epoch is a permutation
    shards = [list(StepBatchSampler(n, gb, seed=3, rank=r, world_size=2, max_steps=5)) for r in range(2)]
    for step, batch in enumerate(StepBatchSampler(n, gb, seed=3, max_steps=5)):
        assert shards[0][step] + shards[1][step] == batch


def test_resume_continues_the_same_stream():
    full = list(StepBatchSampler(7, 3, seed=1, max_steps=9))
    tail = list(StepBatchSampler(7, 3, seed=1, start_step=4, max_steps=9))
    assert tail == full[4:]
    assert list(StepBatchSampler(7, 3, seed=2, max_steps=9)) != full


class _Noisy(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.rand(2) + i, random.random(), np.random.rand()  # noqa: NPY002


def test_seeded_items_are_reproducible_and_leave_global_rng_alone():
    ds = SeededItems(_Noisy())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(2, 11)]
    assert torch.equal(torch.get_rng_state(), before)
    b = ds[(2, 11)]
    c = ds[(2, 12)]
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not torch.equal(a[0], c[0])


def test_warmup_cosine_endpoints_against_formula():
    m = warmup_cosine(10, 110, 0.5)
    assert m(0) == 0.1 and m(9) == 1.0
    assert m(10) == 1.0
    assert math.isclose(m(60), 0.5 + 0.5 * math.cos(math.pi / 4))
    assert math.isclose(m(110), 0.5) and math.isclose(m(500), 0.5)


def test_grouped_batches_come_from_the_given_number_of_groups_resume_and_shard_alike():
    groups = [f"speaker{i % 7}" for i in range(7 * 10)] + ["small"] * 3  # 7 groups of 10, one of 3
    make = lambda **kw: GroupedStepBatchSampler(groups, 12, 3, seed=5, **kw)  # noqa: E731
    whole = make(max_steps=40)
    seen = set()
    for step, batch in enumerate(whole):
        assert len(batch) == 12
        by_group: dict[str, list[int]] = {}
        for index, _ in batch:
            by_group.setdefault(groups[index], []).append(index)
        assert len(by_group) == 3 and sorted(map(len, by_group.values())) == [4, 4, 4]
        for name, members in by_group.items():  # distinct items where the group has enough
            assert len(set(members)) == (4 if name != "small" else len(set(members)))
        assert batch == whole.global_indices(step)
        seen |= set(by_group)
    assert seen == set(groups)  # every group is visited
    seeds = [s for step in range(40) for _, s in whole.global_indices(step)]
    assert len(set(seeds)) == len(seeds)  # each drawn item has its own augmentation seed
    resumed = list(make(start_step=25, max_steps=40))
    assert resumed == list(whole)[25:]
    shards = [list(GroupedStepBatchSampler(groups, 12, 3, seed=5, rank=r, world_size=2, max_steps=5)) for r in (0, 1)]
    assert [a + b for a, b in zip(*shards)] == list(whole)[:5]
    assert list(GroupedStepBatchSampler(groups, 12, 3, seed=6, max_steps=5)) != list(whole)[:5]
    with pytest.raises(ValueError, match="groups_per_batch=9"):
        GroupedStepBatchSampler(groups, 12, 9)
