"""Runs that survive: exact mid-epoch resume after SIGKILL, resume on another world size, pinned versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import deeplake
import numpy as np
import pytest
import torch

from fashion_lake.cli import cli_main
from fashion_lake.sampler import block_shuffle

TESTS = Path(__file__).resolve().parent
CONFIGS = TESTS.parent / "configs"


def _fit(tmp: Path, args: list[str], *extra: str, expect: int = 0) -> None:
    cmd = [sys.executable, "-m", "fashion_lake", "fit", *args, *extra]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _log(path: Path) -> list[tuple[int, int, int, list[int]]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def _base_args(tiny_lakes: dict[str, str], ckpt_dir: Path) -> list[str]:
    return [
        "--config", str(CONFIGS / "fashion.yaml"), "--config", str(CONFIGS / "resume.yaml"),
        "--data.train_url", tiny_lakes["train"], "--data.val_url", tiny_lakes["test"],
        "--data.drop_last", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", "2", "--trainer.callbacks.dirpath", str(ckpt_dir),
    ]  # fmt: skip


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_is_exact(
    tiny_lakes: dict[str, str], tmp_path: Path, num_workers: int
) -> None:
    # 120 rows, batch 16: 8 steps an epoch; checkpoints every 3 steps; killed as step 10 starts.
    common = ["--data.batch_size", "16", "--data.num_workers", str(num_workers),
              "--trainer.callbacks.every_n_train_steps", "3"]  # fmt: skip
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    log = ["--trainer.callbacks+=recorder.RowLog", "--trainer.callbacks.path"]
    kill = ["--trainer.callbacks+=recorder.KillAt", "--trainer.callbacks.step", "10"]
    _fit(tmp_path, _base_args(tiny_lakes, straight), *common, *log, str(straight / "rows.jsonl"))
    _fit(tmp_path, _base_args(tiny_lakes, broken), *common, *log, str(broken / "rows-killed.jsonl"), *kill,
         expect=-signal.SIGKILL)  # fmt: skip
    assert (broken / "last.ckpt").is_file()
    resume = ["--ckpt_path", "last", *log, str(broken / "rows-resumed.jsonl")]
    _fit(tmp_path, _base_args(tiny_lakes, broken), *common, *resume)

    expected = _log(straight / "rows.jsonl")
    killed, resumed = _log(broken / "rows-killed.jsonl"), _log(broken / "rows-resumed.jsonl")
    assert len(expected) == 16 and killed == expected[:10]  # step 9 ran, then the kill
    assert resumed == expected[9:], "resumed from step 9 (the checkpoint) with the very next batches"
    final, reference = _weights(broken / "last.ckpt"), _weights(straight / "last.ckpt")
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference), (
        "weights differ from the uninterrupted run"
    )


def test_resume_two_processes_on_one(tiny_lakes: dict[str, str], tmp_path: Path) -> None:
    # global batch 32 over 2 ranks, stopped after 2 of 4 steps of epoch 0, finished on 1 process.
    ckpt = tmp_path / "ckpt"
    common = ["--data.global_batch_size", "32", "--trainer.max_epochs", "1",
              "--trainer.callbacks.every_n_train_steps", "1"]  # fmt: skip
    log = ["--trainer.callbacks+=recorder.RowLog", "--trainer.callbacks.path"]
    _fit(tmp_path, _base_args(tiny_lakes, ckpt), *common, *log, str(tmp_path / "two.jsonl"),
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--trainer.max_steps", "2")  # fmt: skip
    _fit(tmp_path, _base_args(tiny_lakes, ckpt), *common, *log, str(tmp_path / "one.jsonl"),
         "--ckpt_path", str(ckpt / "last.ckpt"), "--trainer.devices", "1")  # fmt: skip
    two, one = _log(tmp_path / "two.jsonl"), _log(tmp_path / "one.jsonl")
    assert sorted({rank for _, _, rank, _ in two}) == [0, 1] and all(len(rows) == 16 for *_, rows in two)
    steps_two = {}
    for _, step, rank, rows in two:
        steps_two.setdefault(step, {})[rank] = rows
    consumed = [i for step in sorted(steps_two) for rank in (0, 1) for i in steps_two[step][rank]]
    consumed += [i for *_, rows in one for i in rows]
    order = block_shuffle(120, seed=0, epoch=0, block_size=1024, window=16384)
    assert consumed == order.tolist(), "every row once, in the global order, across the change of world size"


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
