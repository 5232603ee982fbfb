"""LakeLoader: the same global batches on any world size and worker count, each read unit read
by one process, and positions that resume anywhere."""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import time
from pathlib import Path
from typing import Any

import deeplake
import numpy as np
import pytest
import torch
from conftest import global_batches

from fashion_lake import DeepLakeDataModule
from fashion_lake.data import reader
from fashion_lake.data.handoff import Cursor
from fashion_lake.data.loader import LakeLoader
from fashion_lake.data.order import DistContext
from fashion_lake.data.reader import LakeDataset
from fashion_lake.data.units import LocalLog, chunk_units
from fashion_lake.lake import LakeSource

COMMITS = [40, 43, 40, 40, 40]  # rows per commit: each commit closes a storage chunk
ROWS, EPOCH, GLOBAL = sum(COMMITS), 2, 16


def _write_lake(url: str, compression: str) -> str:
    ds = deeplake.create(url)
    ds.add_column("images", deeplake.types.Image(dtype="uint8", sample_compression=compression))
    ds.add_column("labels", deeplake.types.ClassLabel("int32"))
    ds["labels"].metadata["class_names"] = ["a", "b", "c"]
    start = 0
    for rows in COMMITS:
        ids = np.arange(start, start + rows)
        ds.append({"images": np.repeat((ids % 251).astype(np.uint8), 16).reshape(rows, 4, 4, 1),
                   "labels": (ids % 3).astype(np.int32)})  # fmt: skip
        ds.commit()
        start += rows
    return url


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _write_lake(str(tmp_path_factory.mktemp("units") / "lake"), "null")


@pytest.fixture(scope="module")
def png_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same rows as ``lake``, png-compressed: decoded by the process that reads them."""
    return _write_lake(str(tmp_path_factory.mktemp("units") / "png"), "png")


def _loader(
    url: str, rank: int, world: int, workers: int = 0, global_batch: int = GLOBAL, remote: bool = False
) -> LakeLoader:
    """``remote``: workers share units as for s3:// and other remote lakes (whole units each)."""
    dm = DeepLakeDataModule(train_url=url, val_url=url, batch_size=global_batch // world, num_workers=workers,
                            drop_last=False)  # fmt: skip
    dm.dist = DistContext(rank, world)
    dm.setup("fit")
    dm.datasets["train"].split_units = not remote  # before the loader starts its workers
    loader = dm.train_dataloader()
    loader.set_epoch(EPOCH)
    return loader


def _steps(loaders: list[LakeLoader], steps: int | None = None) -> list[list[int]]:
    """Each step's rows over all ranks, sorted; pixels checked against the row ids."""
    iters = [iter(loader) for loader in loaders]
    out = []
    for _ in range(steps if steps is not None else len(loaders[0]) - loaders[0].state_dict()["batches"]):
        batches = [next(it) for it in iters]
        for batch in batches:
            assert (batch["images"][:, 0, 0, 0] == batch["index"] % 251).all()
            assert (batch["labels"] == batch["index"] % 3).all()
        out.append(sorted(row for batch in batches for row in batch["index"].tolist()))
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_each_batch_carries_its_ranks_share(lake: str, world: int) -> None:
    """Among few chunks, partitions cut at chunk ends differ in length, and so do ranks' shares
    of a global batch: each batch carries its rank's rows over an even share, which the model
    weighs its loss by."""
    loaders = [_loader(lake, rank, world, global_batch=64) for rank in range(world)]
    sizes = set()
    for batches in zip(*loaders, strict=True):
        rows = [len(batch["index"]) for batch in batches]
        shares = [float(batch["rank_share"]) for batch in batches]
        assert shares == pytest.approx([n * world / sum(rows) for n in rows])
        sizes.add(tuple(rows))
    assert any(len(set(rows)) > 1 for rows in sizes), sizes


def test_units_are_the_storage_chunks(lake: str) -> None:
    assert chunk_units(LocalLog(Path(lake)), "images").tolist() == np.cumsum([0, *COMMITS]).tolist()
    assert chunk_units(LocalLog(Path(lake)), "labels") is not None


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (1, 2), (2, 2), (4, 0), (8, 1)])
def test_global_batches_for_any_world_size_and_workers(lake: str, world: int, workers: int) -> None:
    expected = [sorted(b) for b in global_batches(lake, GLOBAL, EPOCH, drop_last=False)]
    got = _steps([_loader(lake, rank, world, workers) for rank in range(world)])
    assert got == expected
    assert sorted(sum(got, [])) == list(range(ROWS))


