"""Callbacks that show what a run is doing: step time, pictures, curves, predictions."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor as _LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from fashion_lake import plots
from fashion_lake.errors import ConfigError


class DataWait(pl.Callback):
    """Logs ``data_wait``: the fraction of each training step spent waiting for its batch.

    Waiting is the time from the end of one step to the start of the next: fetching from the
    loader, the host-to-device copy and the on-device batch transform. Near 0 means the
    model, not the data path, sets the pace. ``wait`` and ``step_time`` hold the last step's
    seconds, for tools that time steps (``fashion_lake.tools.speed``).
    """

    def __init__(self) -> None:
        self._last_end: float | None = None
        self.wait = 0.0
        self.step_time = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last_end is None:  # resumed mid-epoch: no previous step to measure from
            self._last_end = time.perf_counter()
        self.wait = time.perf_counter() - self._last_end

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        step = self.step_time = now - self._last_end
        self._last_end = now
        pl_module.log(
            "data_wait", self.wait / step if step > 0 else 0.0, on_step=True, on_epoch=True, batch_size=1
        )


def _tensorboard(trainer: pl.Trainer) -> Any:
    """The TensorBoard SummaryWriter of the run, if it logs to TensorBoard."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class LearningRateMonitor(_LearningRateMonitor):
    """Lightning's ``LearningRateMonitor``, which logs nothing, rather than stopping the run, when the
    Trainer has no logger (``--trainer.logger false``) or Lightning turned logging off (``fast_dev_run``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._off = False

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._off = not trainer.loggers
        if not self._off:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._off:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._off:
            super().on_train_epoch_start(trainer, *args, **kwargs)


def writes_files(trainer: pl.Trainer) -> bool:
    """Whether this process writes reports: rank 0, and not under ``fast_dev_run`` (Lightning's
    promise there: no logs, no checkpoints, nothing left behind)."""
    return trainer.is_global_zero and not trainer.fast_dev_run


def run_dir(trainer: pl.Trainer) -> Path:
    """Where this run's logs, checkpoints and reports go.

    ``trainer.log_dir`` without its broadcast: that is a collective call, and reports are
    written on rank 0 alone (calling it there deadlocks DDP).
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    return Path(getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir)


