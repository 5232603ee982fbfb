"""Batches crossing from DataLoader workers in shared slots (handoff.py), not pickled through pipes."""

from __future__ import annotations

import multiprocessing
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_lake import DeepLakeDataModule
from fashion_lake.data import plan
from fashion_lake.data.handoff import BatchSlots, HostBatch
from fashion_lake.ingest.write import read_idx


def _put_in_child(slots: BatchSlots, image: np.ndarray, conn) -> None:
    conn.send(slots.put(0, image))


def test_slots_cross_a_fork() -> None:
    slots = BatchSlots(workers=1, slots=2, slot_bytes=4 * 28 * 28)
    images = np.random.default_rng(0).integers(0, 255, (4, 1, 28, 28), dtype=np.uint8)
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_put_in_child, args=(slots, images, there))
    child.start()
    ref = here.recv()  # only the reference crossed the pipe
    child.join()
    assert len(pickle.dumps(ref)) < 500
    got = ref.take()
    np.testing.assert_array_equal(got.numpy(), images)
    assert slots.put(0, 255 - images) is not None and slots.put(0, images) is not None  # both free again
    np.testing.assert_array_equal(got.numpy(), images)  # a copy: the slot's next batch leaves it alone
    with pytest.raises(RuntimeError, match="read twice"):
        ref.take()


def test_full_or_too_big_falls_back_and_a_dropped_batch_frees_its_slot() -> None:
    slots = BatchSlots(workers=1, slots=2, slot_bytes=128)
    assert slots.put(0, np.zeros(129, np.uint8)) is None  # bigger than a slot: the batch crosses pickled
    image = np.arange(128, dtype=np.uint8)
    first, second = slots.put(0, image), slots.put(0, image)
    assert first is not None and second is not None
    assert slots.put(0, image) is None  # no free slot: pickled too
    del first  # the sender's reference: never frees a slot itself
    assert slots.put(0, image) is None
    received = pickle.loads(pickle.dumps(second))
    del received  # dropped unread where it arrived (an epoch stopped early): the slot is free
    assert slots.put(0, image) is not None


