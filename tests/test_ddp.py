"""Real multi-process runs of the CLI on CPU (gloo), as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import global_batches

TESTS = Path(__file__).resolve().parent
TRAIN_ROWS, VAL_ROWS, BATCH = 120, 50, 16
DDP2 = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


def _cli(subcommand: str, cli_args: list[str], out: Path, *extra: str) -> list[str]:
    return [
        subcommand, *cli_args, "--data.drop_last", "false", "--trainer.accelerator", "cpu",
        "--trainer.limit_train_batches", "null", "--trainer.callbacks+=recorder.RowRecorder",
        "--trainer.callbacks.out_dir", str(out), *extra,
    ]  # fmt: skip


def _records(out: Path, world: int) -> list[dict]:
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["world_size"] for r in records] == [world] * world
    return records


def _assert_train_shards(records: list[dict], epochs: int, url: str) -> None:
    """Step s of every rank together is global batch s of the world-size-free epoch order."""
    world = len(records)
    for epoch in range(epochs):
        expected = global_batches(url, BATCH * world, epoch, drop_last=False)
        per_rank = [[b[1:] for b in r["rows"]["train"] if b[0] == epoch] for r in records]
        steps = [sorted(sum((per_rank[r][s] for r in range(world)), [])) for s in range(len(per_rank[0]))]
        assert steps == [sorted(batch) for batch in expected], "the global batches of one process"
        assert sorted(sum(steps, [])) == list(range(TRAIN_ROWS)), "each row exactly once per epoch"


@pytest.fixture(scope="module")
def ddp_fit(
    tiny_lakes: dict[str, str], tmp_path_factory: pytest.TempPathFactory, run_cli
) -> tuple[Path, list[str]]:
    """One 2-process fit with 2 workers per rank; its checkpoint feeds the validate tests."""
    tmp = tmp_path_factory.mktemp("ddp")
    args = ["--data.train_url", tiny_lakes["train"], "--data.val_url", tiny_lakes["test"],
            "--data.batch_size", str(BATCH), "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp), "--trainer.logger", "false",
            "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(tmp / "ckpt"),
            "--trainer.callbacks.save_last", "true"]  # fmt: skip
    cmd = _cli("fit", args, tmp / "fit", "--data.num_workers", "2", "--trainer.max_epochs", "2")
    run_cli([*cmd, *DDP2], tmp)
    return tmp, args


def test_ddp_fit_with_workers_reads_each_row_once(
    ddp_fit: tuple[Path, list[str]], tiny_lakes: dict[str, str]
) -> None:
    tmp, _ = ddp_fit
    records = _records(tmp / "fit", 2)
    _assert_train_shards(records, 2, tiny_lakes["train"])
    val = [np.concatenate([np.array(b, dtype=int) for b in r["rows"]["val"]]) for r in records]
    assert sorted(np.concatenate(val).tolist()) == sorted(list(range(VAL_ROWS)) * 2)  # 2 epochs of validation


def test_ddp_fit_without_workers(tiny_lakes: dict[str, str], tmp_path: Path, run_cli) -> None:
    args = ["--data.train_url", tiny_lakes["train"], "--data.val_url", tiny_lakes["test"],
            "--data.batch_size", str(BATCH), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]  # fmt: skip
    cmd = _cli("fit", args, tmp_path / "fit", "--data.num_workers", "0", "--trainer.max_epochs", "1")
    overlay = ["--config", str(TESTS.parent / "configs" / "ddp.yaml"), "--trainer.devices", "2"]
    run_cli([*cmd, *overlay], tmp_path)
    _assert_train_shards(_records(tmp_path / "fit", 2), 1, tiny_lakes["train"])


def test_validate_on_two_processes_equals_one(
    ddp_fit: tuple[Path, list[str]], tmp_path: Path, run_cli
) -> None:
    tmp, args = ddp_fit
    ckpt = str(tmp / "ckpt" / "last.ckpt")
    accuracy = {}
    for world in (1, 2):
        out = tmp_path / f"validate{world}"
        cmd = _cli("validate", args, out, "--ckpt_path", ckpt, "--trainer.devices", str(world))
        strategy = ["--trainer.strategy", "ddp"] if world > 1 else []
        run_cli([*cmd, *strategy], tmp_path)
        records = _records(out, world)
        rows = sorted(i for r in records for b in r["rows"]["val"] for i in b)
        assert rows == list(range(VAL_ROWS)), "validation reads every row exactly once"
        accuracy[world] = records[0]["metrics"]["val_acc"]
    # 50 rows over 2 x 16 per step: uneven batches on both ranks, and no sample padded or lost
    assert round(accuracy[2] * VAL_ROWS) == round(accuracy[1] * VAL_ROWS)
    assert accuracy[2] == pytest.approx(accuracy[1], abs=1e-6)


def test_two_nodes_with_torchrun(tiny_lakes: dict[str, str], tmp_path: Path, closed_port: int) -> None:
    """Two single-process 'nodes' on 127.0.0.1, launched as a cluster would launch them."""
    args = ["--data.train_url", tiny_lakes["train"], "--data.val_url", tiny_lakes["test"],
            "--data.batch_size", str(BATCH), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]  # fmt: skip
    cmd = _cli("fit", args, tmp_path / "fit", "--trainer.max_epochs", "1", "--trainer.num_nodes", "2",
               "--trainer.devices", "1", "--trainer.strategy", "ddp")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(closed_port),
                "-m",
                "fashion_lake",
                *cmd,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    for node in nodes:
        output, _ = node.communicate(timeout=600)
        assert node.returncode == 0, output[-6000:]
    _assert_train_shards(_records(tmp_path / "fit", 2), 1, tiny_lakes["train"])