class Reports(pl.Callback):
    """What a person wants to look at, in TensorBoard and as files in the run directory.

    TensorBoard: a grid of augmented training images with class names at fit start; a
    confusion matrix and a per-class accuracy table after each validation and test.
    Files: ``train_images.png`` at fit start; ``metrics.csv`` (per epoch; ``epoch_metrics.csv``
    where a ``CSVLogger`` keeps its own ``metrics.csv``, per step), ``curves.png`` and
    ``confusion_val.png`` at the end of ``fit``; ``confusion_test.png`` and
    ``per_class_test.md`` at the end of ``test``. None under ``fast_dev_run``.

    Time to accuracy, to compare recipes and machines: ``train_time`` in ``metrics.csv`` is the
    wall time in seconds since training started, not counting validation, at each epoch's
    validation; ``time_to_90`` (for threshold 0.90, and so on) is that time in the row of the
    first validation with ``val_acc`` >= the threshold. One line at the end of ``fit`` sums them
    up. Both carry over a resume (they are in the checkpoint).

    Args:
        grid_images: Training images in the picture drawn at fit start.
        thresholds: ``val_acc`` levels to time, in [0, 1]; ``[]`` for none.
    """

    def __init__(
        self, grid_images: int = 32, thresholds: tuple[float, ...] = (0.90, 0.92, 0.94, 0.95)
    ) -> None:
        if not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ConfigError(
                f"Reports thresholds are val_acc levels, each in [0, 1] (e.g. 0.94), got {thresholds}"
            )
        self.grid_images = grid_images
        self.thresholds = tuple(sorted(thresholds))
        self.history: list[dict[str, float]] = []
        self.reached: dict[float, tuple[float, int]] = {}  # threshold -> (train_time, epoch)
        self._train_losses: list[float] = []
        self._earlier_time = 0.0  # training seconds before this fit started (resumed runs)
        self._started: float | None = None
        self._val_started: float | None = None
        self._val_time = 0.0

    def train_time(self) -> float:
        """Seconds of training so far (this run and those it resumed), validation not counted."""
        if self._started is None:
            return self._earlier_time
        return self._earlier_time + time.perf_counter() - self._started - self._val_time

    def state_dict(self) -> dict[str, Any]:
        return {"train_time": self.train_time(), "reached": dict(self.reached)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._earlier_time = state_dict.get("train_time", 0.0)
        self.reached = dict(state_dict.get("reached", {}))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._val_time = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0 and trainer.current_epoch == 0 and writes_files(trainer):
            writer = _tensorboard(trainer)
            if writer is not None and len(batch["labels"]):
                n = min(self.grid_images, len(batch["labels"]))
                images = batch["images"][:n]  # augmented, in [0, 1] (uint8 without the data module's hook)
                images = images.float() / 255 if images.dtype == torch.uint8 else images
                figure = plots.image_grid(images, batch["labels"][:n].tolist(), pl_module.class_names)
                out = run_dir(trainer)
                out.mkdir(parents=True, exist_ok=True)
                figure.savefig(out / "train_images.png")
                writer.add_figure("train/augmented_images", figure, global_step=0)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # the rank's mean loss where the module returns it apart from the loss it optimises
        # (FashionMnistModule weighs that by the rank's share of the global batch)
        loss = outputs.get("train_loss", outputs["loss"]) if isinstance(outputs, dict) else outputs
        self._train_losses.append(float(loss))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = self._epoch_row(trainer)
        if self._train_losses:
            row["train_loss"] = sum(self._train_losses) / len(self._train_losses)
        if "train_acc" in trainer.callback_metrics:
            row["train_acc"] = float(trainer.callback_metrics["train_acc"])
        self._train_losses = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":
            if self._started is not None and self._val_started is not None:
                self._val_time += time.perf_counter() - self._val_started
            row = self._epoch_row(trainer)
            for key in ("val_acc", "val_loss"):
                if key in trainer.callback_metrics:
                    row[key] = float(trainer.callback_metrics[key])
            self._time_accuracy(row, trainer.current_epoch)
        self._report_confusion(trainer, pl_module, "val")

    def _time_accuracy(self, row: dict[str, float], epoch: int) -> None:
        row["train_time"] = self.train_time()
        for threshold in self.thresholds:
            if threshold not in self.reached and row.get("val_acc", -1.0) >= threshold:
                self.reached[threshold] = (row["train_time"], epoch)
                row[_time_column(threshold)] = row["train_time"]

    def time_summary(self) -> str:
        """One line: the training time at which val_acc first reached each threshold."""
        parts = []
        for threshold in self.thresholds:
            label = f"{threshold * 100:g}%"
            if threshold in self.reached:
                seconds, epoch = self.reached[threshold]
                parts.append(f"{label} {seconds:.1f} s (epoch {epoch})")
            else:
                parts.append(f"{label} not reached")
        return "Time to val_acc (training seconds, validation not counted): " + ", ".join(parts)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report_confusion(trainer, pl_module, "test")
        if writes_files(trainer) and "test" in pl_module.confusion:
            out = run_dir(trainer)
            out.mkdir(parents=True, exist_ok=True)
            matrix = pl_module.confusion["test"]
            figure = plots.confusion_figure(matrix, pl_module.class_names, "test")
            figure.savefig(out / "confusion_test.png")
            (out / "per_class_test.md").write_text(
                plots.per_class_table(matrix, pl_module.class_names) + "\n"
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:  # no collective calls below: rank 0 alone gets here
            return
        if self.thresholds:
            print(self.time_summary())
        if not self.history or not writes_files(trainer):
            return
        out = run_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        columns = {k for row in self.history for k in row} | {_time_column(t) for t in self.thresholds}
        keys = ["epoch", *sorted(columns - {"epoch"})]  # time_to_* blank: not reached (in this run)
        with (out / epoch_metrics_name(trainer)).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        plots.curves_figure(self.history).savefig(out / "curves.png")
        if "val" in pl_module.confusion:
            figure = plots.confusion_figure(pl_module.confusion["val"], pl_module.class_names, "validation")
            figure.savefig(out / "confusion_val.png")

    def _epoch_row(self, trainer: pl.Trainer) -> dict[str, float]:
        if not self.history or self.history[-1]["epoch"] != trainer.current_epoch:
            self.history.append({"epoch": trainer.current_epoch})
        return self.history[-1]

    def _report_confusion(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        writer = _tensorboard(trainer)
        if not trainer.is_global_zero or writer is None or stage not in pl_module.confusion:
            return
        matrix = pl_module.confusion[stage]
        step = trainer.global_step
        writer.add_figure(
            f"{stage}/confusion_matrix", plots.confusion_figure(matrix, pl_module.class_names, stage), step
        )
        writer.add_text(
            f"{stage}/per_class_accuracy", plots.per_class_table(matrix, pl_module.class_names), step
        )


def epoch_metrics_name(trainer: pl.Trainer) -> str:
    """``metrics.csv``, or ``epoch_metrics.csv`` where a CSVLogger writes its ``metrics.csv``."""
    out = run_dir(trainer).resolve()
    csv_dirs = {Path(lg.log_dir).resolve() for lg in trainer.loggers if isinstance(lg, CSVLogger)}
    return "epoch_metrics.csv" if out in csv_dirs else "metrics.csv"


def _time_column(threshold: float) -> str:
    """``time_to_90`` for 0.90, ``time_to_92.5`` for 0.925."""
    return f"time_to_{threshold * 100:g}"


class PredictionWriter(pl.Callback):
    """Writes ``predictions.csv`` (row index, class name, class id, probability; for image files
    also their path, after the index) to the run directory. Rows are named by the batch's own
    ``index``, so the loader's batch order does not matter (and Lightning's batch indices, which
    it infers only from map-style loaders, are not needed).

    With several processes each writes ``predictions-rank<R>.csv``; together they hold every row once.
    Nothing is written under ``fast_dev_run``.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__()
        self.filename = filename
        self._file: Any = None
        self._writer: Any = None
        self.path: Path | None = None
        self.rows = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._file = self._writer = self.path = None
        self._paths = False
        self.rows = 0
        if trainer.fast_dev_run:
            return
        name = self.filename
        if trainer.world_size > 1:
            stem, _, suffix = name.rpartition(".")
            name = f"{stem}-rank{trainer.global_rank}.{suffix}"
        self.path = run_dir(trainer) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        files = trainer.datamodule is not None and getattr(trainer.datamodule, "predict_files", None)
        self._paths = bool(files)
        self._writer.writerow(["index", *(["path"] if self._paths else []), "class_name", "class_id",
                               "probability"])  # fmt: skip

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self._writer is None:  # fast_dev_run
            return
        rows = zip(
            prediction["index"].tolist(), prediction["class_name"], prediction["class_id"].tolist(),
            prediction["probability"].tolist(), strict=True,
        )  # fmt: skip
        paths = prediction["path"] if self._paths else [None] * len(prediction["index"])
        for (index, name, class_id, probability), path in zip(rows, paths, strict=True):
            where = [path] if self._paths else []
            self._writer.writerow([index, *where, name, class_id, f"{probability:.6f}"])
            self.rows += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is None:
            return
        self._file.close()
        print(f"Wrote {self.rows} predictions to {self.path}")
