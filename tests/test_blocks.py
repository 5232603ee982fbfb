"""One block cache shared by a loader's workers (blocks.py): each block read once, rows always right."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from fashion_lake import DeepLakeDataModule
from fashion_lake.blocks import SharedBlocks
from fashion_lake.reader import LakeDataset

ROWS, BLOCK = 32, 4
FORK = multiprocessing.get_context("fork")


def _row(i: int) -> bytes:
    return f"row {i};".encode() * (1 + i % 3)  # rows of differing lengths, as encoded images are


class Store:
    """A fake column read in blocks, counting each block's reads in shared memory (seen across forks)."""

    def __init__(self, delay: float = 0.0, big_block: int | None = None) -> None:
        self.reads = FORK.Array("i", ROWS // BLOCK)
        self.delay, self.big_block = delay, big_block
        self.fail = FORK.Value("i", 0)
        self.started = FORK.Event()

    def row(self, i: int) -> bytes:
        return _row(i) * (100 if i // BLOCK == self.big_block else 1)

    def read(self, spans: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        self.started.set()
        if self.fail.value:
            self.fail.value -= 1
            raise OSError("the store is down")
        time.sleep(self.delay)
        out = []
        for start, stop in spans:
            with self.reads.get_lock():
                self.reads[start // BLOCK] += 1
            images = np.empty(stop - start, dtype=object)
            images[:] = [self.row(i) for i in range(start, stop)]
            out.append((images, np.arange(start, stop) * 10))
        return out


def _check(got: tuple[np.ndarray, np.ndarray], idx: np.ndarray, store: Store) -> None:
    images, labels = got
    assert list(images) == [store.row(int(i)) for i in idx]
    np.testing.assert_array_equal(labels, idx * 10)


def _in_child(target: Callable[[], None]) -> multiprocessing.Process:
    child = FORK.Process(target=target)
    child.start()
    return child


def test_forked_workers_read_each_block_once_and_get_their_rows() -> None:
    store, blocks = Store(delay=0.01), SharedBlocks(slots=8, block_size=BLOCK, slot_bytes=4096, workers=2)
    orders = [np.random.default_rng(seed).permutation(ROWS) for seed in (1, 2)]

    def worker(order: np.ndarray) -> Callable[[], None]:
        def run() -> None:
            for batch in np.split(order, 4):  # every batch spans most blocks, as in a shuffle window
                _check(blocks.gather(batch, store.read), batch, store)

        return run

    children = [_in_child(worker(order)) for order in orders]
    for child in children:
        child.join(30)
        assert child.exitcode == 0  # a failed check in a child exits non-zero
    assert list(store.reads) == [1] * (ROWS // BLOCK)  # 8 blocks, each read once between the two
    idx = np.arange(ROWS)
    _check(blocks.gather(idx, store.read), idx, store)  # the parent finds them too
    assert list(store.reads) == [1] * (ROWS // BLOCK)


def test_a_worker_waits_for_a_read_in_progress_rather_than_reading_again() -> None:
    store, blocks = Store(delay=0.5), SharedBlocks(slots=4, block_size=BLOCK, slot_bytes=4096, workers=2)
    idx = np.arange(BLOCK)  # one block, claimed by the child, which takes 0.5 s to read it
    child = _in_child(lambda: _check(blocks.gather(idx, store.read), idx, store))
    assert store.started.wait(10)
    _check(blocks.gather(idx, store.read), idx, store)
    child.join(30)
    assert child.exitcode == 0 and store.reads[0] == 1


@pytest.mark.parametrize("case", ["too big for a slot", "no slot free"])
def test_blocks_that_cannot_be_shared_are_read_here(case: str) -> None:
    if case == "too big for a slot":  # block 1 is 100x the others
        store, blocks = Store(big_block=1), SharedBlocks(slots=4, block_size=BLOCK, slot_bytes=512, workers=2)
    else:  # one slot, held by block 0 while block 1 is wanted in the same batch
        store, blocks = Store(), SharedBlocks(slots=1, block_size=BLOCK, slot_bytes=512, workers=2)
    idx = np.arange(2 * BLOCK)[::-1]
    for _ in range(2):
        _check(blocks.gather(idx, store.read), idx, store)
    assert list(store.reads[:2]) == [1, 2]  # block 0 shared; block 1 read by each gather


def test_eviction_keeps_every_row_right() -> None:
    store, blocks = Store(), SharedBlocks(slots=3, block_size=BLOCK, slot_bytes=4096, workers=1)
    rng = np.random.default_rng(0)
    for _ in range(40):
        idx = rng.choice(ROWS, size=int(rng.integers(1, 9)), replace=False)
        _check(blocks.gather(idx, store.read), idx, store)
    assert sum(store.reads) > ROWS // BLOCK  # 3 slots for 8 blocks: some were evicted and read again


def test_a_failed_read_raises_and_leaves_its_slots_free() -> None:
    store, blocks = Store(), SharedBlocks(slots=2, block_size=BLOCK, slot_bytes=4096, workers=1)
    store.fail.value = 1
    idx = np.arange(2 * BLOCK)
    with pytest.raises(OSError, match="the store is down"):
        blocks.gather(idx, store.read)
    _check(blocks.gather(idx, store.read), idx, store)  # both slots claimable again: nothing waits forever
    _check(blocks.gather(idx, store.read), idx, store)
    assert list(store.reads[:2]) == [1, 1]


def test_a_loaders_workers_share_one_cache(codec_lakes: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """png lake, 2 workers: each 16-row block is read once per epoch, and the batches are those of
    the in-process loader."""

    def module(workers: int) -> DeepLakeDataModule:
        png = codec_lakes["png"]
        return DeepLakeDataModule(train_url=png["train"], val_url=png["test"], batch_size=8,
                                  num_workers=workers, block_size=16, shuffle_window=48)  # fmt: skip

    def epoch(dm: DeepLakeDataModule) -> list[dict]:
        return [{k: v.clone() for k, v in batch.items()} for batch in dm.train_dataloader()]

    expected = epoch(module(0))
    reads = FORK.Array("i", 8)  # 120 rows in blocks of 16
    read = LakeDataset._read

    def counted(self: LakeDataset, spans: list[tuple[int, int]]) -> list:
        for start, _ in spans:
            with reads.get_lock():
                reads[start // 16] += 1
        return read(self, spans)

    monkeypatch.setattr(LakeDataset, "_read", counted)
    dm = module(2)
    got = epoch(dm)
    assert dm.datasets["train"].blocks is not None
    assert list(reads) == [1] * 8
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
