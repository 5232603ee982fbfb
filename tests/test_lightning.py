"""What a Lightning user reaches for: continued training, tuners, overfit_batches, any logger,
the model on the data module's loaders, the package check and ``--help``."""

from __future__ import annotations

import csv
import gc
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BatchSizeFinder, LearningRateFinder

from fashion_lake import DeepLakeDataModule, FashionMnistModule
from fashion_lake.cli import DESCRIPTION, SUBCOMMAND_HELP, cli_main, main
from fashion_lake.data.reader import LakeDataset


class LrLog(pl.Callback):
    """The learning rate each training step uses (set by the scheduler after the step before)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(args: list[str], *callbacks: pl.Callback, ckpt_path: str | None = None):
    """``fit`` through the CLI's config, with extra callback objects (the tuners, ``LrLog``)."""
    cli = cli_main(args, run=False)
    cli.trainer.callbacks = [*callbacks, *cli.trainer.callbacks]  # tuners first, as Lightning orders them
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli


def test_continue_a_finished_run_with_more_epochs(cli_args: list[str]) -> None:
    """1 epoch of 2 steps, then the same run continued to 2 epochs: the one-cycle schedule spans all 4."""
    first = _fit(cli_args)
    ckpt = first.trainer.checkpoint_callback.last_model_path
    log = LrLog()
    more = _fit([*cli_args, "--trainer.max_epochs", "2"], log, ckpt_path=ckpt)
    assert more.trainer.global_step == 4 and len(log.lrs) == 2
    scheduler = more.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 4
    peak = more.trainer.optimizers[0].param_groups[0]["max_lr"]
    assert log.lrs[-1] < peak * 1e-3, "the last step of the longer run anneals to ~0"
    # a checkpoint of the continued run holds the refitted schedule: it resumes as is
    last = torch.load(more.trainer.checkpoint_callback.last_model_path, weights_only=False)
    assert last["lr_schedulers"][0]["total_steps"] == 4


def test_unknown_run_length_is_one_clear_error(cli_args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *cli_args, "--trainer.max_epochs", "-1", "--trainer.max_time", "00:00:00:05"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set --trainer.max_epochs or --trainer.max_steps" in err[0]


def test_batch_size_finder_refits_the_schedule(cli_args: list[str]) -> None:
    """The finder doubles the batch (16 -> 32): 3 steps an epoch instead of 7; the schedule ends with them."""
    finder = BatchSizeFinder(mode="power", init_val=32, max_trials=1, steps_per_trial=1)
    log = LrLog()
    cli = _fit([*cli_args, "--trainer.limit_train_batches", "null", "--trainer.max_epochs", "2"], finder, log)
    assert cli.datamodule.batch_size == finder.optimal_batch_size == 32
    assert cli.trainer.global_step == 6 and len(log.lrs) == 6
    assert cli.trainer.lr_scheduler_configs[0].scheduler.total_steps == 6
    peak = cli.trainer.optimizers[0].param_groups[0]["max_lr"]
    assert max(log.lrs) > peak * 0.5 and log.lrs[-1] < peak * 1e-3, "warms up, then anneals to ~0"


def test_learning_rate_finder_sets_the_learning_rate(cli_args: list[str]) -> None:
    finder = LearningRateFinder(min_lr=1e-5, max_lr=1.0, num_training_steps=14)
    log = LrLog()
    args = [*cli_args, "--data.batch_size", "8", "--trainer.limit_train_batches", "null"]
    cli = _fit(args, finder, log)
    suggested = finder.optimal_lr.suggestion()
    assert suggested is not None and cli.model.hparams.lr == suggested
    assert cli.trainer.optimizers[0].param_groups[0]["max_lr"] == suggested  # the one-cycle peak
    assert log.lrs[0] == pytest.approx(suggested / 25)  # OneCycleLR starts at peak / 25
    assert cli.trainer.global_step == 15


def test_overfit_batches_trains_on_the_same_rows_every_epoch(cli_args: list[str], tmp_path: Path) -> None:
    rows = tmp_path / "rows"
    cli_main(["fit", *cli_args, "--trainer.limit_train_batches", "null", "--trainer.overfit_batches", "2",
              "--trainer.max_epochs", "3", "--trainer.callbacks+=recorder.RowRecorder",
              "--trainer.callbacks.out_dir", str(rows)])  # fmt: skip
    import json

    record = json.loads((rows / "rank0.json").read_text())["rows"]["train"]
    epochs = [[batch[1:] for batch in record if batch[0] == epoch] for epoch in range(3)]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1] == epochs[2]


