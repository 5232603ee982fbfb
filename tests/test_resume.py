"""Runs that survive: SIGKILL mid-epoch and resume, resume on another world size, pinned versions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import deeplake
import numpy as np
import pytest
import torch
from conftest import global_batches

from fashion_lake.cli import cli_main

TESTS = Path(__file__).resolve().parent
CONFIGS = TESTS.parent / "configs"
TRAIN_ROWS = 120


def _steps(out: Path, rank: int = 0) -> list[list[int]]:
    """``[global_step, *row ids]`` per training step, as RowLog wrote them."""
    return [json.loads(line) for line in (out / f"rank{rank}.jsonl").read_text().splitlines()]


def lakes_train(args: list[str]) -> str:
    return args[args.index("--data.train_url") + 1]


def _epoch_end_checkpoint(tmp_path: Path) -> Path:
    """The killed run's (the second run's) end-of-epoch ``last.ckpt``, in its logger's folder."""
    ckpt = tmp_path / "runs" / "test" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 8
    return ckpt


@pytest.fixture
def resume_args(cli_args: list[str], tmp_path: Path) -> Callable[[str], list[str]]:
    """Arguments with the shipped resume overlay, checkpointing every 3 steps into a named folder."""

    def args(ckpt_dir: str) -> list[str]:
        overlay = (CONFIGS / "resume.yaml").read_text()
        assert "every_n_train_steps: 200" in overlay and "dirpath: runs/fashion/resume" in overlay
        overlay = overlay.replace("every_n_train_steps: 200", "every_n_train_steps: 3")
        path = tmp_path / f"resume-{ckpt_dir}.yaml"
        path.write_text(overlay.replace("runs/fashion/resume", str(tmp_path / ckpt_dir)))
        return [*cli_args, "--config", str(path), "--trainer.deterministic", "true",
                "--trainer.limit_train_batches", "null", "--data.drop_last", "false",
                "--trainer.max_epochs", "2"]  # fmt: skip

    return args


@pytest.mark.parametrize(("workers", "resume_from"), [(0, "last"), (2, "last"), (0, "epoch_end")])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(
    resume_args: Callable[[str], list[str]], tmp_path: Path, run_cli, workers: int, resume_from: str
) -> None:
    """120 rows in steps of 16: 8 steps per epoch, 16 in all; checkpoints after steps 3, 6, 9, ...

    ``last`` resumes from the step-9 checkpoint of the resume overlay; ``epoch_end`` from the
    one the main config's ModelCheckpoint wrote after epoch 0's validation (step 8).
    """
    workers_arg = ["--data.num_workers", str(workers)]
    args = [*resume_args("ckpt"), *workers_arg]
    log = ["--trainer.callbacks+=recorder.RowLog", "--trainer.callbacks.out_dir"]
    run_cli(["fit", *resume_args("whole-ckpt"), *workers_arg, *log, str(tmp_path / "whole")], tmp_path)
    expected = _steps(tmp_path / "whole")
    assert [s[0] for s in expected] == list(range(16))

    kill = ["--trainer.callbacks+=recorder.KillAt", "--trainer.callbacks.step", "10"]
    killed = run_cli(["fit", *args, *log, str(tmp_path / "killed"), *kill], tmp_path, returncode=-9)
    assert _steps(tmp_path / "killed") == expected[:11], killed.stderr[-3000:]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()

    ckpt, first = ("last", 9) if resume_from == "last" else (str(_epoch_end_checkpoint(tmp_path)), 8)
    run_cli(["fit", *args, *log, str(tmp_path / "resumed"), "--ckpt_path", ckpt], tmp_path)
    # The checkpoint holds the position: from the next step on again, nothing else.
    assert _steps(tmp_path / "resumed") == expected[first:]
    whole = torch.load(tmp_path / "whole" / "weights.pt")
    resumed = torch.load(tmp_path / "resumed" / "weights.pt")
    assert whole.keys() == resumed.keys()
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), f"{name} differs from the uninterrupted run"


def test_resume_two_processes_on_one(
    resume_args: Callable[[str], list[str]], tmp_path: Path, run_cli
) -> None:
    """3 steps of 2 x 16 rows on 2 processes (both killed), the rest of the epoch on 1: each row once."""
    args = [*resume_args("ckpt"), "--data.global_batch_size", "32", "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", "--trainer.callbacks+=recorder.RowLog"]  # fmt: skip
    two = ["--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.callbacks+=recorder.KillAt", "--trainer.callbacks.step", "3"]  # fmt: skip
    run_cli(
        ["fit", *args, "--trainer.callbacks.out_dir", str(tmp_path / "two"), *two], tmp_path, returncode=-9
    )
    one = ["--trainer.devices", "1", "--ckpt_path", "last"]
    run_cli(["fit", *args, "--trainer.callbacks.out_dir", str(tmp_path / "one"), *one], tmp_path)

    ranks = [_steps(tmp_path / "two", rank)[:3] for rank in (0, 1)]  # step 3 started, then the kill
    assert [s[0] for s in ranks[0]] == [s[0] for s in ranks[1]] == [0, 1, 2]
    steps = [sorted(a[1:] + b[1:]) for a, b in zip(*ranks, strict=True)]
    rest = _steps(tmp_path / "one")
    assert [s[0] for s in rest] == [3]  # 24 rows left: one step of 24 on a single process
    steps += [sorted(step[1:]) for step in rest]
    expected = global_batches(lakes_train(args), 32, drop_last=False)
    assert steps == [sorted(batch) for batch in expected], "the 2-process order, continued on 1"
    assert sorted(sum(steps, [])) == list(range(TRAIN_ROWS)), "every row once"


def test_checkpoint_pins_the_data_version(tiny_raw_dir: Path, tmp_path: Path, run_config: Path) -> None:
    from fashion_lake.ingest.write import fashion_mnist

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
