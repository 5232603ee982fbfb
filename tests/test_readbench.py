"""The S3 read benchmark: its byte counter against known objects, and a tiny real run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from fashion_lake.tools.readbench import BUCKET, CountingProxy, main, moto_server, s3_client


def test_the_proxy_counts_get_response_bodies() -> None:
    body = os.urandom(123_457)
    with moto_server() as endpoint, CountingProxy(endpoint) as proxy:
        s3_client(endpoint).put_object(Bucket=BUCKET, Key="lake/blob", Body=body)  # straight to moto
        assert proxy.snapshot() == (0, 0)
        client = s3_client(proxy.url)
        assert client.get_object(Bucket=BUCKET, Key="lake/blob")["Body"].read() == body
        assert proxy.snapshot() == (1, len(body))
        part = client.get_object(Bucket=BUCKET, Key="lake/blob", Range="bytes=1000-1999")["Body"].read()
        assert part == body[1000:2000] and proxy.snapshot() == (2, len(body) + 1000)
        assert client.head_object(Bucket=BUCKET, Key="lake/blob")["ContentLength"] == len(body)
        assert proxy.snapshot() == (2, len(body) + 1000), "a HEAD is no GET"
        proxy.reset()
        assert proxy.snapshot() == (0, 0)


def test_the_proxy_holds_a_burst_of_connections_before_it_accepts_any() -> None:
    """A rank's first reads open many connections at once; those beyond the listen backlog would
    be dropped, and their clients would try again only a second later."""
    proxy = CountingProxy("http://127.0.0.1:9")  # listening, not accepting: its thread starts in ``with``
    burst = [socket.socket() for _ in range(32)]
    try:
        for conn in burst:
            conn.settimeout(0.5)  # a dropped connection waits a second for its retry
        connected = sum(conn.connect_ex(proxy.server_address) == 0 for conn in burst)
    finally:
        for conn in burst:
            conn.close()
        proxy.server_close()
    assert connected == len(burst)


def test_a_tiny_png_lake_read_by_one_and_two_ranks_twice_over(
    real_raw_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--raw_dir", str(real_raw_dir), "--rows", "2000", "--grid", "1x0,2x0", "--lakes", "png"]
    runs = main([*args, "--repeats", "2"])
    assert [run.name for run in runs] == ["png_1x0", "png_2x0"] * 2, "in rounds"
    for run in runs:
        (epoch_gets, epoch_bytes), (total_gets, total_bytes) = run.epoch, run.total
        assert run.lake.rows == 2000 and run.lake.stored > 0
        # a rank reads through the handle its setup opened, which may hold this one-chunk lake already
        assert total_gets > 0 and total_bytes >= run.lake.stored / 2, "the proxy saw the ranks' reads"
        assert epoch_bytes <= total_bytes and epoch_gets <= total_gets
        assert run.exactly_once and sum(run.rows) == 2000
        assert run.wall >= run.first_batch > 0
    assert runs[1].rows == runs[3].rows == [1000, 1000]
    out = capsys.readouterr().out
    for name, pair in (("1 x 0", runs[::2]), ("2 x 0", runs[1::2])):
        ratios = [run.first_batch / run.first_units for run in pair]
        summary = f"{name}: {np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        assert summary in out.split("median (range) of 2 runs: ")[1].splitlines()[0]
    most = [max(run.epoch[1] / run.lake.stored for run in pair) for pair in (runs[::2], runs[1::2])]
    assert out.splitlines()[-1] == f"reads: png_1x0={most[0]:.2f}, png_2x0={most[1]:.2f}"
