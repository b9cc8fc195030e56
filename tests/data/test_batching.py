"""Frame-budget batches: budget, coverage, bucketing, curriculum, resume and sharding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from data.batching import FrameBudgetBatchSampler, LengthCurriculum

rng = np.random.default_rng(0)
LENGTHS = rng.integers(20, 300, size=700).tolist()


def padded(batch: list[int], lengths=LENGTHS) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def one_epoch(**kwargs) -> list[list[int]]:
    return list(FrameBudgetBatchSampler(LENGTHS, epochs=1, **kwargs))


def test_budget_and_every_item_exactly_once():
    batches = one_epoch(max_frames=1200, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert all(padded(b) <= 1200 for b in batches)
    # Greedy packing is tight: adding the next shorter item would have broken the budget.
    assert np.mean([padded(b) for b in batches]) > 0.8 * 1200


def test_oversize_items_get_their_own_batch_or_are_dropped():
    lengths = [10, 500, 12, 11]
    groups = [sorted(lengths[i] for i in b) for b in FrameBudgetBatchSampler(lengths, 100, epochs=1)]
    assert [500] in groups and sorted(n for g in groups for n in g) == sorted(lengths)
    kept = [i for b in FrameBudgetBatchSampler(lengths, 100, epochs=1, max_length=100) for i in b]
    assert sorted(kept) == [0, 2, 3]
    sizes = [len(b) for b in FrameBudgetBatchSampler(lengths, 10_000, epochs=1, max_batch_size=2, shuffle=False)]
    assert sizes == [2, 2]


def test_bucketing_wastes_less_padding_than_random_batches():
    batches = one_epoch(max_frames=2000, seed=1, pool_size=200)
    waste = sum(padded(b) - sum(LENGTHS[i] for i in b) for b in batches) / sum(LENGTHS)
    # The same batch sizes filled with random items (what a plain shuffled loader does).
    perm = np.random.default_rng(1).permutation(len(LENGTHS)).tolist()
    random_batches, pos = [], 0
    for b in batches:
        random_batches.append(perm[pos : pos + len(b)])
        pos += len(b)
    random_waste = sum(padded(b) - sum(LENGTHS[i] for i in b) for b in random_batches) / sum(LENGTHS)
    assert waste < 0.1 and waste < random_waste / 5


def test_deterministic_per_seed_and_epoch():
    a = one_epoch(max_frames=1500, seed=7)
    assert a == one_epoch(max_frames=1500, seed=7)
    assert a != one_epoch(max_frames=1500, seed=8)
    two = list(FrameBudgetBatchSampler(LENGTHS, 1500, seed=7, epochs=2))
    assert two[: len(a)] == a and two[len(a) :] != a
    assert sorted(i for b in two[len(a) :] for i in b) == list(range(len(LENGTHS)))
    ordered = one_epoch(max_frames=1500, shuffle=False)
    maxima = [max(LENGTHS[i] for i in b) for b in ordered]
    assert maxima == sorted(maxima, reverse=True)  # evaluation: one pass by decreasing length


def test_epoch_curriculum():
    cur = LengthCurriculum(start=60, end=200, ramp=4, unit="epoch")
    assert [cur.max_length(e, 0, 300) for e in range(6)] == [60, 95, 130, 165, 200, 200]
    assert LengthCurriculum(start=60, ramp=2).max_length(5, 0, 300) == 300  # end None: up to the longest
    s = FrameBudgetBatchSampler(LENGTHS, 1500, seed=0, curriculum=cur, epochs=6)
    seen_per_epoch = []
    for epoch in range(6):
        batches = s.plan(epoch)
        limit = cur.max_length(epoch, 0, max(LENGTHS))
        items = [i for b in batches for i in b]
        assert max(LENGTHS[i] for i in items) <= limit
        assert sorted(items) == sorted(i for i, n in enumerate(LENGTHS) if n <= limit)
        seen_per_epoch.append(len(items))
    assert seen_per_epoch == sorted(seen_per_epoch) and seen_per_epoch[0] < seen_per_epoch[-1]
    assert len(s) == sum(len(s.plan(e)) for e in range(6)) == len(list(s))


def test_step_curriculum_holds_at_every_step():
    cur = LengthCurriculum(start=40, end=300, ramp=30, unit="step")
    s = FrameBudgetBatchSampler(LENGTHS, 1200, seed=2, pool_size=50, curriculum=cur, max_steps=120)
    batches = list(s)
    assert len(batches) == 120 == len(s)
    for step, b in enumerate(batches):
        assert max(LENGTHS[i] for i in b) <= cur.max_length(0, step, max(LENGTHS))
    early = np.mean([max(LENGTHS[i] for i in b) for b in batches[:10]])
    late = np.mean([max(LENGTHS[i] for i in b) for b in batches[-20:]])
    assert early < 100 < late
    # The limit grows inside an epoch too (re-read at every pool), not only from one epoch to the next.
    first_epoch = s.plan(0)
    assert len(first_epoch) < 120 and max(LENGTHS[i] for b in first_epoch for i in b) > 200


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_resume_from_any_step_continues_the_same_stream(unit):
    cur = LengthCurriculum(start=50, end=250, ramp=3 if unit == "epoch" else 40, unit=unit)
    full = list(FrameBudgetBatchSampler(LENGTHS, 1000, seed=4, pool_size=100, curriculum=cur, max_steps=400))
    for start in (1, 97, 250):
        tail = list(
            FrameBudgetBatchSampler(
                LENGTHS, 1000, seed=4, pool_size=100, curriculum=cur, start_step=start, max_steps=400
            )
        )
        assert tail == full[start:]


def test_processes_split_each_global_step():
    world = 3
    single = FrameBudgetBatchSampler(LENGTHS, 900, seed=5, epochs=1)
    plan = single.plan(0)
    shards = [
        list(FrameBudgetBatchSampler(LENGTHS, 900, seed=5, epochs=1, rank=r, world_size=world)) for r in range(world)
    ]
    steps = len(plan) // world
    assert all(len(s) == steps for s in shards)
    for step in range(steps):
        assert [shards[r][step] for r in range(world)] == plan[step * world : (step + 1) * world]
    dropped = plan[steps * world :]  # the leftover that cannot serve every process
    assert len(dropped) < world
    with pytest.raises(ValueError, match="rank"):
        FrameBudgetBatchSampler(LENGTHS, 900, rank=3, world_size=3)


def test_item_seeds_for_seeded_items():
    s = FrameBudgetBatchSampler(LENGTHS, 900, seed=5, epochs=2, with_seeds=True)
    pairs = [p for b in s for p in b]
    assert len(pairs) == 2 * len(LENGTHS)
    assert len({seed for _, seed in pairs}) == len(pairs)  # every draw gets its own seed
    plain = [i for b in FrameBudgetBatchSampler(LENGTHS, 900, seed=5, epochs=2) for i in b]
    assert [i for i, _ in pairs] == plain


def test_endless_sampler_has_no_length_and_keeps_going():
    s = FrameBudgetBatchSampler([5, 6, 7], 12, seed=0)
    with pytest.raises(TypeError):
        len(s)
    got = list(itertools.islice(iter(s), 50))
    assert len(got) == 50 and all(padded(b, [5, 6, 7]) <= 12 for b in got)