def _crossings(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How each batch's images reached the main process: ``SlotRef`` or a pickled ``ndarray``."""
    seen: Counter = Counter()
    tensors = HostBatch.tensors

    def spy(self: HostBatch, pin: bool = False) -> dict:
        seen[type(self.arrays["images"]).__name__] += 1
        return tensors(self, pin)

    monkeypatch.setattr(HostBatch, "tensors", spy)
    return seen


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_worker_batches_cross_in_slots_and_stopped_epochs_free_them(
    codec: str, codec_lakes: dict, tiny_lakes: dict, real_raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = codec_lakes["png"]["train"] if codec == "png" else tiny_lakes["train"]
    images = read_idx(real_raw_dir / "train-images-idx3-ubyte.gz")[:120]
    seen = _crossings(monkeypatch)
    monkeypatch.setattr(plan, "GROUP_ROWS", 16)  # tasks of 2 batches: 8 per epoch, several left unread
    dm = DeepLakeDataModule(train_url=url, val_url=url, batch_size=8, num_workers=2)  # fmt: skip
    loader = dm.train_dataloader()
    for epoch in range(8):  # each stopped after one batch, leaving the workers' prefetched ones unread
        loader.set_epoch(epoch)
        next(iter(loader))
    loader.set_epoch(8)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 120
    for batch in batches:
        np.testing.assert_array_equal(batch["images"][:, 0].numpy(), images[batch["index"].numpy()])
    assert len(batches) == 15 and loader.group == 2
    # each stopped epoch took one item of each worker, the whole one 8 of each: slots kept by
    # stopped epochs would run out
    assert seen == Counter(SlotRef=2 * 8 + 2 * 8)


def test_spawned_workers_get_no_slots(codec_lakes: dict) -> None:
    url = codec_lakes["png"]["train"]
    dm = DeepLakeDataModule(train_url=url, val_url=url, batch_size=8, num_workers=2)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset.share_slots(2, 4, 8, multiprocessing.get_context("spawn"))
    assert dataset.slots is None  # spawned workers would not share the mapping: batches cross pickled
    dataset.share_slots(2, 4, 8, multiprocessing.get_context("fork"))
    assert dataset.slots is not None and pickle.loads(pickle.dumps(dataset)).slots is None


def _batches(loader) -> list[dict]:
    return [{key: value.clone() for key, value in batch.items()} for batch in loader]


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert [sorted(b) for b in got] == [sorted(b) for b in want]
    for a, b in zip(got, want, strict=True):
        for key in b:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("split", ["train", "val"])
def test_grouped_tasks_yield_the_batches_of_single_ones(
    split: str, corrupt_jpeg_lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers serving 2 batches per task: the same batches, corrupt rows skipped and counted per batch."""

    def loader(group_rows: int):
        monkeypatch.setattr(plan, "GROUP_ROWS", group_rows)
        dm = DeepLakeDataModule(train_url=corrupt_jpeg_lake, val_url=corrupt_jpeg_lake, batch_size=3,
                                num_workers=2, skip_corrupt=True)  # fmt: skip
        return dm.train_dataloader() if split == "train" else dm.val_dataloader()

    single, grouped = loader(1), loader(6)
    assert (single.group, grouped.group) == (1, 2) and len(single) == len(grouped) == 4
    want, got = _batches(single), _batches(grouped)
    _assert_same(got, want)
    assert sum(int(b["skipped"]) for b in got) == 1 and sum(len(b["index"]) for b in got) == 11


def test_resume_between_the_batches_of_a_group(codec_lakes: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "GROUP_ROWS", 48)  # tasks of 3 batches of 16

    def make() -> DeepLakeDataModule:
        url = codec_lakes["png"]
        return DeepLakeDataModule(train_url=url["train"], val_url=url["test"], batch_size=16, num_workers=2)

    dm = make()
    loader = dm.train_dataloader()
    batches = iter(loader)
    for _ in range(4):  # one task and a batch into the next
        next(batches)
    state = dm.state_dict()
    rest = _batches(batches)
    resumed = make()
    resumed.load_state_dict(state)
    assert loader.group == 3 and len(rest) == len(loader) - 4 > 0
    _assert_same(_batches(resumed.train_dataloader()), rest)


def _png_module(codec_lakes: dict, monkeypatch: pytest.MonkeyPatch, **kwargs) -> DeepLakeDataModule:
    monkeypatch.setattr(plan, "GROUP_ROWS", 16)  # tasks of 2 batches of 8
    url = codec_lakes["png"]
    return DeepLakeDataModule(
        train_url=url["train"], val_url=url["test"], batch_size=8, num_workers=2, **kwargs
    )


def test_predict_with_grouped_workers_reads_every_row_once(
    codec_lakes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning wraps the batch sampler for predict in one whose ``iter()`` restarts it."""
    import pytorch_lightning as pl

    from fashion_lake.model import FashionMnistModule

    dm = _png_module(codec_lakes, monkeypatch)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         use_distributed_sampler=False, accelerator="cpu")  # fmt: skip
    out = trainer.predict(FashionMnistModule(), datamodule=dm)
    assert dm.predict_dataloader().group == 2
    assert sorted(torch.cat([o["index"] for o in out]).tolist()) == list(range(50))


def test_loaders_over_one_dataset_keep_their_own_slots(
    codec_lakes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = _png_module(codec_lakes, monkeypatch)
    test = dm.test_dataloader()  # not persistent: every iter() forks new workers with new slots
    first = iter(test)
    head = next(first)
    second = iter(test)
    shares = [range(0, 25), range(25, 50)]  # each worker's, in batches of 8, the workers in turn
    batches = [list(share[s : s + 8]) for s in range(0, 32, 8) for share in shares]
    assert [b["index"].tolist() for b in second] == batches
    assert sorted(torch.cat([head["index"], *(b["index"] for b in first)]).tolist()) == list(range(50))
    old = dm.val_dataloader()
    list(old)
    list(dm.val_dataloader())  # a second loader over the same dataset, with its own workers
    assert sum(len(b["index"]) for b in old) == 50  # the first one's workers still write where it reads


def test_a_ranks_empty_share_of_the_last_eval_batch(
    codec_lakes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashion_lake.data.order import DistContext

    rows, sizes = [], []
    for rank in range(3):  # 50 rows: 16 or 17 a rank, 8 or 9 a worker, in batches of 8
        dm = _png_module(codec_lakes, monkeypatch)
        dm.dist = DistContext(rank, 3)
        batches = list(dm.val_dataloader())
        assert all(b["images"].shape[1:] == (1, 28, 28) for b in batches)
        sizes.append([len(b["index"]) for b in batches])
        rows += torch.cat([b["index"] for b in batches]).tolist()
    assert sorted(rows) == list(range(50))
    assert {len(s) for s in sizes} == {4} and 0 in sizes[0]  # the same steps everywhere: empty ones pad
