"""Runs that survive: checkpoints pin the data version they trained on."""

from __future__ import annotations

from pathlib import Path

import deeplake
import numpy as np
import torch

from fashion_lake.cli import cli_main

TESTS = Path(__file__).resolve().parent
CONFIGS = TESTS.parent / "configs"


def test_checkpoint_pins_the_data_version(tiny_raw_dir: Path, tmp_path: Path, run_config: Path) -> None:
    from fashion_lake.ingest import fashion_mnist

    lakes = {split: str(tmp_path / split) for split in ("train", "test")}
    for split, url in lakes.items():
        fashion_mnist(dest=url, raw_dir=str(tiny_raw_dir), split=split)
    args = ["--config", str(CONFIGS / "fashion.yaml"), "--config", str(run_config),
            "--data.train_url", lakes["train"], "--data.val_url", lakes["test"],
            "--data.batch_size", "16", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1"]  # fmt: skip
    fit = cli_main(["fit", *args])
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    recorded = torch.load(ckpt, map_location="cpu", weights_only=False)["DeepLakeDataModule"]["versions"]
    assert set(recorded) == {lakes["train"], lakes["test"]}

    ds = deeplake.open(lakes["test"])  # the lake moves on under the experiment
    ds.append({"images": np.zeros((7, 28, 28, 1), np.uint8), "labels": np.zeros(7, np.uint32)})
    ds.commit("7 more rows")
    del ds

    pinned = cli_main(["validate", *args, "--ckpt_path", str(ckpt)])
    assert len(pinned.datamodule.datasets["val"]) == 50
    assert pinned.datamodule.datasets["val"].info.version == recorded[lakes["test"]]
    latest = cli_main(["validate", *args, "--ckpt_path", str(ckpt), "--data.use_latest_version", "true"])
    assert len(latest.datamodule.datasets["val"]) == 57
