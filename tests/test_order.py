"""The epoch order (order.py): partitions of read units, global batches, ranks' shares."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fashion_lake.data.order import SNAP, DistContext, TrainOrder, chunks, eval_shares, per_device_batch


def _units(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


UNITS = _units([97, 120, 40, 300, 64, 64, 15, 210, 90, 1])  # uneven, as Deep Lake chunks after commits


def _global_batches(order: TrainOrder, world: int) -> list[np.ndarray]:
    """Each step's rows, from every rank's share, put back in global-position order."""
    out = []
    for step in range(order.steps):
        shares = [order.batch(step, order.owned(DistContext(r, world))) for r in range(world)]
        positions = np.concatenate([p for p, _ in shares])
        rows = np.concatenate([rows for _, rows in shares])
        out.append(rows[np.argsort(positions)])
    return out


@pytest.mark.parametrize("drop_last", [False, True])
def test_an_epoch_is_every_row_once(drop_last: bool) -> None:
    order = TrainOrder(UNITS, 64, seed=3, epoch=1, partitions=8, group_units=2, drop_last=drop_last)
    batches = _global_batches(order, 1)
    assert [len(batch) for batch in batches] == [order.batch_rows(step) for step in range(order.steps)]
    rows = np.concatenate(batches)
    n = int(UNITS[-1])
    assert len(np.unique(rows)) == len(rows)
    assert len(rows) == (n // 64 * 64 if drop_last else n)
    assert rows.tolist() != sorted(rows.tolist())


@pytest.mark.parametrize("world", [2, 4, 8])
def test_global_batches_do_not_depend_on_the_world_size(world: int) -> None:
    def order() -> TrainOrder:
        return TrainOrder(UNITS, 64, seed=1, epoch=2, partitions=8, group_units=2, drop_last=False)

    one, many = _global_batches(order(), 1), _global_batches(order(), world)
    assert [b.tolist() for b in one] == [b.tolist() for b in many]
    # a few uneven units: partition boundaries moved to unit ends make shares uneven, up to a bound
    for step in range(int(UNITS[-1]) // 64):  # the full ones
        sizes = [len(order().batch(step, order().owned(DistContext(r, world)))[1]) for r in range(world)]
        assert sum(sizes) == 64 and max(sizes) < (1 + SNAP) * 64 / world + 2, (step, sizes)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_ranks_read_disjoint_units_but_for_cuts(world: int) -> None:
    """A unit is read by two ranks only where a partition boundary between them cuts it."""
    units = _units([100] * 40)
    order = TrainOrder(units, 32, partitions=8, group_units=3)
    readers: dict[int, set[int]] = {}
    for rank in range(world):
        owned = order.owned(DistContext(rank, world))
        rows = np.concatenate([order.batch(step, owned)[1] for step in range(order.steps)])
        for unit in np.unique(np.searchsorted(units, rows, side="right") - 1).tolist():
            readers.setdefault(unit, set()).add(rank)
    shared = sum(len(ranks) - 1 for ranks in readers.values())
    assert shared <= world - 1


def test_order_depends_on_seed_and_epoch() -> None:
    def rows(seed: int, epoch: int) -> list[int]:
        order = TrainOrder(UNITS, 64, seed=seed, epoch=epoch, partitions=4, group_units=2)
        return np.concatenate(_global_batches(order, 1)).tolist()

    assert rows(1, 0) == rows(1, 0)
    assert rows(1, 0) != rows(1, 1) and rows(1, 0) != rows(2, 0)


def test_a_batch_draws_from_many_units() -> None:
    """Shuffle quality: each global batch mixes rows from every partition's current group."""
    units = _units([100] * 64)
    order = TrainOrder(units, 64, partitions=8, group_units=4)
    for step in range(order.steps):
        rows = order.batch(step, range(8))[1]
        assert len(np.unique(np.searchsorted(units, rows, side="right") - 1)) >= 8


