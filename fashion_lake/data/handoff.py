"""What crosses between the training process and its DataLoader workers: batches one way
(``HostBatch``, ``BatchSlots``), each epoch's plan and when its first step is joined the other
(``Cursor``).

A worker's batch is numpy arrays (``HostBatch``), made into tensors in the main process. Pickled
through the worker's pipe, a 28x28 batch of 256 (200 KB) costs the main process about as much
as the rest of the loader's work together: the 64 KB pipe hands it over in pieces, each a
context switch between processes that share 2 cores with the decode. So the images of a batch
cross in ``BatchSlots`` instead: shared memory that a worker writes the images into and the main
process copies them out of, while only a few hundred bytes cross the pipe.

``BatchSlots`` are anonymous shared mappings made before the workers fork, one ring per
worker: no ``/dev/shm`` file (Docker's is 64 MB by default) and nothing to clean up. A worker
started another way (spawn, forkserver) does not inherit them, and neither does a batch that
finds no free slot or is bigger than one: those cross pickled, as before. A slot is free again
once the main process has copied it out, or has dropped the batch unread (a stopped epoch).
"""

from __future__ import annotations

import itertools
import mmap
import os
import time
import weakref
from typing import Any

import numpy as np
import torch

_LIVE: weakref.WeakValueDictionary[int, BatchSlots] = weakref.WeakValueDictionary()  # by key
_KEYS = itertools.count()


def ring_slots(tasks_in_flight: int) -> int:
    """Slots a worker's ring needs: its tasks in flight, one being read, one spare."""
    return tasks_in_flight + 2


class BatchSlots:
    """``slots`` slots of ``slot_bytes`` bytes for each of ``workers`` DataLoader workers."""

    def __init__(self, workers: int, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.slot_bytes, self._head = _aligned(slot_bytes), _aligned(slots)  # slots start on cache lines
        # MAP_SHARED and anonymous: the same pages in this process and every worker forked from it
        self._maps = [mmap.mmap(-1, self._head + slots * self.slot_bytes) for _ in range(workers)]
        self._busy = [np.frombuffer(m, np.uint8, slots) for m in self._maps]  # 1: holds a batch not yet taken
        self.key = next(_KEYS)
        _LIVE[self.key] = self

    def put(self, worker: int, images: np.ndarray) -> SlotRef | None:
        """In a worker: ``images`` copied into a free slot of its ring, or None (none free, too big)."""
        if images.nbytes > self.slot_bytes or not images.flags.c_contiguous:
            return None
        busy = self._busy[worker]
        free = np.flatnonzero(busy == 0)
        if not len(free):
            return None
        slot = int(free[0])
        self._view(worker, slot, images.shape, images.dtype)[...] = images
        busy[slot] = 1  # after the pixels: the main process reads them only once told of this slot
        return SlotRef(self.key, worker, slot, images.shape, images.dtype.str)

    def take(self, ref: SlotRef, pin: bool = False) -> torch.Tensor:
        """In the main process: the images of ``ref`` as a tensor of their own; the slot is free again."""
        view = self._view(ref.worker, ref.slot, ref.shape, np.dtype(ref.dtype))
        # numpy's copy: torch's clone of a batch this size wakes its thread pool, 4x the cost here
        out = torch.from_numpy(view).pin_memory() if pin else torch.from_numpy(view.copy())
        self.release(ref)
        return out

    def release(self, ref: SlotRef) -> None:
        self._busy[ref.worker][ref.slot] = 0

    def _view(self, worker: int, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape))
        offset = self._head + slot * self.slot_bytes
        return np.frombuffer(self._maps[worker], dtype, count, offset).reshape(shape)


