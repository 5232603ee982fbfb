"""Reading a Deep Lake dataset as fast batches: ``LakeDataset`` and its ``BlockCache``.

``LakeDataset`` is the map-style dataset the loaders use. Its ``__getitems__`` serves a whole
batch (or a ``RowGroup`` of batches, one worker task) from a cache of contiguous
``block_size``-row reads, issued together through Deep Lake's async reads: per process, or for
an encoded column one cache that a loader's forked workers share (``blocks.py``), so that each
block is read once, not once per worker. From a forked worker the images cross to the main
process in shared slots (``handoff.py``). What a block holds
depends on how the image column is stored:

- raw (uncompressed) columns: the pixels, read as column slices (memory copies);
- png/jpeg columns: the encoded bytes (``column.get_bytes``), and only the rows of each batch
  are decoded (``decode.py``), on the host in the worker that serves the batch or, for jpeg
  on a CUDA device, as one batch on the device.

With ``crops`` (``data.image_size``) rows may differ in size: blocks hold one array (or one
encoded image) per row, and each row of a batch is decoded, cropped and resized to the one
output size (``crops.py``) in the worker that serves the batch.

With a per-sample transform every row goes through ``ds.pytorch(transform)`` instead, as in
the Deep Lake tutorial.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from fashion_lake.blocks import Block, ReadSpans, SharedBlocks
from fashion_lake.crops import Crops
from fashion_lake.decode import (
    SizeMismatch,
    decode_host,
    decode_into,
    decode_on_device,
    pack,
    to_channels,
    unpack,
)
from fashion_lake.errors import DatasetError
from fashion_lake.handoff import BatchSlots, HostBatch
from fashion_lake.lake import LakeInfo, LakeSource, storage_errors
from fashion_lake.sampler import RowGroup

CORRUPT = -1  # the label given to a corrupt row that is to be skipped


class BlockCache:
    """Recently read blocks of ``block_size`` consecutive rows, in one preallocated slab.

    A batch is served by a single gather from the slab; the blocks not yet held are read
    together (``read`` gets all their row spans at once), replacing the least recently used
    ones. Holding a shuffle window's blocks means each block is read once per window.
    """

    def __init__(self, block_size: int, capacity: int, read: ReadSpans):
        self.block_size, self.capacity, self.read = block_size, max(1, capacity), read
        self.slots: OrderedDict[int, int] = OrderedDict()  # block -> slot, least recent first
        self.images: np.ndarray | None = None
        self.labels: np.ndarray | None = None

    def gather(self, idx: np.ndarray) -> Block:
        blocks = idx // self.block_size
        wanted, where = np.unique(blocks, return_inverse=True)
        wanted_list = wanted.tolist()
        if len(wanted_list) > self.capacity:  # a batch wider than the cache: grow, never thrash
            self._resize(len(wanted_list))
        for block in wanted_list:
            if block in self.slots:
                self.slots.move_to_end(block)
        missing = [block for block in wanted_list if block not in self.slots]
        if missing:
            spans = [(b * self.block_size, (b + 1) * self.block_size) for b in missing]
            for block, (images, labels) in zip(missing, self.read(spans), strict=True):
                self._store(block, images, labels)
        slot = np.fromiter((self.slots[b] for b in wanted_list), np.int64, len(wanted_list))
        rows = slot[where] * self.block_size + (idx - blocks * self.block_size)
        return self.images[rows], self.labels[rows]

    def _store(self, block: int, images: np.ndarray, labels: np.ndarray) -> None:
        if self.images is None:
            self._resize(self.capacity, images)
        if len(self.slots) < self.capacity:
            slot = len(self.slots)
        else:
            _, slot = self.slots.popitem(last=False)
        rows = slice(slot * self.block_size, slot * self.block_size + len(images))
        self.images[rows], self.labels[rows] = images, labels
        self.slots[block] = slot

    def _resize(self, capacity: int, like: np.ndarray | None = None) -> None:
        like = self.images if like is None else like
        if like is None:  # nothing stored yet: the first block allocates this many
            self.capacity = capacity
            return
        images = np.empty((capacity * self.block_size, *like.shape[1:]), dtype=like.dtype)
        labels = np.empty(capacity * self.block_size, dtype=np.int64)
        if self.images is not None:
            images[: len(self.images)], labels[: len(self.labels)] = self.images, self.labels
        self.images, self.labels, self.capacity = images, labels, capacity


class LakeDataset(Dataset):
    """Rows of one Deep Lake dataset as ``{'images', 'labels', 'index'}``.

    Fast path (no ``sample_transform``): ``__getitems__`` returns a whole batch with images as
    uint8 ``(B, C, H, W)`` (see the module docstring). With ``decode_on_device`` a jpeg batch
    leaves the loader still encoded, as ``encoded``/``lengths``, and ``decode_batch`` turns it
    into images on the device. Normalisation and augmentation run on whole batches after that.

    Fidelity path (a ``sample_transform``): each row goes through ``ds.pytorch(transform)``
    one at a time, as in the Deep Lake tutorial.
    """

    def __init__(
        self,
        source: LakeSource,
        info: LakeInfo,
        image_column: str = "images",
        label_column: str = "labels",
        sample_transform: Callable[[Any], dict] | None = None,
        block_size: int = 1024,
        cache_blocks: int = 16,
        skip_corrupt: bool = False,
        decode_on_device: bool = False,
        crops: Crops | None = None,
        channels: int | None = None,
        train: bool = False,
    ) -> None:
        self.source, self.info = source, info
        self.image_column, self.label_column = image_column, label_column
        self.sample_transform = sample_transform
        self.block_size, self.cache_blocks = block_size, max(1, cache_blocks)
        self.skip_corrupt, self.decode_on_device = skip_corrupt, decode_on_device
        self.crops, self.train = crops, train
        self._channels = channels
        self._ds: Any = None
        self._rows: Any = None
        self._pid: int | None = None
        self._cache: BlockCache | None = None
        self.slots: BatchSlots | None = None  # where workers' batches cross (``share_slots``)
        self.blocks: SharedBlocks | None = None  # the encoded blocks its workers share (``share_slots``)

    def __getstate__(self) -> dict:
        # Handles do not cross processes: each worker opens its own. Slots cross only by fork.
        cleared = {"_ds": None, "_rows": None, "_pid": None, "_cache": None, "slots": None, "blocks": None}
        return {**self.__dict__, **cleared}

    def share_slots(self, workers: int, slots: int, rows: int, context: Any = None) -> None:
        """Before ``workers`` DataLoader workers fork: shared slots for the images of their tasks,
        ``rows`` each (``handoff.py``), and for an encoded column one block cache for them all
        (``blocks.py``). Workers started otherwise (spawn, forkserver) send their images pickled
        and read blocks each for itself."""
        method = (context or multiprocessing).get_start_method()
        fast = method == "fork" and self.sample_transform is None
        self.slots = BatchSlots(workers, slots, rows * math.prod(self.sample_shape)) if fast else None
        self.blocks = None
        if fast and self.shares_blocks(workers):
            # twice a block's mean size: room for blocks of larger images (untouched pages take no memory)
            slot_bytes = int(2 * self.block_size * self.info.row_bytes) + (64 << 10)
            blocks = self.shared_blocks(workers)
            if blocks * slot_bytes <= total_memory() // 2:  # else each worker caches its own
                self.blocks = SharedBlocks(blocks, self.block_size, slot_bytes, workers)

    def shares_blocks(self, workers: int) -> bool:
        """Whether ``workers`` forked workers share one block cache: for encoded columns only
        (raw blocks are memory copies, cheaper than the sharing)."""
        return workers > 1 and self.info.codec is not None and self.sample_transform is None

    def shared_blocks(self, workers: int) -> int:
        """Blocks a shared cache holds: twice a worker's own (a window and the next, as workers
        straddle windows), plus one per worker."""
        return 2 * self.cache_blocks + workers

    @property
    def ds(self) -> Any:
        if self._ds is None or self._pid != os.getpid():
            self._ds = self.source.open()
            self._rows = self._ds.pytorch(transform=self.sample_transform)
            self._cache = BlockCache(self.block_size, self.cache_blocks, self._read)
            self._pid = os.getpid()
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
        self.ds  # noqa: B018 - opens the handle in this process
        with storage_errors(f"reading row {self._row_id(int(index))} of {self.source.url!r}"):
            row = self._rows[int(index)]
        if self.sample_transform is None:
            image = _hwc(np.asarray(row[self.image_column]))
            if self.crops is None:
                image = to_channels(image, self.channels)
            else:  # indexed one row at a time, outside an epoch: the evaluation crop
                image = self.crops.pixels(image, self.channels, False, 0, self._row_id(int(index)))
            images = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        else:  # a per-column transform returns the columns under their own names
            images = row[self.image_column]
        labels = int(_class_ids(np.asarray(row[self.label_column])[None], self.label_column)[0])
        return {"images": images, "labels": labels, "index": self._row_id(int(index))}

    def __getitems__(self, indices: Sequence[int]) -> dict | HostBatch:
        """One batch, or for a ``RowGroup`` (several batches, one worker task) all its rows at
        once, to be split back into its batches in the main process (``HostBatch.batches``)."""
        if self.sample_transform is not None:
            if isinstance(indices, RowGroup):
                raise ValueError("a RowGroup of batches cannot go through a per-sample transform")
            rows = [self[i] for i in indices]
            return default_collate(rows) if rows else {}
        if isinstance(indices, RowGroup) and self.decode_on_device:
            raise ValueError("a RowGroup of batches cannot be served encoded (decode_on_device)")
        self.ds  # noqa: B018 - opens the handle (and cache) in this process
        epoch = getattr(indices, "epoch", 0)  # a RowBatch (or RowGroup) from the sampler carries its epoch
        sizes = [len(batch) for batch in indices] if isinstance(indices, RowGroup) else None
        idx = np.asarray(list(itertools.chain.from_iterable(indices)) if sizes else indices, dtype=np.int64)
        if not len(idx):  # a rank's empty share of the last evaluation batch
            height, width, channels = self.sample_shape
            empty = np.empty((0, channels, height, width), np.uint8)
            return self._batch(empty, np.empty(0, np.int64), np.empty(0, np.int64), sizes)
        images, labels = self._gather(idx)
        rows = idx if self.info.row_ids is None else self.info.row_ids[idx]
        if self.crops is not None:
            cropped = self._stack(self._cropped(images, rows, epoch), labels, idx)
            return self._batch(_chw(cropped), labels, rows, sizes)
        if self.info.codec is not None:
            if self.decode_on_device:
                flat, lengths = pack(images)
                encoded = {"encoded": flat, "lengths": lengths, "view": idx}
                return HostBatch({**encoded, "labels": labels, "index": rows})
            images = _chw(self._decode(images, labels, idx))
        return self._batch(images, labels, rows, sizes)

    def _gather(self, idx: np.ndarray) -> Block:
        """Rows ``idx`` from the workers' shared block cache in a worker, else this process's own."""
        if self.blocks is not None and torch.utils.data.get_worker_info() is not None:
            return self.blocks.gather(idx, self._read)
        return self._cache.gather(idx)

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
            return self._batch(_chw(images), labels, rows).tensors()

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

    def _batch(
        self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray, sizes: list[int] | None = None
    ) -> HostBatch:
        """The rows as a ``HostBatch`` (of batches of ``sizes`` rows), corrupt rows dropped and counted."""
        batch = {"images": images, "labels": labels, "index": rows}
        if self.skip_corrupt:
            keep = labels != CORRUPT
            batch = {key: value[keep] for key, value in batch.items()}
            if sizes is None:
                batch["skipped"] = np.asarray(len(keep) - keep.sum(), dtype=np.int64)
            else:
                kept = [int(part.sum()) for part in np.split(keep, np.cumsum(sizes)[:-1])]
                batch["skipped"] = np.asarray(sizes, dtype=np.int64) - kept
                sizes = kept
        return HostBatch(batch, sizes).ship(self.slots)

    def _read(self, spans: list[tuple[int, int]]) -> list[Block]:
        """Rows ``start:stop`` of each span, read concurrently: images (N, C, H, W) or encoded bytes
        (N,), and labels (N,).

        Deep Lake retries transient storage errors (resets, 5xx) itself; what still fails is
        permanent. Corrupt images come back from Deep Lake as ``None`` (they fail to decode, in
        ``_stack``, when we decode them): an error naming the row, or with ``skip_corrupt`` a
        label of ``CORRUPT`` that ``_batch`` drops and counts.
        """
        spans = [(start, min(stop, self.info.rows)) for start, stop in spans]
        hint = (
            "Transient storage errors were already retried; check that the storage is reachable and "
            "the credentials are still valid, then resume with --ckpt_path last."
        )
        where = ", ".join(f"{start}..{stop - 1}" for start, stop in spans)
        images_column, labels_column = self.ds[self.image_column], self.ds[self.label_column]
        with storage_errors(f"reading rows {where} of {self.source.url!r}", hint):
            pending = [
                (
                    images_column.get_bytes_async(slice(start, stop))
                    if self.info.codec is not None
                    else images_column.get_async(slice(start, stop)),
                    labels_column.get_async(slice(start, stop)),
                )
                for start, stop in spans
            ]
            results = [(images.result(), labels.result()) for images, labels in pending]
        blocks = []
        for (start, _), (images, labels) in zip(spans, results, strict=True):
            labels = _class_ids(np.asarray(labels), self.label_column)
            if self.info.codec is not None or self.crops is not None:  # one object per row
                blocks.append((_objects(images), labels))
                continue
            if not isinstance(images, np.ndarray) or images.dtype == object:
                images = self._stack(list(images), labels, np.arange(start, start + len(images)))
            images = to_channels(_hwc(images, batched=True), self.channels)
            blocks.append((images.transpose(0, 3, 1, 2), labels))  # copied into the cache
        return blocks

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
        ``skip_corrupt`` the label ``CORRUPT`` (``_batch`` drops and counts such rows)."""
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
        """Every corrupt row in the blocks holding ``view_rows``, for the error message."""
        if self.info.codec is None:  # Deep Lake decoded the whole block: these are all of them
            return sorted(self._row_id(int(r)) for r in view_rows)
        self.ds  # noqa: B018 - opens the handle (and cache) in this process
        blocks = np.unique(view_rows // self.block_size)
        idx = np.concatenate(
            [np.arange(b * self.block_size, min((b + 1) * self.block_size, self.info.rows)) for b in blocks]
        )
        encoded, _ = self._gather(idx)
        # one row at a time: a block of 12-megapixel photos decoded at once would take gigabytes
        decode = lambda data: decode_host([data], self.info.codec, self.channels)[0]  # noqa: E731
        return [self._row_id(int(r)) for r, data in zip(idx, encoded, strict=True) if decode(data) is None]

    def _row_id(self, view_row: int) -> int:
        return view_row if self.info.row_ids is None else int(self.info.row_ids[view_row])


def total_memory() -> int:
    """This machine's physical memory in bytes (0 where the OS does not say)."""
    if not hasattr(os, "sysconf"):
        return 0
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
