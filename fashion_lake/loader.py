"""``LakeLoader``: a ``StatefulDataLoader`` whose saved position is global, so it resumes anywhere.

A checkpoint records where the training epoch stands as ``(epoch, global rows consumed)``
beside torchdata's own state. Resuming with the same world size, per-device batch and worker
count, one batch per worker task, from a run that itself started the epoch at row 0, hands
torchdata its state back (exact, worker RNG included). Otherwise (2 processes -> 1, another
worker count, workers served groups of batches (``GroupedBatches``: torchdata counts tasks), or
a second resume within an epoch that was already resumed that way) the loader restarts the same
global epoch order after the rows already consumed, so no row is repeated or skipped
(``sampler.py``); the fast path's pixels depend on no worker RNG, so its batches are the same.

Only batches handed to the Trainer count as consumed: rows prefetched by workers but not yet
trained on are read again after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from fashion_lake.errors import CheckpointError
from fashion_lake.handoff import HostBatch, ring_slots
from fashion_lake.sampler import GroupedBatches, ShardedBatchSampler


class LakeLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over a ``ShardedBatchSampler`` that can resume on any topology."""

    batch_sampler: ShardedBatchSampler

    def __init__(self, *args: Any, group: int = 1, **kwargs: Any) -> None:
        self.group = group  # batches per worker task (``GroupedBatches``), with worker processes only
        super().__init__(*args, **kwargs)
        self._consumed = 0  # batches of the current epoch handed out by this process
        self._loaded: dict[str, Any] | None = None  # a loaded state not yet iterated from
        self.started = False  # whether any iteration has begun

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first ``next``, after Lightning's ``set_epoch``.
        self.started = True
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded["epoch"] != self.batch_sampler.epoch:
            # That epoch ended short of its length (e.g. limit_train_batches): start afresh.
            self.next_iter_state, loaded = None, None
        self._consumed = loaded["batches"] if loaded else 0
        for item in super().__iter__():
            for batch in _batches(item):
                self._consumed += 1  # counted before the Trainer sees it: saved mid-step, it is consumed
                yield batch

    @property
    def _index_sampler(self) -> Any:
        # What torch hands the workers, a task at a time: batches, or groups of them.
        batches = super()._index_sampler
        return GroupedBatches(batches, self.group) if self.group > 1 and self.num_workers > 0 else batches

    def __len__(self) -> int:
        return len(self.batch_sampler)  # batches, as they are yielded, however they were grouped

    def _get_iterator(self) -> Any:
        # New workers fork here (from ``__iter__``, or ``state_dict`` before any): new slots first.
        share = getattr(self.dataset, "share_slots", None)
        if self.num_workers > 0 and share is not None:
            rows = self.batch_sampler.batch_size * self.group
            share(self.num_workers, ring_slots(self.prefetch_factor), rows, self.multiprocessing_context)
        iterator = super()._get_iterator()
        # its workers write into these slots for as long as it lives, whatever the dataset holds next
        iterator.lake_slots = getattr(self.dataset, "slots", None)
        return iterator

    def _topology(self) -> dict[str, int]:
        sampler = self.batch_sampler
        return {
            "world_size": sampler.dist.world_size,
            "batch_size": sampler.batch_size,
            "num_workers": self.num_workers,
            "group": self.group if self.num_workers > 0 else 1,
        }

    def state_dict(self) -> dict[str, Any]:
        if self._loaded is not None:  # loaded, nothing consumed since: the same position
            return self._loaded
        sampler = self.batch_sampler
        return {
            "epoch": sampler.epoch,
            "batches": self._consumed,
            "rows": sampler.rows_consumed(self._consumed),
            "offset": list(sampler.offset()),
            "finished": self._consumed >= len(sampler),
            "order": sampler.order_key(),
            "topology": self._topology(),
            "torchdata": super().state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torchdata" not in state_dict:  # a bare torchdata state: the same topology by assumption
            super().load_state_dict(state_dict)
            return
        sampler = self.batch_sampler
        self.next_iter_state = None
        if state_dict["finished"]:  # saved at the end of an epoch: the next one starts afresh
            sampler.set_epoch(state_dict["epoch"] + 1)
            super().load_state_dict({})
            return
        order = sampler.order_key()
        changed = {k: (v, order.get(k)) for k, v in state_dict["order"].items() if order.get(k) != v}
        if changed:
            raise CheckpointError(
                "the checkpoint stopped mid-epoch in a training order that no longer applies "
                f"(checkpoint vs now: {changed}); resume with the same data version and data.seed / "
                "block_size / shuffle_window / drop_last, or from a checkpoint saved at an epoch end."
            )
        sampler.set_epoch(state_dict["epoch"])
        # torchdata counts tasks: its state places a resume exactly only where a task is one batch
        exact = self._topology()["group"] == 1
        saved = {"group": 1, **state_dict["topology"]}  # checkpoints from before groups: one batch a task
        if exact and saved == self._topology() and state_dict["offset"] == [0, 0]:
            super().load_state_dict(state_dict["torchdata"])
        else:
            super().load_state_dict({})
            sampler.resume(state_dict["epoch"], state_dict["rows"], state_dict["batches"])
        self._loaded = state_dict


def _batches(item: Any) -> list[Any]:
    """The batches in what the DataLoader yields: a ``HostBatch`` (of one or a group of batches),
    the list that the pin-memory thread made of one, or a batch already collated."""
    if isinstance(item, HostBatch):
        return item.batches()
    return item if isinstance(item, list) else [item]
