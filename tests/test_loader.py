"""LakeLoader positions: saved mid-epoch on one topology, resumed on the same or another one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashion_lake.loader import LakeLoader
from fashion_lake.sampler import DistContext, block_shuffle, make_batch_sampler

ROWS, SEED, EPOCH = 103, 5, 2


class RowIds(torch.utils.data.Dataset):
    """Each row is its own id, so a batch shows which rows it holds."""

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, row: int) -> int:
        return row


def _loader(
    rank: int, world: int, global_batch: int, workers: int = 0, drop_last: bool = False
) -> LakeLoader:
    sampler = make_batch_sampler(
        ROWS, global_batch // world, DistContext(rank, world), shuffle=True, seed=SEED, drop_last=drop_last,
        block_size=8, window=32,
    )  # fmt: skip
    sampler.set_epoch(EPOCH)
    return LakeLoader(RowIds(), batch_sampler=sampler, num_workers=workers)


def _run(world: int, global_batch: int, steps: int | None = None, states=None, **kw) -> tuple[list, list]:
    """Each rank's batches (up to ``steps``, else to the end of the epoch) and final states."""
    loaders = [_loader(r, world, global_batch, **kw) for r in range(world)]
    for loader, state in zip(loaders, states or [None] * world, strict=True):
        if state is not None:
            loader.load_state_dict(state)
    iters = [iter(loader) for loader in loaders]
    steps_run = len(loaders[0]) - (states[0]["batches"] if states else 0) if steps is None else steps
    batches = [[next(it).tolist() for _ in range(steps_run)] for it in iters]
    return batches, [loader.state_dict() for loader in loaders]


def _global(batches: list[list]) -> list[int]:
    """Reassemble the global order from per-rank batches, step by step, ranks in order."""
    return [row for step in zip(*batches, strict=True) for part in step for row in part]


@pytest.mark.parametrize(
    ("world", "new_world", "workers"), [(1, 1, 0), (1, 1, 2), (2, 1, 0), (1, 3, 0), (2, 4, 1)]
)
def test_resume_continues_the_global_order(world: int, new_world: int, workers: int) -> None:
    order = block_shuffle(ROWS, SEED, EPOCH, block_size=8, window=32).tolist()
    before, states = _run(world, 12, steps=3, workers=workers)
    # Every rank restores rank 0's state, as every process reads the same checkpoint.
    after, _ = _run(new_world, 12, states=[states[0]] * new_world, workers=workers)
    consumed = _global(before) + _global(after)
    assert consumed == order, "every row exactly once, in the uninterrupted order"
    assert states[0]["rows"] == 36 and states[0]["batches"] == 3


def test_same_topology_restores_torchdata_state_and_len() -> None:
    loader = _loader(0, 1, 10)
    it = iter(loader)
    first = [next(it).tolist() for _ in range(4)]
    state = loader.state_dict()
    resumed = _loader(0, 1, 10)
    resumed.load_state_dict(state)
    rest = [b.tolist() for b in resumed]
    assert len(first) + len(rest) == len(resumed) == 11
    assert sorted(sum(first + rest, [])) == list(range(ROWS))
    assert resumed.state_dict()["finished"]


def test_other_topology_counts_steps_already_taken() -> None:
    """Lightning counts batches already taken towards ``len``; the new world must agree."""
    _, states = _run(2, 20, steps=2)  # 40 rows in 2 steps
    resumed = _loader(0, 1, 10)
    resumed.load_state_dict(states[0])
    assert len(resumed) == 2 + 7  # 63 rows left: 6 full batches of 10 and a tail of 3
    assert len(list(resumed)) == 7
    resumed.batch_sampler.set_epoch(EPOCH + 1)
    assert len(resumed) == 11, "the resumed epoch is over: the next one is whole"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_second_resume_in_the_same_epoch(workers: int) -> None:
    """2 processes -> 1 (rows path), killed again, resumed on 1 (same topology as the last run)."""
    order = block_shuffle(ROWS, SEED, EPOCH, block_size=8, window=32).tolist()
    first, states = _run(2, 20, steps=2, workers=workers)
    second = _loader(0, 1, 10, workers=workers)
    second.load_state_dict(states[0])
    it = iter(second)
    middle = [next(it).tolist() for _ in range(2)]
    third = _loader(0, 1, 10, workers=workers)
    third.load_state_dict(second.state_dict())
    rest = [b.tolist() for b in third]
    assert _global(first) + sum(middle + rest, []) == order


