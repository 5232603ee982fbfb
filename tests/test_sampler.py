from __future__ import annotations

import itertools

import numpy as np
import pytest

from fashion_lake.sampler import (
    DistContext,
    GroupedBatches,
    block_shuffle,
    eval_batches,
    make_batch_sampler,
    per_device_batch,
    train_batches,
)

SIZES = [1000, 1003, 97]


def _global_steps(n: int, global_batch: int, world: int, drop_last: bool, **kw) -> list[np.ndarray]:
    """Reassemble each step's global batch from every rank's slice, in rank order."""
    per_rank = [
        list(make_batch_sampler(n, global_batch // world, DistContext(r, world), shuffle=True,
                                 drop_last=drop_last, **kw))
        for r in range(world)
    ]  # fmt: skip
    assert len({len(batches) for batches in per_rank}) == 1, "ranks must run the same number of steps"
    return [np.concatenate([per_rank[r][s] for r in range(world)]) for s in range(len(per_rank[0]))]


@pytest.mark.parametrize("n", SIZES)
def test_block_shuffle_is_a_permutation(n: int) -> None:
    order = block_shuffle(n, seed=3, epoch=1, block_size=64, window=256)
    assert sorted(order.tolist()) == list(range(n))
    assert order.tolist() != list(range(n))


def test_order_depends_on_seed_and_epoch_only() -> None:
    a = block_shuffle(1000, seed=1, epoch=0, block_size=32, window=128)
    assert np.array_equal(a, block_shuffle(1000, seed=1, epoch=0, block_size=32, window=128))
    assert not np.array_equal(a, block_shuffle(1000, seed=1, epoch=1, block_size=32, window=128))
    assert not np.array_equal(a, block_shuffle(1000, seed=2, epoch=0, block_size=32, window=128))


def test_window_bounds_how_far_rows_travel() -> None:
    """Each window of the order holds whole blocks; a whole-dataset window mixes everything."""
    order = block_shuffle(1024, seed=0, epoch=0, block_size=64, window=256)
    for start in range(0, 1024, 256):
        blocks = set((order[start : start + 256] // 64).tolist())
        assert len(blocks) == 4
    full = block_shuffle(1024, seed=0, epoch=0, block_size=64, window=0)
    assert len(set((full[:256] // 64).tolist())) > 8


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("drop_last", [True, False])
def test_global_order_is_identical_for_any_world_size(n: int, drop_last: bool) -> None:
    kw = dict(seed=7, block_size=16, window=64)
    reference = _global_steps(n, 12, 1, drop_last, **kw)
    for world in (2, 3, 4):
        steps = _global_steps(n, 12, world, drop_last, **kw)
        full = n // 12
        assert [s.tolist() for s in steps[:full]] == [s.tolist() for s in reference[:full]]
        consumed = np.concatenate(steps) if steps else np.empty(0)
        assert len(set(consumed.tolist())) == len(consumed), "a row was read twice"
        if drop_last:
            assert len(consumed) == full * 12
        else:  # the tail is kept whenever every rank gets at least one row
            tail = n - full * 12
            assert len(consumed) == full * 12 + (tail if tail >= world else 0)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_are_disjoint_and_complete(world: int) -> None:
    n, batch = 960, 10  # divides evenly: every row exactly once
    order = block_shuffle(n, 5, 2, 64, 256)
    shards = [np.concatenate(train_batches(order, batch, DistContext(r, world), True)) for r in range(world)]
    assert sum(len(s) for s in shards) == n
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    for r in range(world):
        assert all(len(b) == batch for b in train_batches(order, batch, DistContext(r, world), True))


@pytest.mark.parametrize("n", [1, 5, 50, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_reads_every_row_once_with_equal_steps(n: int, world: int) -> None:
    per_rank = [eval_batches(n, 8, DistContext(r, world)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    rows = np.concatenate([np.concatenate(b) for b in per_rank])
    assert sorted(rows.tolist()) == list(range(n))
    sampler = make_batch_sampler(n, 8, DistContext(0, world), shuffle=False)
    assert len(sampler) == len(per_rank[0]) == len(list(sampler))


@pytest.mark.parametrize("n,drop_last", [(100, True), (100, False), (103, False), (101, False)])
def test_len_matches_iteration(n: int, drop_last: bool) -> None:
    for world in (1, 2, 3):
        sampler = make_batch_sampler(n, 8, DistContext(world - 1, world), shuffle=True, drop_last=drop_last)
        assert len(sampler) == len(list(sampler))


def test_set_epoch_changes_the_order() -> None:
    sampler = make_batch_sampler(200, 10, DistContext(), shuffle=True, seed=1, block_size=8, window=64)
    first = list(sampler)
    sampler.sampler.set_epoch(1)
    second = list(sampler)
    assert first != second
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(200))


def test_global_batch_size_must_divide() -> None:
    assert per_device_batch(None, 64, 4) == 16
    assert per_device_batch(32, None, 4) == 32
    with pytest.raises(ValueError, match="does not divide evenly over 3"):
        per_device_batch(None, 64, 3)
    with pytest.raises(ValueError):
        DistContext(rank=2, world_size=2)


def test_grouped_batches_hand_out_consecutive_batches() -> None:
    sampler = make_batch_sampler(50, 4, DistContext(), shuffle=True, seed=3, block_size=8, window=16)
    sampler.set_epoch(2)
    groups = list(GroupedBatches(sampler, 3))
    assert len(groups) == len(GroupedBatches(sampler, 3)) == 5  # 13 batches: 3+3+3+3+1
    assert [list(b) for g in groups for b in g] == [list(b) for b in sampler]
    assert [len(g) for g in groups] == [3, 3, 3, 3, 1] and {g.epoch for g in groups} == {2}
    with pytest.raises(ValueError, match="group must be >= 1"):
        GroupedBatches(sampler, 0)


def test_grouped_batches_iterate_their_batches_once() -> None:
    """Lightning's predict wrapper returns itself from ``iter()`` and restarts: one pass only."""
    from pytorch_lightning.overrides.distributed import _IndexBatchSamplerWrapper

    sampler = make_batch_sampler(20, 4, DistContext(), shuffle=False)
    groups = list(itertools.islice(GroupedBatches(_IndexBatchSamplerWrapper(sampler), 2), 10))  # bounded
    batches = [list(b) for b in sampler]
    assert [[list(b) for b in g] for g in groups] == [batches[i : i + 2] for i in (0, 2, 4)]
