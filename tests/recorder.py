"""Callbacks for the subprocess tests: which rows each rank consumed; a SIGKILL on cue.

Loaded by the real CLI through ``--trainer.callbacks+=recorder.RowRecorder`` with this folder on
PYTHONPATH (set by the tests), so it runs inside every DDP process.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch


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


class RowLog(pl.Callback):
    """Appends each training batch's ``[global_step, *row ids]`` to ``out_dir/rank{r}.jsonl``.

    Written line by line as each step starts, so a process killed with SIGKILL leaves its log
    behind; at the end of fit the model's weights go to ``out_dir/weights.pt``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps([trainer.global_step, *batch["index"].tolist()]) + "\n")

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            torch.save(pl_module.state_dict(), self.out_dir / "weights.pt")


class KillAt(pl.Callback):
    """SIGKILLs this process as training step ``step`` starts: no clean-up, no final checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
