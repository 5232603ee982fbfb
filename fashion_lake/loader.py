"""``LakeLoader``: a ``StatefulDataLoader`` whose saved position is global, so it resumes anywhere.

A checkpoint records where the training epoch stands as ``(epoch, global rows consumed)``
beside torchdata's own state. Resuming with the same world size, per-device batch and worker
count hands torchdata its state back (exact, worker RNG included). Resuming with another
topology (2 processes -> 1, a different worker count) restarts the same global epoch order
after the rows already consumed, so no row is repeated or skipped (``sampler.py``).

Only batches handed to the Trainer count as consumed: rows prefetched by workers but not yet
trained on are read again after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from fashion_lake.sampler import ShardedBatchSampler


class LakeLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over a ``ShardedBatchSampler`` that can resume on any topology."""

    batch_sampler: ShardedBatchSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = 0  # batches of the current epoch handed out by this process
        self._resumed_at = 0
        self.started = False  # whether any iteration has begun (a state can still be loaded)

    def __iter__(self) -> Iterator[Any]:
        self.started = True
        self._consumed, self._resumed_at = self._resumed_at, 0
        for batch in super().__iter__():
            self._consumed += 1  # counted before the Trainer sees it: saved mid-step, it is consumed
            yield batch

    def _topology(self) -> dict[str, int]:
        sampler = self.batch_sampler
        return {
            "world_size": sampler.dist.world_size,
            "batch_size": sampler.batch_size,
            "num_workers": self.num_workers,
        }

    def state_dict(self) -> dict[str, Any]:
        sampler = self.batch_sampler
        return {
            "epoch": sampler.epoch,
            "batches": self._consumed,
            "rows": sampler.rows_consumed(self._consumed),
            "finished": self._consumed >= len(sampler),
            "topology": self._topology(),
            "torchdata": super().state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torchdata" not in state_dict:  # a bare torchdata state: the same topology by assumption
            super().load_state_dict(state_dict)
            return
        sampler = self.batch_sampler
        if state_dict["finished"]:  # saved at the end of an epoch: the next one starts afresh
            sampler.set_epoch(state_dict["epoch"] + 1)
            super().load_state_dict({})
            return
        sampler.set_epoch(state_dict["epoch"])
        if state_dict["topology"] == self._topology():
            super().load_state_dict(state_dict["torchdata"])
        else:
            super().load_state_dict({})
            sampler.resume(state_dict["epoch"], state_dict["rows"], state_dict["batches"])
        self._resumed_at = state_dict["batches"]
