"""Remote storage: a real S3-compatible server (moto_server) on loopback, with and without faults."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import FaultyProxy

from fashion_lake.ingest.write import fashion_mnist
from fashion_lake.tools.s3 import moto_server

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_ROWS, VAL_ROWS = 120, 50
KEY_ENV, SECRET_ENV = "FASHION_LAKE_TEST_KEY_ID", "FASHION_LAKE_TEST_SECRET"


@pytest.fixture(scope="module")
def s3(tiny_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """moto_server on a free loopback port holding the tiny lakes under s3://fashion/.

    The secret lives only in this process's environment and the subprocesses' (by name in
    ``creds``); ``secret`` is returned so that tests can look for it where it must not be.
    """
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log) as endpoint:
        secret = "fl-" + secrets.token_hex(20)
        env = {KEY_ENV: "AKIAFASHIONLAKETEST", SECRET_ENV: secret}
        old_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            import boto3

            boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id=env[KEY_ENV], aws_secret_access_key=secret,
                region_name="us-east-1",
            ).create_bucket(Bucket="fashion")  # fmt: skip
            by_reference = {
                "aws_access_key_id": f"env:{KEY_ENV}", "aws_secret_access_key": f"env:{SECRET_ENV}"
            }  # fmt: skip
            creds = {"endpoint_url": endpoint, "aws_region": "us-east-1", **by_reference}
            urls = {split: f"s3://fashion/{split}" for split in ("train", "test")}
            for split, url in urls.items():
                fashion_mnist(dest=url, raw_dir=str(tiny_raw_dir), split=split, creds=creds)
            yield {"endpoint": endpoint, "creds": creds, "urls": urls, "secret": secret, "env": env}
        finally:
            for key, value in old_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _args(s3: dict, run_config: Path, tmp_path: Path, endpoint: str | None = None) -> list[str]:
    creds = dict(s3["creds"], endpoint_url=endpoint or s3["endpoint"])
    overlay = tmp_path / "s3.yaml"
    overlay.write_text(json.dumps({"data": {"creds": creds}}))  # JSON is YAML
    return ["--config", str(CONFIGS / "fashion.yaml"), "--config", str(run_config), "--config", str(overlay),
            "--data.train_url", s3["urls"]["train"], "--data.val_url", s3["urls"]["test"],
            "--data.batch_size", "16", "--data.drop_last", "false", "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu"]  # fmt: skip


def _files_holding(root: Path, needle: bytes) -> list[str]:
    """Files under ``root`` whose bytes, or any zip member's (checkpoints), contain ``needle``."""
    hits = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs += [z.read(name) for name in z.namelist()]
        if any(needle in blob for blob in blobs):
            hits.append(str(path))
    return hits


def test_fit_and_validate_over_s3_never_write_the_secret(
    s3: dict, run_config: Path, tmp_path: Path, run_cli
) -> None:
    args = _args(s3, run_config, tmp_path)
    log = ["--trainer.callbacks+=recorder.RowLog", "--trainer.callbacks.out_dir", str(tmp_path / "rows")]
    fit = run_cli(["fit", *args, *log], tmp_path)
    rows = [
        row
        for line in (tmp_path / "rows" / "rank0.jsonl").read_text().splitlines()
        for row in json.loads(line)[1:]
    ]
    assert sorted(rows) == list(range(TRAIN_ROWS)), "the epoch read every S3 row once"
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    validate = run_cli(["validate", *args, "--ckpt_path", str(ckpt)], tmp_path)
    assert "val_acc" in validate.stdout

    saved = next((tmp_path / "runs").rglob("config.yaml")).read_text()
    assert f"env:{SECRET_ENV}" in saved and s3["endpoint"] in saved, "creds are saved by reference"
    secret = s3["secret"].encode()
    assert _files_holding(tmp_path, secret) == []
    for proc in (fit, validate):
        assert secret not in (proc.stdout + proc.stderr).encode()