@pytest.mark.parametrize(("world", "workers"), [(1, 2), (2, 2)])
def test_unequal_partitions_keep_the_batches_and_resume(lake: str, world: int, workers: int) -> None:
    """A global batch of >= 4 rows a partition over few units moves cuts to unit ends, so the
    partitions differ in length: workers' items of several steps still hold each step's rows,
    and a resume continues with exactly the next batch."""
    wide = 40  # 5 rows a partition: cuts move to unit ends here
    assert len(set(_loader(lake, 0, 1, 0, wide).order_of(EPOCH).lengths.tolist())) > 1
    expected = [sorted(b) for b in global_batches(lake, wide, EPOCH, drop_last=False)]
    assert _steps([_loader(lake, rank, world, workers, wide) for rank in range(world)]) == expected
    before = [_loader(lake, rank, world, workers, wide) for rank in range(world)]
    first = _steps(before, 2)
    after = [_loader(lake, rank, world, workers, wide) for rank in range(world)]
    for loader in after:
        loader.load_state_dict(before[0].state_dict())
    assert first + _steps(after) == expected


@pytest.mark.parametrize(("world", "workers", "new_world", "new_workers"),
                         [(1, 0, 1, 2), (2, 2, 1, 0), (1, 2, 4, 0), (2, 0, 8, 1)])  # fmt: skip
def test_resume_anywhere_continues_the_same_batches(
    lake: str, world: int, workers: int, new_world: int, new_workers: int
) -> None:
    expected = [sorted(b) for b in global_batches(lake, GLOBAL, EPOCH, drop_last=False)]
    before = [_loader(lake, rank, world, workers) for rank in range(world)]
    first = _steps(before, 3)
    state = before[0].state_dict()  # every rank restores rank 0's, as every process reads one checkpoint
    assert state["batches"] == 3 and not state["finished"]
    after = [_loader(lake, rank, new_world, new_workers) for rank in range(new_world)]
    for loader in after:
        loader.load_state_dict(state)
        assert loader.state_dict() == state  # taken before iterating: the same position
    assert first + _steps(after) == expected
    assert after[0].state_dict()["finished"]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Shared counters, across forked workers, of each unit's reads and of each row's."""
    units, rows = (multiprocessing.get_context("fork").Array("i", n) for n in (len(COMMITS), ROWS))
    start = LakeDataset._start_read

    def counted(self: LakeDataset, which: list[int], spans: list[tuple[int, int]] | None = None) -> list:
        with units.get_lock():
            for unit, (a, b) in zip(which, spans or [self._span(u) for u in which], strict=True):
                units[unit] += 1
                for row in range(a, b):
                    rows[row] += 1
        return start(self, which, spans)

    monkeypatch.setattr(LakeDataset, "_start_read", counted)
    return units, rows


def test_each_unit_is_read_by_one_process(lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote storage, 4 ranks x 2 workers over 5 units: a unit is read twice only where a
    partition cut between two processes falls inside it (at most processes - 1 such reads)."""
    units, _ = _count_reads(monkeypatch)
    _steps([_loader(lake, rank, 4, 2, remote=True) for rank in range(4)])
    assert min(units) >= 1 and sum(units) <= len(COMMITS) + 4 * 2 - 1


