"""Reading a Deep Lake dataset as batch parts: ``LakeDataset``.

``LakeDataset`` is an iterable dataset that ``LakeLoader`` plans for each epoch. Each process
that iterates it (the training process, or each DataLoader worker) reads only its own rows of
the rank's read units (``order.Readers``: whole units, or its run of each on local storage),
with Deep Lake's async reads: an item's own units first, then a shuffle group ahead. It yields
its parts of the rank's batches an item of steps at a time; the loader joins the parts. From
a forked worker the images cross to the main process in shared slots (``handoff.py``). What a unit
holds depends on how the image column is stored:

- raw (uncompressed) columns: the pixels, read as column slices (memory copies);
- png/jpeg columns: the encoded bytes (``column.get_bytes``), and only the rows of each part
  are decoded (``decode.py``), on the host in the process that owns them or, for jpeg on a
  CUDA device, as one batch on the device.

With ``crops`` (``data.image_size``) rows may differ in size: units hold one array (or one
encoded image) per row, and each row is decoded, cropped and resized to the one output size
(``crops.py``) in the process that owns it.

With a per-sample transform every row goes through ``ds.pytorch(transform)`` instead, as in
the Deep Lake tutorial.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate

from fashion_lake.data.crops import Crops
from fashion_lake.data.decode import (
    SizeMismatch,
    decode_host,
    decode_into,
    decode_on_device,
    pack,
    to_channels,
    unpack,
)
from fashion_lake.data.handoff import BatchSlots, Cursor, HostBatch
from fashion_lake.data.info import LakeInfo
from fashion_lake.data.order import DistContext, OrderSpec, chunks
from fashion_lake.errors import DatasetError
from fashion_lake.lake import LakeSource, is_local, storage_errors

CORRUPT = -1  # the label given to a corrupt row that is to be skipped
POLL_S = 0.002  # how often a process waiting on several reads looks which are in
Block = tuple[np.ndarray, np.ndarray]  # rows' images (pixels, or encoded bytes as objects) and labels
Span = tuple[int, int]  # rows [a, b) of a unit
READ_HINT = (
    "Transient storage errors were already retried; check that the storage is reachable and "
    "the credentials are still valid, then resume with --ckpt_path last."
)


@dataclass(frozen=True)
class Pending:
    """A unit's read in flight: Deep Lake futures of its images and labels from row ``start`` on."""

    images: Any
    labels: Any
    start: int

    def done(self) -> bool:
        return bool(self.images.is_completed() and self.labels.is_completed())


@dataclass(frozen=True)
class Held:
    """A unit's rows once read, from row ``start`` on."""

    images: np.ndarray
    labels: np.ndarray
    start: int

    @property
    def span(self) -> Span:
        return self.start, self.start + len(self.labels)


@dataclass(frozen=True)
class TrainPlan:
    """Training epoch ``epoch`` for one rank, from global batch ``start`` on, ``group`` steps per item."""

    spec: OrderSpec
    dist: DistContext
    group: int = 1
    epoch: int = 0
    start: int = 0


@dataclass(frozen=True)
class EvalPlan:
    """Evaluation for one rank: each worker's rows (``shares``) in ``count`` batches, ``group`` per item."""

    shares: list[range]
    count: int
    batch_size: int
    group: int = 1


