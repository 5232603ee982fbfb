from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fashion_lake.cli import cli_main, main


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
        "fashion_lake: error: checkpoint 'runs/nope/last.ckpt' does not exist; pass the path of a .ckpt "
        "file written by `fit` (e.g. runs/fashion/version_0/checkpoints/last.ckpt) or --ckpt_path last."
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
