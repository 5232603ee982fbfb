"""The best recipe's overlay, time to accuracy in the reports, and the speed script, through the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fashion_lake.callbacks import Reports
from fashion_lake.cli import cli_main
from fashion_lake.tools import speed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ON_CPU = ["--trainer.precision", "32-true", "--data.batch_size", "16", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2"]  # fmt: skip


def _metrics(root: Path) -> list[dict[str, str]]:
    (path,) = sorted(root.rglob("metrics.csv"))[-1:]
    return list(csv.DictReader(path.open()))


def test_best_overlay_runs_on_cpu(cli_args: list[str], tmp_path: Path) -> None:
    cli = cli_main(
        ["fit", *cli_args, "--config", str(CONFIGS / "best.yaml"), *ON_CPU, "--data.num_workers", "0"]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    net = cli.model.net
    assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, torch.nn.Identity)
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert cli.model.hparams.label_smoothing == 0.1
    transform = cli.datamodule.batch_transform
    assert (transform.flip, transform.crop_padding, transform.erasing, transform.degrees) == (
        True,
        2,
        0.5,
        0.0,
    )
    assert cli.config.fit.trainer.max_epochs == 1  # the CPU overrides came last
    rows = _metrics(tmp_path / "runs")
    assert len(rows) == 1 and float(rows[0]["train_time"]) > 0 and 0 <= float(rows[0]["val_acc"]) <= 1


@pytest.fixture
def timed_args(cli_args: list[str], tmp_path: Path) -> list[str]:
    """``cli_args`` with the shipped config's Reports timing val_acc 0 (reached at once) and 1 (never)."""
    shipped = (CONFIGS / "fashion.yaml").read_text()
    line = "    - fashion_lake.callbacks.Reports\n"
    assert line in shipped
    config = tmp_path / "timed.yaml"
    config.write_text(shipped.replace(line, "    - {class_path: fashion_lake.callbacks.Reports, "
                                            "init_args: {thresholds: [1.0, 0.0]}}\n"))  # fmt: skip
    args = [str(config) if arg == str(CONFIGS / "fashion.yaml") else arg for arg in cli_args]
    return [*args, "--model.lr_schedule", "constant"]  # a one-cycle run cannot be resumed for longer


def test_time_to_accuracy_in_metrics_and_summary_and_over_a_resume(
    timed_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = cli_main(["fit", *timed_args])
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Time to val_acc")]
    assert len(summary) == 1 and "0% " in summary[0] and " s (epoch 0), 100% not reached" in summary[0]
    (row,) = _metrics(tmp_path / "runs")
    assert float(row["time_to_0"]) == float(row["train_time"]) > 0 and row["time_to_100"] == ""
    reports = next(c for c in first.trainer.callbacks if isinstance(c, Reports))
    assert reports.reached[0.0] == (float(row["time_to_0"]), 0)

    ckpt = first.trainer.checkpoint_callback.last_model_path
    resumed = cli_main(["fit", *timed_args, "--trainer.max_epochs", "2", "--ckpt_path", ckpt])
    (later,) = _metrics(tmp_path / "runs")  # the resumed run's folder: epoch 1 only
    assert later["epoch"] == "1" and later["time_to_0"] == ""  # reached before the resume, not again
    assert float(later["train_time"]) > float(row["train_time"])  # the clock carried over
    assert next(c for c in resumed.trainer.callbacks if isinstance(c, Reports)).reached[0.0][1] == 0


def test_bad_threshold_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"thresholds are val_acc levels, each in \[0, 1\].*got \(94,\)"):
        Reports(thresholds=(94,))


def test_speed_reports_samples_per_second(cli_args: list[str], capsys: pytest.CaptureFixture) -> None:
    result = speed.main([*cli_args, "--trainer.limit_train_batches", "null", "--steps", "3", "--warmup", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("speed: ") and "samples/s" in line and "data_wait" in line
    assert result["steps"] == 3 and result["batch"] == 16 and result["samples_per_s"] > 0
    assert 0.0 <= result["data_wait"] < 1.0 and result["device"] == "cpu"