class Cursor:
    """Where forked persistent workers find each epoch's ``(epoch, start)``: anonymous shared
    memory the loader writes before an epoch and each worker reads as it starts one.

    Held (``hold``), a worker that starts an epoch opens the lake, says so (``opened``) and waits
    until the loader sets the plan, or gives up if released (``release``) or its training process
    is gone: a loader can start its workers before its first epoch without their reading anything
    yet (``LakeLoader.start``).

    The first batch first: a worker that has handed over its part of an epoch's first step waits
    (``first_taken``) until the loader has joined that step (``took_first``) before it decodes
    more or reads ahead, so that the cores and the bandwidth go to the parts still missing.
    """

    GO, HOLD, STOP = 0, 1, 2
    _EPOCH, _START, _STATE, _PID, _SERIAL, _TAKEN, _OPENED = range(7)

    def __init__(self, workers: int) -> None:
        # epoch, start, state, the training process's pid, the serial of the epoch last set and of
        # the last whose first step the loader joined, then one "opened" word per worker
        self._words = np.frombuffer(mmap.mmap(-1, 8 * (self._OPENED + workers)), np.int64)
        self._words[self._PID] = os.getpid()

    def set(self, epoch: int, start: int) -> None:
        self._words[self._EPOCH], self._words[self._START] = epoch, start
        self._words[self._SERIAL] += 1
        self._words[self._STATE] = self.GO  # last: a waiting worker reads the plan once this is set

    def hold(self) -> None:
        self._words[self._STATE] = self.HOLD

    def release(self) -> None:
        """Workers still held stop waiting and end their epoch without reading."""
        if self._words[self._STATE] == self.HOLD:
            self._words[self._STATE] = self.STOP

    def opened(self, worker: int) -> None:
        self._words[self._OPENED + worker] = 1

    def workers_opened(self) -> int:
        return int(self._words[self._OPENED :].sum())

    def wait(self) -> tuple[int, int, int] | None:
        """In a worker: the epoch's ``(epoch, start, serial)`` once set; None if released or orphaned."""
        while self._words[self._STATE] == self.HOLD:
            if self._orphaned():
                return None
            time.sleep(0.002)
        if self._words[self._STATE] == self.STOP:
            return None
        return int(self._words[self._EPOCH]), int(self._words[self._START]), int(self._words[self._SERIAL])

    def took_first(self) -> None:
        """In the loader: the first step of the epoch last set is joined (or will not be)."""
        self._words[self._TAKEN] = self._words[self._SERIAL]

    def first_taken(self, serial: int) -> None:
        """In a worker: wait until the loader has joined the first step of epoch ``serial``, or
        has moved on to another epoch, or is gone."""
        words = self._words
        while words[self._TAKEN] != serial and words[self._SERIAL] == serial:
            if words[self._STATE] != self.GO or self._orphaned():
                return
            time.sleep(0.001)

    def _orphaned(self) -> bool:
        return os.getppid() != self._words[self._PID]


def _aligned(size: int, to: int = 64) -> int:
    return max(to, -(-size // to) * to)


class SlotRef:
    """Where a batch's images wait: what crosses the pipe in their place.

    Dropped unread in the receiving process (an epoch stopped early), it frees its slot.
    """

    def __init__(self, key: int, worker: int, slot: int, shape: tuple[int, ...], dtype: str) -> None:
        self.key, self.worker, self.slot, self.shape, self.dtype = key, worker, slot, tuple(shape), dtype
        self.taken = True  # in the sending worker: never frees the slot itself

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "taken": False}

    def take(self, pin: bool = False) -> torch.Tensor:
        slots = _LIVE.get(self.key)
        if slots is None or self.taken:
            raise RuntimeError("a batch's images were read twice, or after their loader's workers ended")
        self.taken = True
        return slots.take(self, pin)

    def __del__(self) -> None:
        if not self.taken and (slots := _LIVE.get(self.key)) is not None:
            slots.release(self)


class HostBatch:
    """A batch as numpy arrays, made into tensors in the main process (``tensors``).

    With ``pin_memory`` the loader's pin thread calls ``pin_memory`` here, off the main thread,
    and the images go from their slot straight into pinned memory.
    """

    def __init__(self, arrays: dict[str, np.ndarray | SlotRef], sizes: list[int] | None = None) -> None:
        self.arrays, self.sizes = arrays, sizes  # sizes: the rows of each batch of a group

    def ship(self, slots: BatchSlots | None) -> HostBatch:
        """In a worker: the images moved into a slot of ``slots`` where one is free."""
        info = torch.utils.data.get_worker_info()
        images = self.arrays.get("images")
        if slots is not None and info is not None and isinstance(images, np.ndarray):
            ref = slots.put(info.id, images)
            if ref is not None:
                self.arrays = {**self.arrays, "images": ref}
        return self

    def tensors(self, pin: bool = False) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in self.arrays.items():
            if isinstance(value, SlotRef):
                out[key] = value.take(pin)
            else:
                tensor = torch.from_numpy(np.asarray(value))
                out[key] = tensor.pin_memory() if pin else tensor
        return out

    def batches(self, pin: bool = False) -> list[dict[str, torch.Tensor]]:
        """The batch, or the batches of a group, as tensors (those of a group share its memory)."""
        whole = self.tensors(pin)
        if self.sizes is None:
            return [whole]
        skipped = whole.pop("skipped", None)  # one count per batch
        parts = {key: torch.split(value, self.sizes) for key, value in whole.items()}
        out = [{key: value[i] for key, value in parts.items()} for i in range(len(self.sizes))]
        for i, batch in enumerate(out if skipped is not None else []):
            batch["skipped"] = skipped[i]
        return out

    def pin_memory(self, device: str | None = None) -> list[dict[str, torch.Tensor]]:
        return self.batches(pin=True)
