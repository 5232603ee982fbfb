"""Read units: where a dataset's storage chunks start (the memory they may take is
``plan.py``'s, from ``host.memory_limit``).

Deep Lake fetches whole storage chunks (~8 MB each), so two processes reading rows of one chunk
both fetch it all. The reader's units are therefore the image column's chunks, read from
Deep Lake's commit log where this process can read it (local and S3 datasets holding appended
rows); elsewhere units are runs of rows of ``UNIT_BYTES`` each, the size Deep Lake fills its
chunks to, so most units overlap one or two chunks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

UNIT_BYTES = 8_000_000  # Deep Lake 4 closes a chunk once it holds this many bytes
LOG = "_deeplake_log"
# log entries that change no row of a column's chunks
NEUTRAL = {"commit", "createColumn", "setColumnMetadata2", "setMetadata2", "setId", "setCreatedTime",
           "setMinReader", "setMinWriter", "createBranch", "setDescription", "setColumnIndex"}  # fmt: skip


def byte_units(rows: int, row_bytes: float, unit_bytes: int = UNIT_BYTES) -> np.ndarray:
    """Starts of runs of ~``unit_bytes`` each (and ``rows`` at the end)."""
    per_unit = max(1, int(unit_bytes // max(row_bytes, 1.0)))
    return np.append(np.arange(0, rows, per_unit, dtype=np.int64), rows)


def chunk_units(log: LogFiles, column: str, version: str | None = None) -> np.ndarray | None:
    """Starts of ``column``'s storage chunks (and the row count at the end), from the commit log of
    a Deep Lake 4 dataset; None where the log holds anything but appended rows (deletes, updates,
    compaction) or cannot be read."""
    try:
        import lz4.block
    except ImportError:
        return None
    try:
        meta = [e for name in log.names("_meta") for e in _entries(name, log.read(name), lz4.block)]
        branch = next(e["createBranch"]["id"] for e in meta if "createBranch" in e)
        ids, counts = set(), []
        for name in log.names(branch):
            if version is not None and name.rsplit("/", 1)[-1].split(".")[0] > version:
                break
            for entry in _entries(name, log.read(name), lz4.block):
                ((kind, body),) = entry.items()
                if kind == "createColumn" and body["n"] == column:
                    ids.add(body["i"])
                elif kind == "addBlock":
                    if body["c"] in ids:
                        counts.extend(int(n) for n in body["d"]["n"])
                elif kind not in NEUTRAL:
                    return None
    except Exception:  # a log this reader does not know (or cannot fetch): runs of rows instead
        return None
    if not counts:
        return None
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _entries(name: str, data: bytes, block: Any) -> list[dict]:
    text = block.decompress(data) if name.endswith(".lz4") else data
    return [json.loads(line) for line in text.decode().splitlines() if line.strip()]


class LogFiles:
    """The files of a dataset's commit log (``_deeplake_log/<folder>/``), in name order."""

    def names(self, folder: str) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError


class LocalLog(LogFiles):
    def __init__(self, root: Path) -> None:
        self.root = root / LOG

    def names(self, folder: str) -> list[str]:
        return sorted(str(p) for p in (self.root / folder).glob("*.jsonl*"))

    def read(self, name: str) -> bytes:
        return Path(name).read_bytes()


class S3Log(LogFiles):
    """Through boto3 (where installed), with the dataset's ``endpoint_url``, keys and region."""

    def __init__(self, url: str, creds: dict[str, Any]) -> None:
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, f"{prefix.rstrip('/')}/{LOG}".lstrip("/")
        keys = {"endpoint_url": "endpoint_url", "aws_access_key_id": "aws_access_key_id",
                "aws_secret_access_key": "aws_secret_access_key", "aws_session_token": "aws_session_token",
                "aws_region": "region_name", "region": "region_name"}  # fmt: skip
        self.client = boto3.client("s3", **{keys[k]: v for k, v in creds.items() if k in keys})

    def names(self, folder: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{folder}/"
        )
        names = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        return sorted(n for n in names if ".jsonl" in n.rsplit("/", 1)[-1])

    def read(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=name)["Body"].read()


def log_files(url: str, creds: dict[str, Any]) -> LogFiles | None:
    """The commit log of the dataset at ``url`` where this process can read it: local datasets,
    and S3 through boto3 where installed; None elsewhere."""
    if url.startswith("s3://"):
        try:
            return S3Log(url, creds)
        except ImportError:
            return None
    if "://" not in url or url.startswith("file://"):
        return LocalLog(Path(url.removeprefix("file://")).expanduser())
    return None
