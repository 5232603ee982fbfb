"""``LakeLoader``: a ``DataLoader`` that plans each epoch of a ``LakeDataset`` and joins its parts.

Training: each worker yields its parts of the epoch's batches (the rows it reads,
``order.Readers``), an item of one or more consecutive steps at a time, every worker on the
same schedule; torch hands the workers' items back in turn, worker 0, 1, ..., so each run of
``num_workers`` items holds the same steps' parts, joined here step by step in global-position
order. A batch is therefore the same whatever the worker count.

Its position is ``(epoch, batches consumed)``: the order fixes every row of every batch from
there, on any world size that divides the partitions and any worker count, so a resume is
exact with one code path. Only batches handed to the Trainer count as consumed: rows that
workers prefetched but the Trainer did not take are read again after a resume.

Evaluation: each worker reads a contiguous share of the rank's rows in whole batches.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _InfiniteConstantSampler

from fashion_lake.data.handoff import HostBatch, ring_slots
from fashion_lake.data.order import DistContext, OrderSpec, TrainOrder, eval_shares
from fashion_lake.data.reader import EvalPlan, LakeDataset, TrainPlan
from fashion_lake.errors import CheckpointError

# Lightning warns that an IterableDataset's length may count rows twice over workers; ours counts
# batches assembled from every worker's part, exactly.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


class EpochSampler(_InfiniteConstantSampler):
    """The loader's sampler, where Lightning calls ``set_epoch``; ``frozen``: every epoch is
    epoch 0 (``Trainer(overfit_batches=N)`` promises the same batches every epoch)."""

    def __init__(self, frozen: bool = False) -> None:
        super().__init__()
        self.epoch, self.frozen = 0, frozen

    def set_epoch(self, epoch: int) -> None:
        if not self.frozen:
            self.epoch = epoch


class LakeLoader(DataLoader):
    """Training batches in the order ``order`` describes, or evaluation batches (``order``
    None), of a ``LakeDataset`` for one rank; ``group``: batches per worker item; ``adopt``: the
    order's settings that a mid-epoch resume takes from the checkpoint.

    Persistent workers (``persistent_workers``, with forked workers) read each epoch's
    ``(epoch, start)`` from shared memory that the loader writes before the epoch."""

    dataset: LakeDataset

    def __init__(
        self,
        dataset: LakeDataset,
        *,
        batch_size: int,
        dist: DistContext,
        order: OrderSpec | None = None,
        frozen: bool = False,
        group: int = 1,
        adopt: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        object.__setattr__(self, "sampler", EpochSampler(frozen))  # DataLoader refuses a sampler here
        self.rank_batch, self.dist, self.spec, self.group = batch_size, dist, order, group
        self._consumed = (0, 0)  # (epoch, its batches handed out by this process)
        self._loaded: dict[str, Any] | None = None  # a loaded state not yet iterated from
        self.adopt = adopt  # order settings a resume takes from the checkpoint (derived, not configured)
        self._adopted: dict[str, int] = {}
        self.started = False  # whether any iteration has begun
        self._fresh = False  # workers started by ``start``, not yet iterated
        self._release: Any = None  # lets those workers end unused (``start``)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def order_of(self, epoch: int) -> TrainOrder:
        return dataclasses.replace(self.spec, **self._adopted).at(epoch)  # type: ignore[arg-type]

    def order(self) -> TrainOrder:
        return self.order_of(self.epoch)

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    def plan(self, start: int = 0) -> TrainPlan | EvalPlan:
        if self.spec is not None:
            spec = dataclasses.replace(self.spec, **self._adopted)
            return TrainPlan(spec, self.dist, self.group, self.epoch, start)
        shares, count = eval_shares(len(self.dataset), self.rank_batch, self.dist, self.num_workers)
        return EvalPlan(shares, count, self.rank_batch, self.group)

    def __len__(self) -> int:
        if self.spec is not None:
            return self.order().steps
        return eval_shares(len(self.dataset), self.rank_batch, self.dist, self.num_workers)[1] * self.workers

    def start(self) -> None:
        """Start the training workers before the first epoch, so that whatever runs in between
        (a Trainer builds this loader before its sanity check) hides their start: forked
        persistent workers each open the lake and wait for the epoch's plan, which the first
        iteration hands them. Nothing is read early, so a resume or a new epoch set meanwhile
        changes nothing. Without workers the training process reads through the dataset setup
        opened; workers started otherwise (spawn, forkserver) open it at the first iteration."""
        context = self.multiprocessing_context or torch.multiprocessing
        if self.spec is None or self._iterator is not None or not self.persistent_workers:
            return
        if self.num_workers == 0 or context.get_start_method() != "fork":
            return
        self.dataset.set_plan(self.plan())
        self._iterator = self._get_iterator(hold=True)
        self._fresh = True
        # a loader dropped unused (the batch size finder builds several) lets its workers end
        self._release = weakref.finalize(self, self.dataset.cursor.release)  # type: ignore[union-attr]

    def ready(self) -> bool:
        """Whether the workers ``start`` started have all opened the lake (True when it started
        none: those open it at the first iteration)."""
        if not self._fresh:
            return True
        cursor = self.dataset.cursor
        return cursor is not None and cursor.workers_opened() == self.num_workers

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first ``next``, after Lightning's ``set_epoch``.
        self.started = True
        loaded, self._loaded = self._loaded, None
        start = loaded["batches"] if loaded is not None and loaded["epoch"] == self.epoch else 0
        self._consumed = (self.epoch, start)
        plan = self.plan(start)
        order = self.order() if self.spec is not None else None
        running = getattr(self.dataset.plan, "spec", None)
        if self._iterator is not None and running != getattr(plan, "spec", None):
            if self._fresh:  # workers of another order (a resume adopted its settings)
                self._release()
            self._iterator, self._fresh = None, False
        self.dataset.set_plan(plan)  # before new workers fork, and where persistent ones look
        items = self._iterator if self._fresh else super().__iter__()  # fresh: no reset to wait for
        self._fresh = False
        if self.spec is None:
            while parts := [_batches(item) for item in _take(items, self.workers)]:
                # whole batches, each worker's next in turn (as one batch a task)
                for k in range(max(map(len, parts))):
                    yield from (_without_positions(batches[k]) for batches in parts if k < len(batches))
            return
        cursor = getattr(items, "lake_cursor", None)  # where its workers wait for the first step
        try:
            while parts := [_batches(item) for item in _take(items, self.workers)]:
                for step_parts in zip(*parts, strict=True):
                    # counted before the Trainer sees it: saved mid-step, it is consumed
                    step = self._consumed[1]
                    self._consumed = (self._consumed[0], step + 1)
                    batch = join(list(step_parts))
                    if cursor is not None and step == start:
                        cursor.took_first()
                    yield {**batch, "rank_share": rank_share(order, step, self.dist, len(batch["labels"]))}
        finally:  # an epoch left before its first step: no worker waits on it
            if cursor is not None:
                cursor.took_first()

    def _get_iterator(self, hold: bool = False) -> Any:
        # New workers fork here: new slots first.
        if self.num_workers > 0:
            rows = self.rank_batch * self.group
            self.dataset.share_slots(self.num_workers, ring_slots(self.prefetch_factor), rows,
                                     self.multiprocessing_context, hold)  # fmt: skip
        iterator = super()._get_iterator()
        # its workers use these slots and this cursor for as long as it lives, whatever the
        # dataset holds next
        iterator.lake_slots = self.dataset.slots
        iterator.lake_cursor = self.dataset.cursor if self.num_workers > 0 else None
        return iterator

    def state_dict(self) -> dict[str, Any]:
        if self._loaded is not None:  # loaded, nothing consumed since: the same position
            return self._loaded
        order = self.order()
        epoch, batches = self._consumed
        batches = batches if epoch == self.epoch else 0  # an epoch set but not begun yet
        return {
            "epoch": self.epoch,
            "batches": batches,
            "finished": batches >= order.steps,
            "order": order.key(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("finished"):  # saved at the end of an epoch: the next one starts afresh
            self.set_epoch(state_dict["epoch"] + 1)
            return
        if state_dict.get("batches") == 0:  # nothing consumed (e.g. the batch size finder's restore)
            self.set_epoch(state_dict["epoch"])
            return
        saved = state_dict.get("order", {})
        self._adopted = {key: saved[key] for key in self.adopt if key in saved}
        partitions = self._adopted.get("partitions")
        if partitions is not None and partitions % self.dist.world_size:
            raise CheckpointError(
                f"the checkpoint stopped mid-epoch in an order of {partitions} partitions, which "
                f"{self.dist.world_size} processes cannot share; resume on a number of processes that "
                "divides it, or from a checkpoint saved at an epoch end."
            )
        now = self.order_of(state_dict["epoch"]).key() if self.spec is not None else {}
        now.update(self._adopted)
        changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if changed or "batches" not in state_dict:
            raise CheckpointError(
                "the checkpoint stopped mid-epoch in a training order that no longer applies "
                f"(checkpoint vs now: {changed}); resume with the same data version, data.seed, "
                "data.partitions, batch size and drop_last, or from a checkpoint saved at an epoch end."
            )
        self.set_epoch(state_dict["epoch"])
        self._loaded = state_dict


def rank_share(order: TrainOrder, step: int, dist: DistContext, rows: int) -> torch.Tensor:
    """This rank's ``rows`` of global batch ``step`` over an even share of the batch (``1``
    where ranks' shares are equal; partitions cut at unit ends differ in length, and corrupt
    rows may be skipped). The model weighs its mean loss by it, so that DDP's mean of the ranks'
    gradients weighs every row of the global batch alike."""
    total = order.batch_rows(step)
    return torch.tensor(rows * dist.world_size / total if total else 1.0, dtype=torch.float32)


def _take(items: Iterator[Any], count: int) -> list[Any]:
    out = []
    for item in items:
        out.append(item)
        if len(out) == count:
            break
    return out


def _batches(item: Any) -> list[dict[str, torch.Tensor]]:
    """The batches (or parts) in what the DataLoader yields: a ``HostBatch`` of one or a group,
    or the list that the pin-memory thread made of one."""
    if isinstance(item, HostBatch):
        return item.batches()
    return item if isinstance(item, list) else [item]


def _without_positions(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key != "position"}


def join(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch from its workers' parts, its rows in global-position order.

    In numpy: torch's cat and gather on batches this size wake its thread pool, which then
    competes with the workers for the cores (2-3x the cost here).
    """
    if len(parts) == 1:
        return _without_positions(parts[0])
    order = np.argsort(np.concatenate([part["position"].numpy() for part in parts]), kind="stable")
    pinned = any(part["labels"].is_pinned() for part in parts)
    out: dict[str, torch.Tensor] = {}
    for key in parts[0]:
        if key == "skipped":
            out[key] = sum(part[key] for part in parts)
        elif key == "encoded":  # one byte string per row, laid end to end: move whole rows
            lengths = np.concatenate([part["lengths"].numpy() for part in parts])
            flat = np.concatenate([part["encoded"].numpy() for part in parts])
            starts = np.cumsum(lengths) - lengths
            pieces = [flat[starts[i] : starts[i] + lengths[i]] for i in order.tolist()]
            out[key] = torch.from_numpy(np.concatenate(pieces) if pieces else flat)
        elif key != "position":
            out[key] = torch.from_numpy(np.concatenate([part[key].numpy() for part in parts])[order])
    return {key: value.pin_memory() if pinned else value for key, value in out.items()}
