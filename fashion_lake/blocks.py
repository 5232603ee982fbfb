"""Encoded blocks read once per loader: ``SharedBlocks``, a block cache its workers share.

In a shuffled epoch every batch draws its rows from every block of its shuffle window, so with a
cache in each worker every worker read every block: each block was read twice with 2 workers,
8 times with 8. Deep Lake hands out encoded bytes at ~0.5 us a row (``get_bytes`` and labels),
against ~5 us to decode a 28x28 jpeg, so on 2 cores the second read cost ~8% of the loader
and on 8 workers it would cost almost as much as the decode.

Here the workers of a loader share one cache of encoded blocks in shared memory, made before
they fork. A missing block is claimed by the first worker that needs it (a worker claims its
share of what is missing, so workers that start a window together read its blocks in
parallel); the others wait for it and take their rows from there. Nothing is ever waited on
but a read in progress, and a wait that outlasts ``WAIT_S`` reads the block privately: a slow
store costs time, never a hang. A block is evicted least recently used, never while a worker
holds it. A block whose bytes do not fit a slot, or that finds no slot to evict, is read by
the worker itself, as before: the cache is an optimisation, never a condition.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import time
from collections.abc import Callable

import numpy as np

Block = tuple[np.ndarray, np.ndarray]  # images (pixels, or encoded bytes as objects), labels
ReadSpans = Callable[[list[tuple[int, int]]], list[Block]]
EMPTY, LOADING, READY = 0, 1, 2
WAIT_S = 60.0  # longest wait for another worker's read before reading the block here


class SharedBlocks:
    """``slots`` blocks of up to ``block_size`` encoded rows and ``slot_bytes`` bytes, shared by
    the processes forked after it is made."""

    def __init__(self, slots: int, block_size: int, slot_bytes: int, workers: int) -> None:
        self.slots, self.block_size, self.slot_bytes, self.workers = slots, block_size, slot_bytes, workers
        self.lock = multiprocessing.get_context("fork").Lock()
        table = 4 * slots + 1  # id, state, pins and last use per slot; a clock
        self._offsets_at = 8 * table
        self._labels_at = self._offsets_at + 8 * slots * (block_size + 1)
        self._data_at = self._labels_at + 8 * slots * block_size
        self._map = mmap.mmap(-1, self._data_at + slots * slot_bytes)  # anonymous, MAP_SHARED
        head = np.frombuffer(self._map, np.int64, table)
        self._ids, self._state, self._pins, self._used = head[:-1].reshape(4, slots)
        self._clock = head[-1:]
        self._ids[:] = -1
        self._offsets = np.frombuffer(self._map, np.int64, slots * (block_size + 1), self._offsets_at)
        self._offsets = self._offsets.reshape(slots, block_size + 1)
        self._labels = np.frombuffer(self._map, np.int64, slots * block_size, self._labels_at)
        self._labels = self._labels.reshape(slots, block_size)

    def gather(self, idx: np.ndarray, read: ReadSpans) -> Block:
        """The encoded images and labels of rows ``idx``; ``read`` reads blocks' row spans."""
        size = self.block_size
        blocks = idx // size
        wanted, where = np.unique(blocks, return_inverse=True)
        held: dict[int, int] = {}  # block -> slot, pinned
        own: dict[int, Block] = {}  # blocks read here and kept here
        try:
            self._fetch(wanted.tolist(), read, held, own)
            images = np.empty(len(idx), dtype=object)
            labels = np.empty(len(idx), dtype=np.int64)
            rows = idx - blocks * size
            for k, block in enumerate(wanted.tolist()):
                at = np.flatnonzero(where == k)
                if block in own:
                    block_images, block_labels = own[block]
                    images[at], labels[at] = block_images[rows[at]], block_labels[rows[at]]
                    continue
                slot, row = held[block], rows[at]
                starts = self._offsets[slot, row] + (self._data_at + slot * self.slot_bytes)
                ends = starts + (self._offsets[slot, row + 1] - self._offsets[slot, row])
                images[at] = [self._map[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
                labels[at] = self._labels[slot, row]
            return images, labels
        finally:
            if held:
                with self.lock:
                    self._pins[list(held.values())] -= 1

    def _fetch(
        self, pending: list[int], read: ReadSpans, held: dict[int, int], own: dict[int, Block]
    ) -> None:
        """Pin the slot of each of ``pending``'s blocks, reading those no worker has, or keep
        them in ``own`` where they cannot be shared."""
        deadline = None
        while pending:
            claimed: list[tuple[int, int]] = []
            alone: list[int] = []  # no slot free: read here
            waiting: list[int] = []
            with self.lock:
                self._clock[0] += 1
                slot_of = {block: slot for slot, block in enumerate(self._ids.tolist()) if block >= 0}
                share = max(1, math.ceil(sum(b not in slot_of for b in pending) / self.workers))
                for block in pending:
                    found = slot_of.get(block)
                    if found is not None and self._state[found] == READY:
                        self._pins[found] += 1
                        self._used[found] = self._clock[0]
                        held[block] = found
                    elif found is not None or len(claimed) >= share:
                        waiting.append(block)  # being read elsewhere, or left for another worker
                    elif (slot := self._victim()) is None:
                        alone.append(block)
                    else:
                        self._ids[slot], self._state[slot], self._pins[slot] = block, LOADING, 1
                        self._used[slot] = self._clock[0]
                        claimed.append((block, slot))
            if claimed or alone:
                self._read_into(claimed, alone, read, held, own)
            elif waiting:
                deadline = deadline or time.monotonic() + WAIT_S
                if time.monotonic() > deadline:  # another worker's read is stuck: read them here
                    own.update(zip(waiting, read(self._spans(waiting)), strict=True))
                    return
                time.sleep(0.0002)
            pending = waiting

    def _read_into(
        self,
        claimed: list[tuple[int, int]],
        alone: list[int],
        read: ReadSpans,
        held: dict[int, int],
        own: dict[int, Block],
    ) -> None:
        """Read the ``claimed`` blocks into their slots and the ``alone`` ones for this worker."""
        blocks = [block for block, _ in claimed] + alone
        published: list[int] = []
        try:
            results = read(self._spans(blocks))
            for (block, slot), (images, labels) in zip(claimed, results, strict=False):
                if self._store(slot, images, labels):
                    published.append(slot)
                    held[block] = slot
                else:
                    own[block] = (images, labels)
            own.update(zip(alone, results[len(claimed) :], strict=True))
        finally:
            with self.lock:
                for _, slot in claimed:
                    if slot in published:
                        self._state[slot] = READY
                    else:  # did not fit, or the read failed: free for any worker to claim
                        self._ids[slot], self._state[slot], self._pins[slot] = -1, EMPTY, 0

    def _store(self, slot: int, images: np.ndarray, labels: np.ndarray) -> bool:
        """Write a block's encoded rows into ``slot``, if they fit (and are all bytes: a row Deep
        Lake cannot hand out comes back as None, and is named or skipped by the worker's decode)."""
        if not all(isinstance(data, bytes) for data in images):
            return False
        lengths = np.fromiter((len(data) for data in images), np.int64, len(images))
        if lengths.sum() > self.slot_bytes:
            return False
        offsets = self._offsets[slot]
        offsets[0] = 0
        np.cumsum(lengths, out=offsets[1 : len(images) + 1])
        start = self._data_at + slot * self.slot_bytes
        self._map[start : start + int(offsets[len(images)])] = b"".join(images)
        self._labels[slot, : len(labels)] = labels
        return True

    def _victim(self) -> int | None:
        """The least recently used slot that no worker holds or is reading, if any."""
        free = np.flatnonzero((self._pins == 0) & (self._state != LOADING))
        if not len(free):
            return None
        return int(free[np.argmin(self._used[free])])

    def _spans(self, blocks: list[int]) -> list[tuple[int, int]]:
        return [(b * self.block_size, (b + 1) * self.block_size) for b in blocks]