@pytest.mark.parametrize("workers", [0, 2])
def test_end_of_an_elastic_epoch_is_finished(workers: int) -> None:
    """Workers exhaust the batch sampler early; the state at the epoch's end must still say so."""
    _, states = _run(2, 20, steps=2, workers=workers)
    resumed = _loader(0, 1, 10, workers=workers)
    resumed.load_state_dict(states[0])
    it = iter(resumed)
    for _ in range(len(resumed) - 2):  # as Lightning: len minus the steps already taken, no StopIteration
        next(it)
    state = resumed.state_dict()
    assert state["finished"] and state["rows"] == ROWS
    after = _loader(0, 1, 10, workers=workers)
    after.load_state_dict(state)
    epoch = sorted(row for b in after for row in b.tolist())
    assert after.batch_sampler.epoch == EPOCH + 1 and epoch == list(range(ROWS))


def test_a_state_taken_before_iterating_keeps_the_position() -> None:
    """A checkpoint between restoring and the first batch (e.g. during the sanity check)."""
    _, states = _run(2, 20, steps=2)
    for loader in (_loader(0, 1, 10), _loader(0, 2, 20)):  # another topology, then the same
        loader.load_state_dict(states[0])
        assert {k: loader.state_dict()[k] for k in ("epoch", "batches", "rows")} == {
            "epoch": EPOCH, "batches": 2, "rows": 40,
        }  # fmt: skip


def test_an_epoch_cut_short_does_not_shorten_the_next() -> None:
    """limit_train_batches ends an epoch before len(loader): the next epoch is whole."""
    loader = _loader(0, 1, 10)
    it = iter(loader)
    for _ in range(3):
        next(it)
    resumed = _loader(0, 1, 10)
    resumed.load_state_dict(loader.state_dict())
    resumed.batch_sampler.set_epoch(EPOCH + 1)  # Lightning moves on: that epoch was over
    assert sorted(row for b in resumed for row in b.tolist()) == list(range(ROWS))


def test_a_changed_order_is_refused() -> None:
    from fashion_lake.errors import CheckpointError

    _, states = _run(1, 10, steps=2)
    other = LakeLoader(RowIds(), batch_sampler=make_batch_sampler(
        ROWS, 10, DistContext(), shuffle=True, seed=SEED + 1, block_size=8, window=32))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"training order that no longer applies.*'seed': \(5, 6\)"):
        other.load_state_dict(states[0])


def test_state_saved_at_epoch_end_starts_the_next_epoch() -> None:
    _, states = _run(1, 10)
    assert states[0]["finished"]
    resumed = _loader(0, 2, 10)
    resumed.load_state_dict(states[0])
    assert resumed.batch_sampler.epoch == EPOCH + 1
    expected = block_shuffle(ROWS, SEED, EPOCH + 1, block_size=8, window=32)[:5].tolist()
    assert next(iter(resumed)).tolist() == expected


def test_prefetched_batches_are_not_consumed() -> None:
    """With workers running ahead, the state counts only batches handed out."""
    loader = _loader(0, 1, 10, workers=2)
    it = iter(loader)
    taken = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state["batches"] == 2 and state["rows"] == 20
    other = _loader(0, 1, 10, workers=1)  # another worker count: resumed from the row count
    other.load_state_dict(state)
    rest = [b.tolist() for b in other]
    assert np.array_equal(np.concatenate(taken + rest), block_shuffle(ROWS, SEED, EPOCH, 8, 32))
