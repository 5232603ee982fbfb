from __future__ import annotations

import csv
import json
from pathlib import Path

import deeplake
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fashion_lake.cli import cli_main, main
from fashion_lake.ingest.write import FASHION_MNIST_CLASSES


def _last_ckpt(root: Path) -> Path:
    found = sorted(root.rglob("last.ckpt"))
    assert found, f"fit wrote no last.ckpt under {root}"
    return found[-1]


@pytest.fixture
def fitted(cli_args: list[str], tmp_path: Path) -> Path:
    cli = cli_main(["fit", *cli_args])
    assert cli.config.fit.trainer.use_distributed_sampler is False
    assert cli.model.net.fc.out_features == 10 and cli.model.class_names[0] == "T-shirt/top"
    metrics = cli.trainer.callback_metrics
    assert {"train_loss", "train_acc", "val_acc", "val_loss", "data_wait"} <= set(metrics)
    assert 0.0 <= float(metrics["data_wait"]) < 1.0
    return _last_ckpt(tmp_path / "runs")


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


def test_fit_writes_reports(fitted: Path) -> None:
    run = fitted.parents[1]
    tags = _events(run).Tags()
    assert {"train/augmented_images", "val/confusion_matrix"} <= set(tags["images"])
    assert "val/per_class_accuracy/text_summary" in tags["tensors"]
    assert {"train_loss", "val_acc", "data_wait_epoch"} <= set(tags["scalars"])
    for name in ("curves.png", "confusion_val.png", "train_images.png"):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 250
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and {"train_loss", "train_acc", "val_acc", "val_loss"} <= set(rows[0])
    assert 0.0 <= float(rows[0]["val_acc"]) <= 1.0


def test_fit_then_validate_test_predict(fitted: Path, cli_args: list[str]) -> None:
    validate = cli_main(["validate", *cli_args, "--ckpt_path", str(fitted)])
    val_acc = float(validate.trainer.callback_metrics["val_acc"])
    test = cli_main(["test", *cli_args, "--ckpt_path", str(fitted)])
    assert float(test.trainer.callback_metrics["test_acc"]) == pytest.approx(val_acc)  # test defaults to val
    predict = cli_main(["predict", *cli_args, "--ckpt_path", str(fitted)])
    outputs = predict.trainer.predict_loop.predictions
    assert torch.cat([o["index"] for o in outputs]).tolist() == list(range(50))
    names = [n for o in outputs for n in o["class_name"]]
    assert len(names) == 50 and set(names) <= set(predict.model.class_names)
    written = list(csv.DictReader((Path(predict.trainer.log_dir) / "predictions.csv").open()))
    assert [int(r["index"]) for r in written] == list(range(50))
    assert all(FASHION_MNIST_CLASSES[int(r["class_id"])] == r["class_name"] for r in written)
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in written)
    test_run = Path(test.trainer.log_dir)
    assert "test/confusion_matrix" in _events(test_run).Tags()["images"]
    with Image.open(test_run / "confusion_test.png") as image:
        assert image.size[0] >= 500
    table = (test_run / "per_class_test.md").read_text()
    assert sum(int(line.split("|")[2]) for line in table.splitlines()[2:]) == 50
    # the checkpoint's weights, not fresh ones: validate on it agrees with itself
    again = cli_main(["validate", *cli_args, "--ckpt_path", str(fitted)])
    assert float(again.trainer.callback_metrics["val_acc"]) == val_acc


def test_seed_overlay_runs(cli_args: list[str], tmp_path: Path) -> None:
    cli = cli_main(["fit", *cli_args, "--config", str(Path(__file__).parents[1] / "configs" / "seed.yaml"),
                    "--data.batch_size", "8"])  # fmt: skip
    assert isinstance(cli.model.optimizers().optimizer, torch.optim.SGD)
    assert cli.model.optimizers().param_groups[0]["lr"] == 0.001
    assert cli.datamodule.datasets["train"].sample_transform is not None


def test_missing_checkpoint_is_one_clear_error(cli_args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *cli_args, "--ckpt_path", "runs/nope/last.ckpt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "fashion_lake: error: checkpoint 'runs/nope/last.ckpt' does not exist; pass a .ckpt file written by "
        "`fit` (runs/NAME/version_N/checkpoints/last.ckpt), or --ckpt_path last."
    ]


def test_missing_dataset_is_one_clear_error(
    cli_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASHION_LAKE_RAW_DIR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *cli_args, "--data.train_url", str(tmp_path / "typo"), "--data.download", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "fashion_lake: error: no Deep Lake dataset at" in err and "typo" in err and "Traceback" not in err


def test_unknown_config_key_is_rejected(cli_args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *cli_args, "--data.batch_sizee", "3"])
    assert exit_info.value.code != 0
    assert "batch_sizee" in capsys.readouterr().err


def test_print_config_runs_as_is(cli_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", *cli_args, "--print_config"])
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    cli = cli_main(["fit", "--config", str(printed), "--trainer.fast_dev_run", "1"])
    assert cli.trainer.state.finished


def test_query_filtered_fit_trains_on_selected_classes(cli_args: list[str], tmp_path: Path) -> None:
    recorder = [
        "--trainer.callbacks+=recorder.RowRecorder",
        "--trainer.callbacks.out_dir",
        str(tmp_path / "rows"),
    ]
    query = ["--data.train_query", "SELECT * WHERE labels IN (0, 9)"]
    cli_main(
        [
            "fit",
            *cli_args,
            "--trainer.limit_train_batches",
            "null",
            "--data.drop_last",
            "false",
            *query,
            *recorder,
        ]
    )
    record = json.loads((tmp_path / "rows" / "rank0.json").read_text())
    rows = [i for batch in record["rows"]["train"] for i in batch[1:]]
    ds = deeplake.open_read_only(cli_args[cli_args.index("--data.train_url") + 1])
    labels = np.asarray(ds["labels"][0 : len(ds)])
    assert sorted(rows) == np.flatnonzero(np.isin(labels, [0, 9])).tolist()  # dataset row ids, each once


@pytest.mark.parametrize("overlay", ["fashion-hub.yaml", "rich.yaml", "ddp.yaml", "seed.yaml"])
def test_overlays_parse(overlay: str, capsys: pytest.CaptureFixture) -> None:
    configs = Path(__file__).parents[1] / "configs"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "fit",
                "--config",
                str(configs / "fashion.yaml"),
                "--config",
                str(configs / overlay),
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    assert "use_distributed_sampler: false" in capsys.readouterr().out
