"""A callback for the subprocess tests: which rows each rank consumed, as JSON per rank.

Loaded by the real CLI through ``--trainer.callbacks+=recorder.RowRecorder`` with this folder on
PYTHONPATH (set by the tests), so it runs inside every DDP process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


class RowRecorder(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.rows: dict[str, list] = {"train": [], "val": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows["train"].append([trainer.current_epoch, *batch["index"].tolist()])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.rows["val"].append(batch["index"].tolist())

    def _dump(self, trainer) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "rows": self.rows,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_fit_end(self, trainer, pl_module) -> None:
        self._dump(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._dump(trainer)