def test_order_memory_does_not_grow_with_rows() -> None:
    """100M rows in 12,500 units of 8,000: the order holds a group at a time, not a permutation."""
    units = _units([8000] * 12_500)
    tracemalloc.start()
    order = TrainOrder(units, 1024, seed=0, epoch=5, partitions=8, group_units=4)
    for step in (0, 1, order.steps // 2, order.steps - 1):
        _, rows = order.batch(step, range(8))
        assert len(np.unique(rows)) == 1024
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert order.rows == 100_000_000
    assert peak < 64 << 20, f"order peak {peak / 2**20:.0f} MiB"


def test_a_short_tail_is_kept_unless_it_leaves_a_rank_without_rows() -> None:
    """70 rows in batches of 64: a tail of 6 rows, which 8 ranks cannot share."""
    assert TrainOrder(_units([70]), 64, drop_last=False).steps == 2
    assert TrainOrder(_units([70]), 64, drop_last=False, world_size=2).steps == 2
    assert TrainOrder(_units([70]), 64, drop_last=False, world_size=8).steps == 1
    assert TrainOrder(_units([72]), 64, drop_last=False, world_size=8).steps == 2
    assert TrainOrder(_units([70]), 64, drop_last=True).steps == 1


@pytest.mark.parametrize("global_batch", [20, 24, 64, 100, 256])
@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_an_equal_share_of_each_batch(global_batch: int, world: int) -> None:
    """Partitions are visited in bit-reversed order: any run of positions spreads evenly."""
    order = TrainOrder(_units([100] * 130), global_batch, partitions=8, world_size=world)  # equal cuts
    for step in range(order.steps):
        sizes = {len(order.batch(step, order.owned(DistContext(r, world)))[1]) for r in range(world)}
        assert sizes == {global_batch // world}, step


@pytest.mark.parametrize(("n", "world", "workers"), [(1000, 1, 0), (1003, 3, 2), (97, 8, 4), (5, 4, 2)])
def test_eval_reads_every_row_once_with_equal_steps(n: int, world: int, workers: int) -> None:
    seen: list[int] = []
    counts = set()
    for rank in range(world):
        shares, count = eval_shares(n, 10, DistContext(rank, world), workers)
        assert len(shares) == max(1, workers)
        counts.add(count)
        for share in shares:
            batches = list(chunks(share, 10, count))
            assert len(batches) == count
            seen += [row for batch in batches for row in batch]
    assert sorted(seen) == list(range(n)) and len(counts) == 1


def test_global_batch_size_must_divide() -> None:
    assert per_device_batch(None, 64, 4) == 16
    assert per_device_batch(32, None, 4) == 32
    with pytest.raises(ValueError, match="does not divide"):
        per_device_batch(None, 64, 3)


def test_the_first_batch_waits_for_one_unit_per_partition() -> None:
    """Shuffle groups grow 1, 2, 4, ... units: streaming starts after the first units, not a group."""
    units = _units([100] * 64)
    order = TrainOrder(units, 64, partitions=8, group_units=8)
    rows = order.batch(0, range(8))[1]
    assert len(np.unique(np.searchsorted(units, rows, side="right") - 1)) <= 8 + 1  # + a cut unit
    assert [len(g) for g in order.partition_list[0].groups_from(0)] == [1, 2]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_among_few_units_cuts_move_to_unit_ends(world: int) -> None:
    """A 60k-row png lake as Deep Lake writes it, three chunks of 15,873 rows and one of 12,381,
    and 8 partitions: the cuts between ranks move to chunk ends, so each of 2 or 4 ranks reads its
    chunks whole, in every epoch. The batches stay the same for every world size, each holds
    exactly the global batch, and no rank's share exceeds an even one by more than ``SNAP``."""
    units = _units([15_873, 15_873, 15_873, 12_381])
    for epoch in range(4):
        orders = {w: TrainOrder(units, 256, epoch=epoch, partitions=8, world_size=w) for w in (1, world)}
        assert [b.tolist() for b in _global_batches(orders[1], 1)] == [
            b.tolist() for b in _global_batches(orders[world], world)
        ]
        order = orders[world]
        readers: dict[int, set[int]] = {}
        for step in range(order.steps):
            sizes = []
            for rank in range(world):
                rows = order.batch(step, order.owned(DistContext(rank, world)))[1]
                sizes.append(len(rows))
                for unit in np.unique(np.searchsorted(units, rows, side="right") - 1).tolist():
                    readers.setdefault(unit, set()).add(rank)
            assert sum(sizes) == 256 and max(sizes) < (1 + SNAP) * 256 / world + 2, (step, sizes)
        assert all(len(ranks) == 1 for ranks in readers.values()), (epoch, readers)
        rows = np.concatenate(_global_batches(order, 1))
        assert len(np.unique(rows)) == len(rows) == int(units[-1]) // 256 * 256


def test_an_epoch_under_a_global_batch_keeps_every_partition() -> None:
    """16 rows over 16 partitions in batches of 64: cuts stay even (a row each), none moves to a
    unit end, so that 16 ranks all get a row of the one batch."""
    order = TrainOrder(_units([8, 6, 1, 1]), 64, partitions=16, drop_last=False, world_size=16)
    assert order.lengths.tolist() == [1] * 16 and order.steps == 1


def test_a_small_last_unit_leaves_no_rank_short() -> None:
    """Chunks of 14,981 rows and a last one of 76: every rank of 8 still gets about an eighth."""
    units = _units([14_981] * 4 + [76])
    order = TrainOrder(units, 256, partitions=8, world_size=8)
    assert order.lengths.min() >= 7_400 and order.lengths.sum() == 60_000
    rows = [sum(len(order.batch(s, range(p, p + 1))[1]) for s in range(order.steps)) for p in range(8)]
    assert max(rows) - min(rows) <= 80


@pytest.mark.parametrize(("world", "workers"), [(1, 2), (2, 2), (1, 4)])
def test_workers_dealt_whole_units_share_every_step(world: int, workers: int) -> None:
    """Remote units are read whole, each by one worker: still, every step's rows of a rank spread
    over its workers (two units a partition, the second shuffle group of each dealt to another
    worker than the first), from the first step on; and each unit the rank reads has one reader."""
    units = _units([250] * 16)  # 4,000 photos in 16 chunks
    for epoch in range(3):
        order = TrainOrder(units, 256, epoch=epoch, partitions=8, group_units=16)
        owned = order.owned(DistContext(0, world))
        readers = order.readers(owned, workers, split=False)
        worst, read = [], set()
        for step in range(order.steps):
            rows = order.batch(step, owned)[1]
            of = np.searchsorted(units, rows, side="right") - 1
            share = np.bincount(readers.worker_of(rows, of), minlength=workers) / len(rows)
            worst.append(share.max() * workers)
            read.update(of.tolist())
        assert worst[0] <= 1.1 and np.mean(worst) <= 1.1, (epoch, worst)
        assert set(np.flatnonzero(readers.dealt >= 0).tolist()) == read