def test_local_workers_read_each_row_once(lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local storage: each worker reads its run of every unit the rank reads, so the workers
    stay even among few units, and still no row is read by two processes."""
    units, rows = _count_reads(monkeypatch)
    _steps([_loader(lake, rank, 2, 2) for rank in range(2)])
    assert list(rows) == [1] * ROWS
    assert sum(units) > len(COMMITS)  # units shared by the workers of a rank


@pytest.mark.parametrize(
    ("world", "workers", "remote"), [(1, 0, False), (1, 2, False), (1, 0, True), (1, 2, True), (2, 2, False)]
)
def test_an_epoch_takes_over_the_units_the_last_one_read(
    lake: str, world: int, workers: int, remote: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three epochs in a row, each its own batches with the right pixels. A process that reads
    the same rows of a unit again keeps them: one rank reads a lake that its window holds once,
    not once an epoch. Where each epoch deals the units anew (over ranks; whole units over remote
    workers) a process reads what it did not hold, the rows it held before no longer its own."""
    _, rows = _count_reads(monkeypatch)
    loaders = [_loader(lake, rank, world, workers, remote=remote) for rank in range(world)]
    epochs = range(EPOCH, EPOCH + 3)
    for epoch in epochs:
        for loader in loaders:
            loader.set_epoch(epoch)
        assert _steps(loaders) == [sorted(b) for b in global_batches(lake, GLOBAL, epoch, drop_last=False)]
    if world == 1 and not (remote and workers):
        assert list(rows) == [1] * ROWS
    else:
        assert ROWS < sum(rows) <= len(epochs) * ROWS


def test_units_held_never_outgrow_the_budgets_room(lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget of one unit a shuffle group over 2 partitions: room for 4 of the lake's 5 units.
    A process never holds more, every epoch is whole, and what it let go it reads again."""
    _, rows = _count_reads(monkeypatch)
    most: list[int] = []
    hold = LakeDataset._hold

    def counted(self: LakeDataset, wanted: set[int], held: dict, *args: Any) -> None:
        hold(self, wanted, held, *args)
        most.append(len(held))

    monkeypatch.setattr(LakeDataset, "_hold", counted)
    dm = DeepLakeDataModule(train_url=lake, val_url=lake, batch_size=GLOBAL, num_workers=0, drop_last=False,
                            partitions=2, memory_budget=4 * max(COMMITS) * 16)  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.spec.group_units == 1
    for epoch in (EPOCH, EPOCH + 1):
        loader.set_epoch(epoch)
        order = loader.order_of(epoch)
        got = _steps([loader])
        assert got == [sorted(order.batch(step, range(2))[1].tolist()) for step in range(order.steps)]
        assert sorted(sum(got, [])) == list(range(ROWS))
    assert max(most) == 2 * 1 * 2
    assert sum(rows) > ROWS  # what was let go was read again


def test_rows_are_decoded_as_their_units_arrive(png_lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batch draws on several units, one of which is still in flight: the rows of
    those already read are decoded before the reader waits for it, and the batches stay the same."""
    expected = _steps([_loader(png_lake, 0, 1)])
    decoded: list[int] = []  # rows of each decoding call so far
    decode = reader.decode_into

    def counted(encoded: Any, codec: str, out: np.ndarray) -> list[int]:
        decoded.append(len(encoded))
        return decode(encoded, codec, out)

    class InFlight:
        """A read that is in once other rows have been decoded; waited on before, it fails the test."""

        def __init__(self, future: Any) -> None:
            self.future, self.after = future, len(decoded)

        def is_completed(self) -> bool:
            return len(decoded) > self.after and self.future.is_completed()

        def result(self) -> Any:
            assert len(decoded) > self.after, "waited on a read in flight, rows already read not decoded"
            return self.future.result()

    late: list[int] = []
    start = LakeDataset._start_read

    def one_late(self: LakeDataset, which: list[int], spans: list[tuple[int, int]] | None = None) -> list:
        pending = start(self, which, spans)
        if not late and len(which) > 1:  # the first batch's reads: its last unit comes in last
            late.append(which[-1])
            pending[-1] = dataclasses.replace(pending[-1], images=InFlight(pending[-1].images))
        return pending

    monkeypatch.setattr(reader, "decode_into", counted)
    monkeypatch.setattr(LakeDataset, "_start_read", one_late)
    assert _steps([_loader(png_lake, 0, 1)]) == expected
    assert late, "the first batch drew on one unit: nothing to overlap"


def test_workers_go_on_once_the_first_batch_is_joined(png_lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 1 is slow with its part of the first step: worker 0, done with its own, neither
    decodes its next item nor reads ahead until the loader has joined the first batch."""
    expected = [sorted(b) for b in global_batches(png_lake, GLOBAL, EPOCH, drop_last=False)]
    fork = multiprocessing.get_context("fork")
    started = fork.Array("d", [0.0] * 4)  # per worker: when its first and second items began
    joined = fork.Value("d", 0.0)  # when the loader (this process) joined the first step
    arrived, took_first = LakeDataset._arrived, Cursor.took_first

    def timed(self: LakeDataset, *args: Any, **kwargs: Any) -> dict:
        worker = torch.utils.data.get_worker_info().id
        item = 0 if started[2 * worker] == 0 else 1
        if item == 0 or started[2 * worker + 1] == 0:
            started[2 * worker + item] = time.monotonic()
        if worker == 1 and item == 0:
            time.sleep(0.5)
        return arrived(self, *args, **kwargs)

    def first_joined(self: Cursor) -> None:
        joined.value = joined.value or time.monotonic()
        took_first(self)

    def read_ahead(self: LakeDataset, which: list[int], spans: list[tuple[int, int]] | None = None) -> list:
        worker = torch.utils.data.get_worker_info().id
        if started[2 * worker + 1] == 0 and started[2 * worker] != 0:  # after its first item
            assert joined.value != 0, "a worker read ahead before the first batch was joined"
        return start(self, which, spans)

    start = LakeDataset._start_read
    monkeypatch.setattr(LakeDataset, "_arrived", timed)
    monkeypatch.setattr(LakeDataset, "_start_read", read_ahead)
    monkeypatch.setattr(Cursor, "took_first", first_joined)
    assert _steps([_loader(png_lake, 0, 1, workers=2)]) == expected
    assert started[1] >= joined.value > started[0] + 0.4  # worker 0 waited for worker 1's part
    assert started[3] >= joined.value


def test_without_workers_the_lake_is_not_opened_again(lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training process reads through the dataset that setup opened to inspect the lake: no
    second open (several requests on remote storage) before the first batch."""
    opens: list[str] = []
    open_base = LakeSource.open_base
    monkeypatch.setattr(LakeSource, "open_base", lambda self: opens.append(self.url) or open_base(self))
    loader = _loader(lake, 0, 1)
    opened = len(opens)
    steps = _steps([loader])
    assert opened >= 1 and len(opens) == opened
    assert sorted(row for step in steps for row in step) == list(range(ROWS))


def _ready(loader: LakeLoader) -> LakeLoader:
    deadline = time.monotonic() + 120
    while not loader.ready():
        assert time.monotonic() < deadline, "the workers did not open the lake"
        time.sleep(0.01)
    return loader


def test_workers_start_when_built_and_read_the_epoch_the_first_iteration_sets(
    lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training loader forks its workers when built: they open the lake and read nothing
    until the first iteration, which may bring a resumed position (of epoch ``EPOCH``)."""
    units, _ = _count_reads(monkeypatch)
    source = _loader(lake, 0, 1)
    first = _steps([source], 3)
    read = sum(units)
    loader = _ready(_loader(lake, 0, 1, workers=2))
    assert loader._fresh  # started early: ready() waited for both workers to open the lake
    assert sum(units) == read  # opened, nothing read
    loader.load_state_dict(source.state_dict())
    expected = [sorted(b) for b in global_batches(lake, GLOBAL, EPOCH, drop_last=False)]
    assert first + _steps([loader]) == expected


def test_a_loader_dropped_before_its_first_epoch_lets_its_workers_end(lake: str) -> None:
    """Workers waiting for an epoch that never comes (the batch size finder builds loaders it
    drops) end cleanly when their loader goes: exit status 0, not killed at shutdown."""
    loader = _ready(_loader(lake, 0, 1, workers=2))
    workers = list(loader._iterator._workers)  # type: ignore[union-attr]
    del loader
    gc.collect()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]


def test_an_epoch_cut_short_does_not_shorten_the_next(lake: str) -> None:
    """limit_train_batches ends an epoch before len(loader): the next epoch is whole."""
    loader = _loader(lake, 0, 1)
    it = iter(loader)
    for _ in range(3):
        next(it)
    resumed = _loader(lake, 0, 1)
    resumed.load_state_dict(loader.state_dict())
    resumed.set_epoch(EPOCH + 1)  # Lightning moves on: that epoch was over
    rows = sorted(row for batch in resumed for row in batch["index"].tolist())
    assert rows == list(range(ROWS))


def test_a_finished_epoch_resumes_at_the_next(lake: str) -> None:
    loader = _loader(lake, 0, 2)
    for _ in loader:
        pass
    state = loader.state_dict()
    assert state["finished"]
    resumed = _loader(lake, 0, 1)
    resumed.load_state_dict(state)
    assert resumed.epoch == EPOCH + 1 and len(list(resumed)) == len(resumed)


def test_another_order_is_refused_mid_epoch(lake: str) -> None:
    from fashion_lake.errors import CheckpointError

    loader = _loader(lake, 0, 1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    other = DeepLakeDataModule(train_url=lake, val_url=lake, batch_size=GLOBAL, drop_last=False, seed=9)
    with pytest.raises(CheckpointError, match="no longer applies"):
        other.train_dataloader().load_state_dict(state)
    # the same settings, saved by code whose order arithmetic gave other batches
    older = {**state, "order": {**state["order"], "version": state["order"]["version"] - 1}}
    with pytest.raises(CheckpointError, match="no longer applies"):
        _loader(lake, 0, 1).load_state_dict(older)


def test_persistent_workers_follow_the_epoch_and_a_resume(lake: str) -> None:
    """One loader, its 2 workers kept across epochs: each epoch is that epoch's order, and a
    position loaded between epochs starts the next iteration there."""
    loader = _loader(lake, 0, 1, workers=2)
    assert loader.persistent_workers
    for epoch in (EPOCH, EPOCH + 1):
        loader.set_epoch(epoch)
        expected = [sorted(b) for b in global_batches(lake, GLOBAL, epoch, drop_last=False)]
        assert _steps([loader]) == expected
    other = _loader(lake, 0, 1)
    other.set_epoch(EPOCH + 3)
    it = iter(other)
    next(it), next(it)
    loader.load_state_dict(other.state_dict())
    expected = [sorted(b) for b in global_batches(lake, GLOBAL, EPOCH + 3, drop_last=False)]
    assert _steps([loader]) == expected[2:]