def test_credentials_from_the_standard_environment(
    s3: dict, run_config: Path, tmp_path: Path, run_cli
) -> None:
    """No creds in the config at all: Deep Lake reads AWS_* variables, endpoint included."""
    args = _args(s3, run_config, tmp_path)
    args[args.index(str(tmp_path / "s3.yaml"))] = str(run_config)  # drop the creds overlay
    env = {"AWS_ACCESS_KEY_ID": s3["env"][KEY_ENV], "AWS_SECRET_ACCESS_KEY": s3["secret"],
           "AWS_ENDPOINT_URL": s3["endpoint"], "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    proc = run_cli(["validate", *args], tmp_path, env=env)
    assert "val_acc" in proc.stdout
    assert s3["secret"] not in proc.stdout + proc.stderr
    assert _files_holding(tmp_path, s3["secret"].encode()) == []


def test_a_secret_given_by_value_is_refused(s3: dict, run_config: Path, tmp_path: Path, run_cli) -> None:
    args = _args(s3, run_config, tmp_path)
    proc = run_cli(["fit", *args, "--data.creds.aws_secret_access_key", s3["secret"]], tmp_path, returncode=2)
    assert "--data.creds.aws_secret_access_key is given by value" in proc.stderr
    assert "env:NAME" in proc.stderr
    assert s3["secret"] not in proc.stdout + proc.stderr
    assert _files_holding(tmp_path, s3["secret"].encode()) == []


def test_fit_through_a_faulty_link_reads_every_row_once(
    s3: dict, run_config: Path, tmp_path: Path, run_cli
) -> None:
    """A fifth of all requests to S3 fail (503 or a dropped connection), and half the reads of
    data chunks; 2 workers each read their own units. The run completes, each row once."""
    with FaultyProxy(s3["endpoint"], rate=0.2, data_rate=0.5, seed=3) as proxy:
        args = _args(s3, run_config, tmp_path, endpoint=proxy.url)
        log = ["--trainer.callbacks+=recorder.RowLog", "--trainer.callbacks.out_dir", str(tmp_path / "rows")]
        run_cli(["fit", *args, *log, "--trainer.max_epochs", "2", "--data.num_workers", "2"], tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "rows" / "rank0.jsonl").read_text().splitlines()]
    for epoch in range(2):
        rows = [row for step in steps[epoch * 8 : (epoch + 1) * 8] for row in step[1:]]
        assert sorted(rows) == list(range(TRAIN_ROWS)), f"epoch {epoch}: every row exactly once"
    assert len(steps) == 16
    print(f"faulty link: {proxy.faults} of {proxy.requests} requests failed, "
          f"{proxy.data_faults} of {proxy.data_requests} data chunk reads")  # fmt: skip
    assert proxy.data_faults >= 3, "data chunk reads must fail too, or the test tests little"


def test_a_permanent_storage_error_names_the_url(s3: dict, run_config: Path, tmp_path: Path, run_cli) -> None:
    with FaultyProxy(s3["endpoint"], rate=1.0, kinds=("403",)) as proxy:
        args = _args(s3, run_config, tmp_path, endpoint=proxy.url)
        started = time.monotonic()
        proc = run_cli(["validate", *args], tmp_path, returncode=2)
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("fashion_lake: error: cannot open Deep Lake dataset 's3://fashion/")
    assert "Access denied" in last and "check the credentials" in last
    assert time.monotonic() - started < 300


def test_storage_failing_mid_run_stops_with_the_url(s3: dict, run_config: Path, tmp_path: Path) -> None:
    """Every data read is denied once training runs: validation's first read fails, in one line.
    In a loader worker: the training process reads through the handle that setup opened, which
    already holds these few rows."""
    with FaultyProxy(s3["endpoint"], rate=0.0, kinds=("403",)) as proxy:
        args = _args(s3, run_config, tmp_path, endpoint=proxy.url)
        log = ["--trainer.callbacks+=recorder.RowLog", "--trainer.callbacks.out_dir", str(tmp_path / "rows")]
        tests = Path(__file__).parent  # and this checkout, as run_cli (conftest.py) does
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
        cmd = [
            sys.executable,
            "-m",
            "fashion_lake",
            "fit",
            *args,
            *log,
            "--trainer.num_sanity_val_steps",
            "0",
            "--data.num_workers",
            "1",
        ]
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started = tmp_path / "rows" / "rank0.jsonl"
        deadline = time.monotonic() + 300
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.data_rate = 1.0  # training has started: from now on the storage refuses every read
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"fashion_lake: error: reading rows 0..{VAL_ROWS - 1} of 's3://fashion/test' failed"
    ), last
    assert "Access denied" in last and proxy.data_faults > 0
