"""Callbacks that show what a run is doing: where step time goes."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl


class DataWait(pl.Callback):
    """Logs ``data_wait``: the fraction of each training step spent waiting for its batch.

    Waiting is the time from the end of one step to the start of the next: fetching from the
    loader, the host-to-device copy and the on-device batch transform. Near 0 means the
    model, not the data path, sets the pace.
    """

    def __init__(self) -> None:
        self._last_end: float | None = None
        self._wait = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._wait = time.perf_counter() - self._last_end

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        step = now - self._last_end
        self._last_end = now
        pl_module.log(
            "data_wait", self._wait / step if step > 0 else 0.0, on_step=True, on_epoch=True, batch_size=1
        )