def test_csv_logger_keeps_its_per_step_metrics(cli_args: list[str], tmp_path: Path) -> None:
    csv_dir = tmp_path / "csv"
    cli = cli_main(["fit", *cli_args, "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
                    "--trainer.logger.save_dir", str(csv_dir)])  # fmt: skip
    run = Path(cli.trainer.logger.log_dir)
    steps = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in steps if r.get("train_loss")] == [0, 1], "one row per training step"
    assert any(r.get("lr-SGD") for r in steps), "LearningRateMonitor logs to it too"
    epochs = list(csv.DictReader((run / "epoch_metrics.csv").open()))
    assert len(epochs) == 1 and float(epochs[0]["train_time"]) > 0


def test_no_logger_runs_with_the_shipped_callbacks(cli_args: list[str]) -> None:
    cli = cli_main(["fit", *cli_args, "--trainer.logger", "false"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 2 and not cli.trainer.loggers


def test_fast_dev_run_leaves_no_files(cli_args: list[str], tmp_path: Path) -> None:
    fit = cli_main(["fit", *cli_args, "--trainer.fast_dev_run", "1"])
    assert fit.trainer.state.finished
    for command in ("test", "predict"):
        cli_main([command, *cli_args, "--trainer.fast_dev_run", "1"])
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    # Lightning 2.6's own ModelCheckpoint(save_last=True) still writes last.ckpt in on_train_end
    assert [p.name for p in files if p.suffix != ".ckpt"] == []


def test_the_model_takes_the_loaders_uint8_batches(tiny_lakes: dict[str, str]) -> None:
    """Without the data module's hooks the model gets uint8 images, and scores them the same."""
    dm = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=16)
    torch.manual_seed(0)
    model = FashionMnistModule(num_classes=dm.num_classes, class_names=dm.class_names)
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = pl.Trainer(accelerator="cpu", use_distributed_sampler=False, **quiet)
    direct = trainer.validate(model, dataloaders=dm.val_dataloader())[0]
    through_hooks = trainer.validate(model, datamodule=dm)[0]
    assert direct["val_acc"] == through_hooks["val_acc"]
    assert direct["val_loss"] == pytest.approx(through_hooks["val_loss"], abs=1e-6)


def test_old_checkpoints_load_without_the_normalisation_buffers() -> None:
    old = FashionMnistModule(num_classes=10).state_dict()
    assert not any(key.startswith("normalize.") for key in old), "mean/std are not saved"
    FashionMnistModule(num_classes=10).load_state_dict(old)  # strict


def test_unified_lightning_package_is_one_clear_error(
    cli_args: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *cli_args, "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fashion_lake: error: lightning.pytorch.callbacks.EarlyStop")
    assert "write pytorch_lightning.callbacks.EarlyStopping" in err[0]


def test_help_names_the_program_and_says_what_each_command_does(tmp_path: Path, run_cli) -> None:
    out = run_cli(["--help"], tmp_path).stdout
    assert out.startswith("usage: python -m fashion_lake ")
    flat = " ".join(out.split())
    assert " ".join(DESCRIPTION.split()) in flat and "Lightning Trainer command line tool" not in flat
    for text in SUBCOMMAND_HELP.values():
        assert " ".join(text.split()) in flat


def test_normalize_must_fit_the_channels() -> None:
    from fashion_lake.model import ModelError

    with pytest.raises(ModelError, match="statistics for 3 channels, but the images have 1"):
        FashionMnistModule(num_classes=10, in_channels=1, normalize="imagenet")
    rgb = FashionMnistModule(num_classes=10, in_channels=3, normalize="imagenet").eval()
    white = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(rgb.normalize(white)[0, :, 0, 0], expected)
    torch.testing.assert_close(rgb.normalize(white.float() / 255), rgb.normalize(white))  # [0, 1] floats too


def test_fit_lets_go_of_the_units_kept_for_a_next_epoch(
    cli_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second epoch reads nothing (the first one's units are kept: the lake is small), and
    once fit is over the training dataset holds no units."""
    reads: list[int] = []
    start = LakeDataset._start_read

    def counted(self: LakeDataset, units: list[int], *args: object) -> list:
        if self.train:
            reads.append(self.plan.epoch)
        return start(self, units, *args)

    monkeypatch.setattr(LakeDataset, "_start_read", counted)
    cli = _fit([*cli_args, "--trainer.max_epochs", "2", "--data.num_workers", "0"])
    gc.collect()  # the epochs' generators, closed
    assert 0 in reads and 1 not in reads
    assert not cli.datamodule.datasets["train"]._kept