class LakeDataset(IterableDataset):
    """Rows of one Deep Lake dataset, yielded as parts of ``{'images', 'labels', 'index'}`` batches.

    Fast path (no ``sample_transform``): images as uint8 ``(B, C, H, W)`` (see the module
    docstring). With ``decode_on_device`` a jpeg batch leaves the loader still encoded, as
    ``encoded``/``lengths``, and ``decode_batch`` turns it into images on the device.
    Normalisation and augmentation run on whole batches after that.

    Fidelity path (a ``sample_transform``): each row goes through ``ds.pytorch(transform)``
    one at a time, as in the Deep Lake tutorial.
    """

    def __init__(
        self,
        source: LakeSource,
        info: LakeInfo,
        units: np.ndarray,
        image_column: str = "images",
        label_column: str = "labels",
        sample_transform: Callable[[Any], dict] | None = None,
        skip_corrupt: bool = False,
        decode_on_device: bool = False,
        crops: Crops | None = None,
        channels: int | None = None,
        train: bool = False,
        opened: Any = None,
    ) -> None:
        self.source, self.info, self.units = source, info, np.asarray(units, dtype=np.int64)
        self.image_column, self.label_column = image_column, label_column
        self.sample_transform = sample_transform
        self.skip_corrupt, self.decode_on_device = skip_corrupt, decode_on_device
        self.crops, self.train = crops, train
        # each worker reads its run of every unit (local: the page cache serves the repeats), or
        # whole units, each dealt to one worker (remote: each fetched once); see order.Readers
        self.split_units = is_local(source.url)
        self._channels = channels
        self.plan: TrainPlan | EvalPlan | None = None  # set by the loader before each epoch
        # ``opened``: the dataset already open in this process (the catalog's); forked workers open their own
        self._ds: Any = opened
        self._rows: Any = None
        self._pid: int | None = os.getpid() if opened is not None else None
        self.slots: BatchSlots | None = None  # where workers' parts cross (``share_slots``)
        self.cursor: Cursor | None = None  # each epoch's plan for persistent workers (``share_slots``)
        self._kept: dict[int, Held] = {}  # units read by the last epoch here (``_train_items``)

    def __getstate__(self) -> dict:
        # Handles do not cross processes: each worker opens its own. Slots cross only by fork.
        # Nor do the units kept for the next epoch (``_kept``): they are the reading process's.
        unshared = dict.fromkeys(("_ds", "_rows", "_pid", "slots", "cursor"))
        return {**self.__dict__, **unshared, "_kept": {}}

    def share_slots(
        self, workers: int, slots: int, rows: int, context: Any = None, hold: bool = False
    ) -> None:
        """Before ``workers`` DataLoader workers fork: shared slots for the images of their items,
        ``rows`` each (``handoff.py``), and the cursor where they find each epoch's plan, ``hold``
        or not. Workers started otherwise (spawn, forkserver) send their images pickled."""
        method = (context or multiprocessing).get_start_method()
        fast = method == "fork" and self.sample_transform is None
        self.slots = BatchSlots(workers, slots, rows * math.prod(self.sample_shape)) if fast else None
        self.cursor = Cursor(workers) if method == "fork" else None
        self.set_plan(self.plan)
        if hold and self.cursor is not None:
            self.cursor.hold()

    def set_plan(self, plan: TrainPlan | EvalPlan | None) -> None:
        """What the next iteration reads, here and in workers forked or still running."""
        self.plan = plan
        if self.cursor is not None and isinstance(plan, TrainPlan):
            self.cursor.set(plan.epoch, plan.start)

    def unit_bytes(self) -> float:
        """What the largest unit takes in memory, by the dataset's mean row size."""
        return float(np.diff(self.units).max()) * self.info.row_bytes

    @property
    def ds(self) -> Any:
        if self._ds is None or self._pid != os.getpid():
            self._ds, self._rows, self._pid = self.source.open(), None, os.getpid()
        return self._ds

    @property
    def channels(self) -> int:
        """Channels of the images served: ``data.channels``, else the dataset's own."""
        return self._channels or self.info.sample_shape[-1]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images served."""
        height, width = self.crops.size if self.crops is not None else self.info.sample_shape[:2]
        return height, width, self.channels

    def __len__(self) -> int:
        return self.info.rows

    def __getitem__(self, index: int) -> dict:
        if self._rows is None or self._pid != os.getpid():
            self._rows = self.ds.pytorch(transform=self.sample_transform)
        with storage_errors(f"reading row {self._row_id(int(index))} of {self.source.url!r}"):
            row = self._rows[int(index)]
        if self.sample_transform is None:
            image = _hwc(np.asarray(row[self.image_column]))
            if self.crops is None:
                image = to_channels(image, self.channels)
            else:  # indexed one row at a time, outside an epoch: the evaluation crop
                image = self.crops.pixels(image, self.channels, False, 0, self._row_id(int(index)))
            images = torch.from_numpy(np.array(image, order="C")).permute(2, 0, 1)  # a writable copy
        else:  # a per-column transform returns the columns under their own names
            images = row[self.image_column]
        labels = int(self._checked(_class_ids(np.asarray(row[self.label_column])[None], self.label_column),
                                   int(index))[0])  # fmt: skip
        return {"images": images, "labels": labels, "index": self._row_id(int(index))}

    # ------------------------------------------------------------------ the parts of an epoch
    def __iter__(self) -> Iterator[HostBatch]:
        plan = self.plan
        if plan is None:
            raise RuntimeError("a LakeDataset is read through LakeLoader, which plans each epoch")
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.ds  # noqa: B018 - opens the handle in this process
        first_taken: Callable[[], None] | None = None
        if info is not None and self.cursor is not None and isinstance(plan, TrainPlan):
            self.cursor.opened(worker)
            at = self.cursor.wait()  # at once, unless the loader started its workers before the epoch
            if at is None:
                return
            plan = dataclasses.replace(plan, epoch=at[0], start=at[1])
            first_taken = functools.partial(self.cursor.first_taken, at[2])
        if isinstance(plan, TrainPlan):
            yield from self._train_items(plan, worker, workers, first_taken)
            return
        parts = self._eval_parts(plan, worker)
        while group := list(itertools.islice(parts, plan.group)):
            yield self._item(group, plan.group > 1)

    def _train_items(
        self, plan: TrainPlan, worker: int, workers: int, first_taken: Callable[[], None] | None = None
    ) -> Iterator[HostBatch]:
        """This process's parts of the rank's batches (the rows it reads), ``plan.group`` steps an
        item: planned, gathered and decoded a whole item at a time, as one array. A worker with
        ``first_taken`` waits on it once its first item is handed over (``Cursor``).

        Units read stay held while there is room (``_hold``), and from one epoch to the next
        (``_kept``) where it reads the same rows of them: a lake that the window holds is read
        once, not once an epoch."""
        order = plan.spec.at(plan.epoch)
        owned = order.owned(plan.dist)
        readers = order.readers(owned, workers, split=self.split_units)
        span = functools.partial(readers.span, worker=worker)
        # the units the window is sized for (``plan.group_units_for``): this group and the next
        # of every partition owned; whole units are dealt to the workers, runs of them split
        room = 2 * order.group_units * len(owned)
        room = room if readers.split else -(-room // workers)
        held: dict[int, Held | Pending] = {u: got for u, got in self._kept.items() if got.span == span(u)}
        self._kept = {}  # what this epoch does not take goes now
        ahead: set[int] = set()
        last: list[int] = []
        try:
            for first, stop in _items(plan.start, order.steps, plan.group):
                positions, rows, step_of = order.batches(first, stop, owned)
                units = np.searchsorted(self.units, rows, side="right") - 1
                mine = readers.worker_of(rows, units) == worker
                positions, rows, units, step_of = positions[mine], rows[mine], units[mine], step_of[mine]
                if self.sample_transform is not None:
                    steps = [step_of == k for k in range(stop - first)]
                    parts = [self._sample_part(rows[at], positions[at]) for at in steps]
                    yield self._item(parts, plan.group > 1)
                    continue
                now = set(np.unique(units).tolist())
                at = order.taken((stop - 1) * order.global_batch)
                groups = [order.partition_list[p].group_at(int(at[p])) for p in owned]
                if groups != last:  # the shuffle groups in use and the next ones, of units read here
                    ahead, last = set(), groups
                    for p, k in zip(owned, groups, strict=True):
                        for group in order.partition_list[p].groups_from(k):
                            ahead.update(group[readers.reads(group, worker)].tolist())
                wanted = ahead | now
                # this item's units, its decoding, its handover, then the reads ahead: reads ahead
                # would share the bandwidth and the cores that this item (the first batch, at an
                # epoch's start) waits on
                self._hold(wanted, held, span, room, now)
                part = self._arrived(rows, units, now, held, order.epoch, positions)
                yield self._steps(part, step_of, stop - first, plan.group > 1)
                if first_taken is not None and first == plan.start:
                    first_taken()
                self._hold(wanted, held, span, room)
        finally:  # also an epoch left early: what it read is no less current
            self._kept = {unit: got for unit, got in held.items() if isinstance(got, Held)}

    def forget(self) -> None:
        """Let go of the units kept for the next epoch (the end of fit)."""
        self._kept = {}

    def _steps(
        self, part: dict[str, np.ndarray], step_of: np.ndarray, steps: int, grouped: bool
    ) -> HostBatch:
        """An item's rows (of ``steps`` consecutive steps, ``step_of`` each row's) as one
        ``HostBatch``, to be split back by the loader; corrupt rows dropped (``skip_corrupt``)."""
        part, step_of, skipped = self._drop_corrupt(part, step_of, steps)
        if not grouped:
            counted = {"skipped": skipped[0]} if skipped is not None else {}
            return HostBatch({**part, **counted}).ship(self.slots)
        if skipped is not None:
            part["skipped"] = skipped.astype(np.int64)
        return HostBatch(part, np.bincount(step_of, minlength=steps).tolist()).ship(self.slots)

    def _eval_parts(self, plan: EvalPlan, worker: int) -> Iterator[dict]:
        """This worker's share of the rank's rows in storage order, in ``plan.count`` batches."""
        held: dict[int, Held | Pending] = {}
        share = plan.shares[worker]

        def span(unit: int) -> Span:  # the unit's rows in this worker's share
            return max(int(self.units[unit]), share.start), min(int(self.units[unit + 1]), share.stop)

        for batch in chunks(share, plan.batch_size, plan.count):
            rows = np.arange(batch.start, batch.stop, dtype=np.int64)
            if self.sample_transform is not None:
                yield self._sample_part(rows, rows)
                continue
            units = np.searchsorted(self.units, rows, side="right") - 1
            if len(rows):  # these units, and the next one to read ahead
                ahead = set(range(int(units[0]), min(int(units[-1]) + 2, len(self.units) - 1)))
                self._hold({u for u in ahead if span(u)[0] < span(u)[1]}, held, span)
            yield self._part(rows, *self._gather(rows, units, held), 0, rows)

    def _hold(
        self,
        wanted: set[int],
        held: dict[int, Held | Pending],
        span: Callable[[int], Span],
        room: int = 0,
        only: set[int] | None = None,
    ) -> None:
        """Start reading the wanted units (of ``only``) not held yet: the rows ``span(unit)`` of
        each, this process's rows of it. Units no longer wanted stay while fewer than ``room``
        are held, the first read going first."""
        missing = sorted(u for u in (wanted if only is None else only) if u not in held)
        unwanted = [u for u in held if u not in wanted]
        for unit in unwanted[: max(0, len(held) + len(missing) - room)]:
            del held[unit]
        if missing:
            held.update(zip(missing, self._start_read(missing, [span(u) for u in missing]), strict=True))

    def _arrived(
        self,
        rows: np.ndarray,
        units: np.ndarray,
        now: set[int],
        held: dict[int, Held | Pending],
        epoch: int,
        positions: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The part of ``rows`` (in ``units``, the set ``now``) with corrupt rows labelled, as
        ``_part``; where rows are decoded here and some reads are still in flight (the first batch
        of an epoch, a batch that outruns reads ahead), each unit's rows as soon as its read is
        in, so that decoding overlaps the other reads."""

        def read_in(unit: int) -> bool:
            got = held.get(unit)
            return not isinstance(got, Pending) or got.done()

        decoded_here = self.crops is not None or (self.info.codec is not None and not self.decode_on_device)
        if not decoded_here or len(now) < 2 or all(map(read_in, now)):
            return self._part(rows, *self._gather(rows, units, held), epoch, positions, skip=False)
        waiting, parts, where = set(now), [], []
        while waiting:
            ready = sorted(filter(read_in, waiting))
            if not ready:
                time.sleep(POLL_S)
                continue
            at = np.flatnonzero(np.isin(units, ready))
            block = self._gather(rows[at], units[at], held)
            parts.append(self._part(rows[at], *block, epoch, positions[at], skip=False))
            where.append(at)
            waiting.difference_update(ready)
        if len(parts) == 1:
            return parts[0]
        back = np.argsort(np.concatenate(where))  # the rows' order again
        return {key: np.concatenate([part[key] for part in parts])[back] for key in parts[0]}

    def _gather(self, rows: np.ndarray, units: np.ndarray, held: dict[int, Held | Pending]) -> Block:
        """The images and labels of ``rows`` (in units ``units``), waiting for reads in flight."""
        found: dict[int, Held] = {}
        for unit in np.unique(units).tolist():
            got = held.get(unit)
            if isinstance(got, Pending):
                got = held[unit] = self._finish_read(unit, got)
            elif got is None:
                got = held[unit] = self._read([unit])[0]
            found[unit] = got
        if not len(rows):
            return np.empty(0, dtype=object), np.empty(0, np.int64)
        first = found[int(units[0])].images
        images = np.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
        labels = np.empty(len(rows), dtype=np.int64)
        for unit, got in found.items():
            at = np.flatnonzero(units == unit) if len(found) > 1 else slice(None)
            local = rows[at] - got.start
            images[at], labels[at] = got.images[local], got.labels[local]
        return images, labels

    def _item(self, parts: list[dict], grouped: bool) -> HostBatch:
        """Parts (of consecutive steps) as one ``HostBatch``, to be split back by the loader."""
        if not grouped:
            return HostBatch(parts[0]).ship(self.slots)
        arrays = {key: np.concatenate([part[key] for part in parts]) for key in parts[0] if key != "skipped"}
        if "skipped" in parts[0]:
            arrays["skipped"] = np.array([part["skipped"] for part in parts], dtype=np.int64)
        return HostBatch(arrays, [len(part["labels"]) for part in parts]).ship(self.slots)

    def _part(
        self,
        idx: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
        epoch: int,
        positions: np.ndarray,
        skip: bool = True,
    ) -> dict[str, np.ndarray]:
        """Rows ``idx`` (view rows) of a batch, decoded, cropped or as they are; corrupt ones
        dropped (``skip``) or labelled ``CORRUPT``."""
        rows = idx if self.info.row_ids is None else self.info.row_ids[idx]
        if not len(idx):
            height, width, channels = self.sample_shape
            images = np.empty((0, channels, height, width), np.uint8)
            if self.decode_on_device:
                empty = {"encoded": np.empty(0, np.uint8), "lengths": np.empty(0, np.int64), "view": idx}
                return {**empty, "labels": labels, "index": rows, "position": positions}
        elif self.crops is not None:
            images = _chw(self._stack(self._cropped(images, rows, epoch), labels, idx))
        elif self.info.codec is not None:
            if self.decode_on_device:
                flat, lengths = pack(images)
                encoded = {"encoded": flat, "lengths": lengths, "view": idx}
                return {**encoded, "labels": labels, "index": rows, "position": positions}
            images = _chw(self._decode(images, labels, idx))
        part = {"images": images, "labels": labels, "index": rows, "position": positions}
        return self._skip(part) if skip else part

    def _skip(self, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """With ``skip_corrupt``: the part without its corrupt rows, and their count as ``skipped``."""
        part, _, skipped = self._drop_corrupt(part, np.zeros(len(part["labels"]), np.int64), 1)
        return part if skipped is None else {**part, "skipped": np.asarray(skipped[0], dtype=np.int64)}

    def _drop_corrupt(
        self, part: dict[str, np.ndarray], step_of: np.ndarray, steps: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
        """With ``skip_corrupt``: ``part`` and ``step_of`` (each row's step of ``steps``) without the
        corrupt rows, and each step's count of them; else all as they are and no count."""
        if not self.skip_corrupt or "images" not in part:
            return part, step_of, None
        keep = part["labels"] != CORRUPT
        kept = {key: value[keep] for key, value in part.items()}
        return kept, step_of[keep], np.bincount(step_of[~keep], minlength=steps)

    def _sample_part(self, idx: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``idx`` one at a time through the per-sample transform (the tutorial's path)."""
        if not len(idx):
            height, width, channels = self.info.sample_shape
            images = np.empty((0, channels, height, width), np.float32)
            return {"images": images, "labels": np.empty(0, np.int64), "index": idx, "position": positions}
        batch = default_collate([self[int(i)] for i in idx])
        part = {key: np.asarray(value) for key, value in batch.items()}
        return {**part, "position": positions}

    def decode_batch(self, batch: dict, device: torch.device) -> dict:
        """An ``encoded`` batch (``decode_on_device``) with its images decoded on ``device``.

        If the batch does not decode as a whole (a corrupt row, mixed sizes) it is decoded on
        the host, which names or skips the bad rows.
        """
        batch = dict(batch)
        flat, lengths, view = batch.pop("encoded"), batch.pop("lengths"), batch.pop("view")
        try:
            batch["images"] = decode_on_device(flat, lengths, self.channels, device)
            return batch
        except RuntimeError:
            labels, rows = batch["labels"].numpy().copy(), batch["index"].numpy()
            encoded = [part.numpy().tobytes() for part in unpack(flat, lengths)]
            images = self._decode(encoded, labels, view.numpy())
            part = self._skip({"images": _chw(images), "labels": labels, "index": rows})
            out = {**batch, **{key: torch.from_numpy(np.asarray(value)) for key, value in part.items()}}
            if "skipped" in part and "skipped" in batch:  # rows the workers skipped, and these
                out["skipped"] = batch["skipped"] + out["skipped"]
            if "rank_share" in batch and len(labels):  # of the rows kept
                out["rank_share"] = batch["rank_share"] * (len(part["labels"]) / len(labels))
            return out

    def _cropped(self, images: np.ndarray, rows: np.ndarray, epoch: int) -> list[np.ndarray | None]:
        """Each row decoded (or taken as it is), cropped and resized to the output size."""
        crops, codec, channels, train = self.crops, self.info.codec, self.channels, self.train
        if codec is not None:
            return [
                crops.decode(data, codec, channels, train, epoch, int(row))
                for data, row in zip(images, rows, strict=True)
            ]
        return [
            crops.pixels(_hwc(image), channels, train, epoch, int(row))
            for image, row in zip(images, rows, strict=True)
        ]

    def _span(self, unit: int) -> Span:
        return int(self.units[unit]), int(self.units[unit + 1])

    def _start_read(self, units: list[int], spans: list[Span] | None = None) -> list[Pending]:
        """Start reading ``units`` (whole, or rows ``spans`` of them), concurrently (async reads)."""
        images_column, labels_column = self.ds[self.image_column], self.ds[self.label_column]
        with storage_errors(f"reading {self._where(units)} of {self.source.url!r}", READ_HINT):
            pending = []
            for a, b in spans or [self._span(u) for u in units]:
                span = slice(a, b)
                images = (
                    images_column.get_bytes_async(span)
                    if self.info.codec is not None
                    else images_column.get_async(span)
                )
                pending.append(Pending(images, labels_column.get_async(span), a))
        return pending

    def _finish_read(self, unit: int, pending: Pending) -> Held:
        """A unit's rows once read: images (N, C, H, W) or encoded bytes (N,), and labels (N,).

        Deep Lake retries transient storage errors (resets, 5xx) itself; what still fails is
        permanent. Corrupt images come back from Deep Lake as ``None`` (they fail to decode, in
        ``_stack``, when we decode them): an error naming the row, or with ``skip_corrupt`` a
        label of ``CORRUPT`` that ``_skip`` or ``_steps`` drops and counts.
        """
        with storage_errors(f"reading {self._where([unit])} of {self.source.url!r}", READ_HINT):
            images, labels = pending.images.result(), pending.labels.result()
        start = pending.start
        labels = self._checked(_class_ids(np.asarray(labels), self.label_column), start)
        if self.info.codec is not None or self.crops is not None:  # one object per row
            return Held(_objects(images), labels, start)
        if not isinstance(images, np.ndarray) or images.dtype == object:
            images = self._stack(list(images), labels, np.arange(start, start + len(images)))
        images = to_channels(_hwc(images, batched=True), self.channels)
        return Held(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels, start)

    def _read(self, units: list[int]) -> list[Held]:
        return [self._finish_read(u, p) for u, p in zip(units, self._start_read(units), strict=True)]

    def _where(self, units: list[int]) -> str:
        return ", ".join(f"rows {self.units[u]}..{self.units[u + 1] - 1}" for u in units)

    def _checked(self, labels: np.ndarray, first: int) -> np.ndarray:
        """``labels`` (of view rows from ``first`` on), refused where outside the class range."""
        classes = len(self.info.class_names)
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if len(bad):
            row = self._row_id(first + int(bad[0]))
            raise DatasetError(
                f"row {row} of {self.source.url!r} has label {int(labels[bad[0]])}, outside "
                f"0..{classes - 1} ({classes} class names); fix the labels or the class names."
            )
        return labels

    def _decode(self, encoded: np.ndarray, labels: np.ndarray, view_rows: np.ndarray) -> np.ndarray:
        """Encoded images decoded into one uint8 ``(N, H, W, C)`` array; ``labels`` is updated in place."""
        out = np.empty((len(encoded), *self.sample_shape), np.uint8)
        try:
            bad = decode_into(encoded, self.info.codec, out)
        except SizeMismatch:
            raise self._differing_sizes(view_rows) from None
        if bad:
            self._corrupt(bad, labels, view_rows)
            out[bad] = 0
        return out

    def _stack(self, images: list, labels: np.ndarray, view_rows: np.ndarray) -> np.ndarray:
        """Decoded HWC images (``None`` where corrupt) as one uint8 array; ``labels`` is updated in place."""
        bad = [i for i, image in enumerate(images) if image is None]
        if bad:
            self._corrupt(bad, labels, view_rows)
            shape = next((np.asarray(image).shape for image in images if image is not None), None)
            for i in bad:
                images[i] = np.zeros(shape or self.sample_shape, np.uint8)
        try:
            return np.stack(images)
        except ValueError:
            raise self._differing_sizes(view_rows) from None

    def _corrupt(self, bad: list[int], labels: np.ndarray, view_rows: np.ndarray) -> None:
        """Positions ``bad`` of a batch hold corrupt images: an error naming them, or with
        ``skip_corrupt`` the label ``CORRUPT`` (``_skip`` or ``_steps`` drops and counts such rows)."""
        if not self.skip_corrupt:
            rows = [self._row_id(int(view_rows[i])) for i in bad]
            raise DatasetError(
                f"row {rows[0]} of {self.source.url!r} holds corrupt image bytes (corrupt rows "
                f"here: {self._corrupt_near(view_rows[bad])}). Re-ingest the dataset, or pass "
                "--data.skip_corrupt true to skip such rows (counted as train_skipped_rows / "
                "val_skipped_rows in the logs)."
            )
        labels[bad] = CORRUPT

    def _differing_sizes(self, view_rows: np.ndarray) -> DatasetError:
        first, last = int(view_rows.min()), int(view_rows.max())
        return DatasetError(
            f"rows {self._row_id(first)}..{self._row_id(last)} of {self.source.url!r} hold images of "
            "differing sizes; set --data.image_size N (or [H, W]) to crop and resize every image to "
            "one size, or re-ingest with one size (python -m fashion_lake.ingest image_folder "
            "--image_size [H, W])."
        )

    def _corrupt_near(self, view_rows: np.ndarray) -> list[int]:
        """Every corrupt row in the units holding ``view_rows``, for the error message."""
        if self.info.codec is None:  # Deep Lake decoded the whole unit: these are all of them
            return sorted(self._row_id(int(r)) for r in view_rows)
        units = np.unique(np.searchsorted(self.units, view_rows, side="right") - 1).tolist()
        found = []
        for unit, got in zip(units, self._read(units), strict=True):
            # one row at a time: a unit of 12-megapixel photos decoded at once would take gigabytes
            for offset, data in enumerate(got.images):
                if decode_host([data], self.info.codec, self.channels)[0] is None:
                    found.append(self._row_id(int(self.units[unit]) + offset))
        return found

    def _row_id(self, view_row: int) -> int:
        return view_row if self.info.row_ids is None else int(self.info.row_ids[view_row])


def _items(start: int, steps: int, group: int) -> Iterator[tuple[int, int]]:
    """Steps ``[first, stop)`` of each item from ``start`` on: 1, 2, 4, ... up to ``group`` steps,
    so that the first batch waits for one step's rows, not a whole item's. Every worker follows
    the same schedule, so the loader joins their items step by step."""
    size, first = 1, start
    while first < steps:
        stop = min(first + size, steps)
        yield first, stop
        first, size = stop, min(2 * size, group)


def _objects(items: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of ``items`` (arrays stay whole, not broadcast into a 4-d array)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _class_ids(labels: np.ndarray, column: str) -> np.ndarray:
    """One class id per row as a writable int64 array, whether stored as ``()`` or ``(1,)`` per row.

    Deep Lake 3 ``class_label`` tensors hold a ``(1,)`` array per row.
    """
    flat = labels.reshape(len(labels), -1)
    if flat.shape[1] != 1:
        raise DatasetError(f"column {column!r} holds {labels.shape[1:]} arrays, not one class id per row.")
    return flat[:, 0].astype(np.int64)


def _hwc(images: np.ndarray, batched: bool = False) -> np.ndarray:
    """Give grayscale images stored as HxW a channel axis."""
    return images[..., None] if images.ndim == (3 if batched else 2) else images


def _chw(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, H, W), contiguous: the layout of the batches."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
