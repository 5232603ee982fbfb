"""Scale benchmark: bytes an epoch reads from S3 per world size and worker count, the memory of a
photo epoch under a cap, time to the first batch, and the epoch order's memory and shuffle.

    python -m fashion_lake.tools.readbench [--grid 1x0,1x2,2x2,4x1,8x1] [--photos N] [--latency_ms MS]
        [--repeats N] [--photo_gb 1.6 --cap 1.5GiB] [--rows N]

A ``moto_server`` on loopback plays S3, behind a byte-counting reverse proxy (``CountingProxy``,
a thread of this process) that Deep Lake talks to as its endpoint. The lakes are written with
plain ``deeplake`` straight to moto: ``png`` (the Fashion-MNIST train rows from ``--raw_dir``,
png-compressed, one append and one commit), ``raw`` (the same rows as an uncompressed uint8
array column) and, with ``--photos N``, ``jpeg`` (N synthetic 256x256 RGB photos, read at
``image_size=64``). Stored bytes are the sizes of the objects under each lake's prefix.

For each lake and each ``W x K`` of the grid (W processes, K loader workers each; by default
W = 1, 2, 4, 8 with K = 0, 2, 4, and 4 x 1 and 8 x 1) every rank
is a fresh process (with cores / W torch threads, as Lightning's launchers give it) that
builds a ``DeepLakeDataModule`` through its public API only (``dm.dist = DistContext(rank,
W)``, global batch ``--global_batch`` over the W ranks, ``drop_last=False`` so that an epoch
covers every row), calls ``setup("fit")`` and ``train_dataloader()``, waits until the
loader's workers (started when it is built, as a Trainer builds it before its sanity check)
have opened the lake, reports ready and waits; once all are ready the counter is read and all
ranks are released together to read one training epoch of their shard. Columns: ``epoch
bytes / stored`` (GET response bodies from the release to the last rank's exit, and the MB),
``with setup`` (the same from the first process's start), ``GETs`` (epoch + setup), ``workers
open s`` (from the loader's build until its workers have opened the lake, the slowest rank's:
what a Trainer's sanity check hides; without workers the rank's process reads through the
handle its setup opened), ``first batch s / units s`` (the slowest rank's first batch, from the
release, and the time fresh processes, one per rank and all at once, take to open the lake and
read the read units of their rank's first batch, with Deep Lake's async reads: what any reader
of those rows waits for while the other ranks read theirs; the slowest), ``wall s`` (release
to the last rank's last batch), ``exactly once`` (the ranks' ``batch['index']`` together cover
every row once) and rows per rank.

With ``--repeats N`` the grid is measured N times over, in rounds (every run of the grid, then
again), a row per run; then, per ``W x K``, the median of the N first batches over the bare
reads measured right after each (paired, so that the machine's drift cancels) and their range.
One run's first batch is a single sample on a shared machine, and so is its bare read.

``--photo_gb G`` adds one epoch of a local lake of G GB of ~41 KB jpeg photos, read with the
data module's defaults at ``image_size`` 64 in a fresh process inside a new memory cgroup of
``--cap`` bytes (where this process may make one; else uncapped, and it says so): its exit
status, OOM kills, whether every row came once, and the peak RSS of its process tree. Then the
epoch order's memory at 100M rows, and its shuffle quality against the previous default order
(blocks of 1,024 rows in windows of 16,384) on class-sorted layouts. The last line lists
``LAKE_WxK=`` epoch bytes / stored for every ``W x K`` (the most of its runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import numpy as np

from fashion_lake.errors import ConfigError, DatasetError, OneLineErrors, run_command
from fashion_lake.tools import s3
from fashion_lake.tools.s3 import ForwardingProxy

BUCKET = "readbench"
KEY_ENV, SECRET_ENV = "FASHION_LAKE_READBENCH_KEY_ID", "FASHION_LAKE_READBENCH_SECRET"
COLUMNS = (
    "lake, W x K, epoch bytes / stored, with setup, GETs, workers open s, first batch s / units s, "
    "wall s, exactly once, rows/rank"
)
READY_S = 300  # seconds a rank's loader may take to open the lake before the bench gives up
EPOCHS = 20  # epochs whose reads the order predicts (each permutes the units anew)
# world sizes 1, 2, 4 and 8 with 0, 2 and 4 workers a rank, and 4 x 1 and 8 x 1 (one reading
# process a rank, as without workers, but in a worker)
DEFAULT_GRID = sorted([(w, k) for w in (1, 2, 4, 8) for k in (0, 2, 4)] + [(4, 1), (8, 1)])
# One rank in a fresh process; protocol lines go to the real stdout, everything else to stderr.
_RANK = "import sys; from fashion_lake.tools.readbench import run_rank; run_rank(sys.argv[1])"


class CountingProxy(ForwardingProxy):
    """Forwards HTTP to ``upstream`` (S3) while in a ``with``, counting GETs and their response
    body bytes (``snapshot()``, ``reset()``); ``latency_ms`` delays each request."""

    def __init__(self, upstream: str, latency_ms: float = 0.0) -> None:
        super().__init__(upstream)
        self.latency = latency_ms / 1000
        self.gets = self.get_bytes = 0

    def snapshot(self) -> tuple[int, int]:
        """(GET requests, GET response body bytes) so far."""
        with self.lock:
            return self.gets, self.get_bytes

    def reset(self) -> None:
        with self.lock:
            self.gets = self.get_bytes = 0

    def intercept(self, request: object, method: str, path: str) -> bool:
        time.sleep(self.latency)
        return False

    def forwarded(self, method: str, path: str, status: int, body: bytes) -> None:
        if method == "GET":
            with self.lock:
                self.gets += 1
                self.get_bytes += len(body)


@contextmanager
def moto_server() -> Iterator[str]:
    """``moto_server`` on a free loopback port, with an empty bucket ``BUCKET``: its endpoint URL."""
    with s3.moto_server() as endpoint:
        os.environ.setdefault(KEY_ENV, "AKIAREADBENCH")
        os.environ.setdefault(SECRET_ENV, "rb-" + secrets.token_hex(20))
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint


def s3_client(endpoint: str) -> Any:
    import boto3

    keys = {"aws_access_key_id": os.environ[KEY_ENV], "aws_secret_access_key": os.environ[SECRET_ENV]}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)


def creds_for(endpoint: str) -> dict[str, str]:
    """Deep Lake creds for ``endpoint``, secrets by ``env:`` reference."""
    keys = {"aws_access_key_id": f"env:{KEY_ENV}", "aws_secret_access_key": f"env:{SECRET_ENV}"}
    return {"endpoint_url": endpoint, "aws_region": "us-east-1", **keys}


def stored_bytes(endpoint: str, prefix: str) -> tuple[int, int]:
    """(bytes, objects) under ``s3://BUCKET/prefix/``."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    sizes = [obj["Size"] for page in pages for obj in page.get("Contents", [])]
    return sum(sizes), len(sizes)


def photos(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 256x256 RGB photo-like images (a random colour gradient plus noise), 10 classes."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    images = np.empty((count, 256, 256, 3), np.uint8)
    for i in range(count):
        a, b = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        field = a + (b - a) * (ramp[:, None, None] + ramp[None, :, None]) / 2
        images[i] = np.clip(field + rng.normal(0, 32, field.shape), 0, 255).astype(np.uint8)
    return images, (np.arange(count) % 10).astype(np.int32)


def write_lake(url: str, creds: dict[str, str], kind: str, images: np.ndarray, labels: np.ndarray) -> None:
    """A lake as a user writes one with plain deeplake: one append, one commit."""
    import deeplake

    from fashion_lake.ingest.write import FASHION_MNIST_CLASSES
    from fashion_lake.lake import storage_args

    ds = deeplake.create(url, **storage_args(creds))
    if kind == "raw":
        ds.add_column("images", deeplake.types.Array("uint8", 3))
    else:
        ds.add_column("images", deeplake.types.Image(dtype="uint8", sample_compression=kind))
    ds.add_column("labels", deeplake.types.ClassLabel("int32"))
    names = FASHION_MNIST_CLASSES if kind != "jpeg" else [f"class{i}" for i in range(10)]
    ds["labels"].metadata["class_names"] = list(names)
    ds.append({"images": images, "labels": labels.astype(np.int32)})
    ds.commit()


def run_rank(spec_json: str) -> None:
    """One rank (in its own process): set up, report ready, wait for ``go``, read one epoch."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to stderr
    spec = json.loads(spec_json)
    from fashion_lake.data.module import DeepLakeDataModule
    from fashion_lake.data.order import DistContext

    dm = DeepLakeDataModule(train_url=spec["url"], val_url=spec["url"], **spec["options"])
    dm.dist = DistContext(spec["rank"], spec["world"])
    dm.setup("fit")
    built = time.perf_counter()
    loader = dm.train_dataloader()
    while not loader.ready():  # the workers it started
        if time.perf_counter() - built > READY_S:
            raise DatasetError(f"the training loader's workers did not open {spec['url']} in {READY_S} s")
        time.sleep(0.01)
    opened = time.perf_counter() - built
    order = loader.order_of(0)
    starts = order.unit_starts
    _, rows = order.batch(0, order.owned(dm.dist))
    units = np.unique(np.searchsorted(starts, rows, side="right") - 1).tolist()
    spans = [(int(starts[u]), int(starts[u + 1])) for u in units]  # what the first batch must read
    epochs = range(EPOCHS if spec["rank"] == 0 else 0)  # the same for every rank: rank 0 says it
    orders = [loader.order_of(epoch) for epoch in epochs]
    touched = [touched_rows(order, spec["world"]) for order in orders]
    largest = [largest_share(order, spec["world"]) for order in orders]
    ready = {"spans": spans, "opened": opened, "touched": touched, "largest": largest}
    print(json.dumps(ready), file=protocol, flush=True)
    if not sys.stdin.readline():  # the bench is gone
        return
    start, first, seen = time.perf_counter(), None, [np.empty(0, np.int64)]
    for batch in loader:
        first = time.perf_counter() - start if first is None else first
        seen.append(batch["index"].numpy().astype(np.int64))
    np.save(spec["out"], np.concatenate(seen))
    print(json.dumps({"first": first, "rows": sum(map(len, seen))}), file=protocol, flush=True)


def touched_rows(order: Any, world: int) -> float:
    """Rows of the units each of ``world`` ranks reads in ``order``'s epoch, over the rows: the
    epoch's reads / stored that the order predicts (by rows, not bytes; workers add nothing
    on remote storage)."""
    sizes = np.diff(order.unit_starts)
    ranks = [order.readers(order.owned_by(rank, world), 1, split=False) for rank in range(world)]
    return sum(int(sizes[readers.dealt >= 0].sum()) for readers in ranks) / order.rows


def largest_share(order: Any, world: int) -> float:
    """The largest of ``world`` ranks' rows in ``order``'s epoch over an even share: every step
    waits for the rank with the most rows."""
    rows = [int(order.lengths[order.owned_by(rank, world)].sum()) for rank in range(world)]
    return max(rows) * world / order.rows


_UNITS = """
import json, sys, time
import deeplake
from fashion_lake.lake import storage_args
url, creds, spans, encoded = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4] == "1"
started = time.perf_counter()  # as the ranks' clocks: from a process that has imported what it needs
ds = deeplake.open_read_only(url, **storage_args(creds))
images, labels = ds["images"], ds["labels"]
get = images.get_bytes_async if encoded else images.get_async
reads = [(get(slice(*s)), labels.get_async(slice(*s))) for s in spans]
[(a.result(), b.result()) for a, b in reads]
print(time.perf_counter() - started)
"""


def units_read(lake: Lake, creds: dict[str, str], spans: list[list[list[int]]], env: dict[str, str]) -> float:
    """Seconds until fresh processes, one per rank and all at once, have each opened ``lake`` and
    read the row spans (whole read units) of that rank's first batch, concurrently with Deep Lake's
    async reads: the least any reader of those rows waits, while the other ranks read theirs
    from the same storage (the slowest rank's)."""
    lake_args, encoded = [lake.url, json.dumps(creds)], "0" if lake.name == "raw" else "1"
    cmds = [[sys.executable, "-c", _UNITS, *lake_args, json.dumps(mine), encoded] for mine in spans]
    procs = [subprocess.Popen(cmd, stdout=PIPE, stderr=PIPE, text=True, env=env) for cmd in cmds]
    seconds = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise DatasetError(f"reading the first units of {lake.url} failed: {err.strip()[-300:]}")
        seconds.append(float(out.strip().splitlines()[-1]))
    return max(seconds)


@dataclass
class Lake:
    name: str
    url: str
    rows: int
    stored: int  # bytes


@dataclass
class Run:
    lake: Lake
    world: int
    workers: int
    epoch: tuple[int, int]  # (GETs, bytes) from the release to the end
    total: tuple[int, int]  # the same from the first rank's start ("with setup")
    workers_open: float  # seconds from the loader's build until its workers opened the lake (slowest rank)
    first_batch: float  # seconds, the slowest rank's
    first_units: float  # seconds for fresh processes to open the lake and read each rank's first units
    touched: list[float]  # the reads / stored that the order predicts for epochs 0, 1, ... (``touched_rows``)
    largest: list[float]  # the largest rank share in those epochs (``largest_share``)
    wall: float
    rows: list[int]  # per rank
    exactly_once: bool

    @property
    def name(self) -> str:
        return f"{self.lake.name}_{self.world}x{self.workers}"

    def row(self) -> str:
        ratios = [f"{n / self.lake.stored:.2f} ({n / 1e6:.1f} MB)" for n in (self.epoch[1], self.total[1])]
        cells = [
            self.lake.name,
            f"{self.world} x {self.workers}",
            *ratios,
            f"{self.epoch[0]} + {self.total[0] - self.epoch[0]}",
            f"{self.workers_open:.2f}" if self.workers else "-",
            f"{self.first_batch:.2f} / {self.first_units:.2f}",
            f"{self.wall:.1f}",
            "yes" if self.exactly_once else "no",
            "/".join(map(str, self.rows)),
        ]
        return table_row(cells)


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _protocol_line(proc: subprocess.Popen, rank: int, err: Path) -> str:
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.wait()
        tail = err.read_text(errors="replace").strip().splitlines()[-15:]
        raise DatasetError(f"rank {rank} exited with status {proc.returncode}: " + " | ".join(tail))
    return line.strip()


def measure(
    lake: Lake, world: int, workers: int, proxy: CountingProxy, args: argparse.Namespace, work: Path
) -> Run:
    """One epoch over ``lake`` by ``world`` fresh rank processes with ``workers`` loader workers each."""
    path = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
    )
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": path}
    # each rank's torch threads, as Lightning's launchers set them (torchrun sets 1): without it
    # the ranks' thread pools spin against each other on the shared cores
    threads = max(1, len(os.sched_getaffinity(0)) // world)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    options = {"num_workers": workers, "creds": creds_for(proxy.url), "global_batch_size": args.global_batch}
    options.update(drop_last=False, image_size=64 if lake.name == "jpeg" else None)
    stem = work / f"{lake.name}-{world}x{workers}-rank"
    procs, errs = [], [Path(f"{stem}{rank}.log") for rank in range(world)]
    start = proxy.snapshot()
    for rank in range(world):
        spec = {"url": lake.url, "options": options, "rank": rank, "world": world, "out": f"{stem}{rank}.npy"}
        with errs[rank].open("w") as err:
            cmd = [sys.executable, "-c", _RANK, json.dumps(spec)]
            procs.append(subprocess.Popen(cmd, stdin=PIPE, stdout=PIPE, stderr=err, text=True, env=env))
    watchdog = threading.Timer(args.timeout, lambda: [proc.kill() for proc in procs])
    watchdog.start()
    try:
        # set up, loader built: the row spans of the units its first batch reads
        ready_lines = [json.loads(_protocol_line(p, rank, errs[rank])) for rank, p in enumerate(procs)]
        spans = [line["spans"] for line in ready_lines]
        ready, released = proxy.snapshot(), time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        reports = [json.loads(_protocol_line(proc, rank, errs[rank])) for rank, proc in enumerate(procs)]
        wall = time.perf_counter() - released
        for rank, proc in enumerate(procs):
            if proc.wait() != 0:
                _protocol_line(proc, rank, errs[rank])
    finally:
        watchdog.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    end = proxy.snapshot()
    seen = np.sort(np.concatenate([np.load(f"{stem}{rank}.npy") for rank in range(world)]))
    epoch, total = (end[0] - ready[0], end[1] - ready[1]), (end[0] - start[0], end[1] - start[1])
    slowest = max(range(world), key=lambda rank: reports[rank]["first"] or 0.0)
    first = reports[slowest]["first"] or 0.0
    units = units_read(lake, options["creds"], spans, env)
    once = bool(np.array_equal(seen, np.arange(lake.rows)))
    rows = [report["rows"] for report in reports]
    opened = max(line["opened"] for line in ready_lines)
    touched, largest = ready_lines[0]["touched"], ready_lines[0]["largest"]
    return Run(lake, world, workers, epoch, total, opened, first, units, touched, largest, wall, rows, once)


# ------------------------------------------------------------------ a photo epoch under a memory cap
_EPOCH = """
import json, sys, time
import numpy as np
from fashion_lake.data.module import DeepLakeDataModule
url, out = sys.argv[1], sys.argv[2]
dm = DeepLakeDataModule(train_url=url, val_url=url, image_size=64, drop_last=False)
started, first, seen = time.perf_counter(), None, []
for batch in dm.train_dataloader():
    first = time.perf_counter() - started if first is None else first
    seen.append(batch["index"].numpy())
np.save(out, np.concatenate(seen))
print(json.dumps({"first": first, "seconds": time.perf_counter() - started}), flush=True)
"""


def write_photo_lake(url: str, gigabytes: float, row_kb: float = 41.0, distinct: int = 300) -> int:
    """A local jpeg lake of ~``gigabytes`` of 256x256 photos of ~``row_kb`` KB (``distinct``
    encodings, cycled), written with plain deeplake in appends of 2,000 rows; its row count."""
    import io

    import deeplake
    from PIL import Image

    rng, encoded = np.random.default_rng(0), []
    ramp = np.linspace(0, 255, 256, dtype=np.float32)
    for i in range(distinct):
        field = (ramp[:, None, None] * (i % 3 + 1) + ramp[None, :, None] * (i % 5 + 1)) % 256
        pixels = np.clip(field + rng.normal(0, 36, (256, 256, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
        encoded.append(buffer.getvalue())
    rows = int(gigabytes * 1e9 / np.mean([len(e) for e in encoded]))
    ds = deeplake.create(url)
    ds.add_column("images", deeplake.types.Image(dtype="uint8", sample_compression="jpeg"))
    ds.add_column("labels", deeplake.types.ClassLabel("int32"))
    ds["labels"].metadata["class_names"] = [f"class{i}" for i in range(10)]
    for start in range(0, rows, 2000):
        stop = min(rows, start + 2000)
        ds.append({"images": [encoded[i % distinct] for i in range(start, stop)],
                   "labels": (np.arange(start, stop) * 10 // rows).astype(np.int32)})  # fmt: skip
    ds.commit()
    return rows


def memory_cgroup(limit: int) -> Path | None:
    """A new memory cgroup (v1 or v2) limited to ``limit`` bytes, under this process's own; None
    where this process may not make one."""
    from fashion_lake.host import cgroup_limit_files

    for limit_file in cgroup_limit_files(Path("/proc/self/cgroup"), Path("/sys/fs/cgroup")):
        group = limit_file.parent / f"fashion-lake-bench-{os.getpid()}"
        try:
            group.mkdir()
            (group / limit_file.name).write_text(str(limit))
            return group
        except OSError:
            if group.exists():
                group.rmdir()
    return None


def photo_epoch(gigabytes: float, cap: int, work: Path) -> str:
    """One epoch of a photo lake (the data module's defaults, ``image_size`` 64) in a fresh process
    under a ``cap``-byte memory cgroup: peak memory of its process tree (PSS: pages shared by the
    forked workers counted once), OOM kills, every row once."""
    from fashion_lake.tools.bench import _tree, rollup_bytes

    url, started = str(work / "photos"), time.perf_counter()
    rows = write_photo_lake(url, gigabytes)
    stored = sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file())
    written = time.perf_counter() - started
    group = memory_cgroup(cap)
    procs = (group / "cgroup.procs") if group is not None else None
    out = work / "photo-rows.npy"
    cmd = [sys.executable, "-c", _EPOCH, url, str(out)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    peak = 0
    try:
        enter = (lambda: procs.write_text(str(os.getpid()))) if procs is not None else None  # noqa: E731
        proc = subprocess.Popen(
            cmd, stdout=PIPE, stderr=subprocess.DEVNULL, text=True, env=env, preexec_fn=enter
        )
        while proc.poll() is None:
            peak = max(peak, rollup_bytes(_tree(proc.pid), ("Pss",))["Pss"])
            time.sleep(0.1)
        report = json.loads(proc.stdout.read() or "{}") if proc.returncode == 0 else {}  # type: ignore[union-attr]
        kills = _oom_kills(group) if group is not None else 0
        charged = _peak_charge(group) if group is not None else 0
    finally:
        if group is not None:
            group.rmdir()
    once = proc.returncode == 0 and bool(np.array_equal(np.sort(np.load(out)), np.arange(rows)))
    where = (
        f"under a {cap / 2**30:.2f} GiB cgroup" if group is not None else "uncapped (no cgroup could be made)"
    )
    return (
        f"photo epoch {where}: {rows:,} jpeg rows, {stored / 1e9:.2f} GB stored (written in "
        f"{written:.0f} s); "
        f"exit {proc.returncode}, OOM kills {kills}, every row once: {'yes' if once else 'no'}; peak PSS of "
        f"the process tree {peak / 2**30:.2f} GiB (the cgroup's peak charge, page cache included: "
        f"{charged / 2**30:.2f} GiB); first batch {report.get('first', float('nan')):.1f} s, "
        f"epoch {report.get('seconds', float('nan')):.0f} s"
    )


def _peak_charge(group: Path) -> int:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int((group / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return 0


def _oom_kills(group: Path) -> int:
    for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
        try:
            for line in (group / name).read_text().splitlines():
                if line.startswith(key + " "):
                    return int(line.split()[1])
        except OSError:
            continue
    return 0


# ------------------------------------------------------------------ the order: memory and shuffle
def order_memory(rows: int = 100_000_000, unit_rows: int = 8_000, global_batch: int = 1024) -> str:
    """Peak memory (tracemalloc) and time of the epoch order over ``rows`` rows, for 4 batches."""
    import tracemalloc

    from fashion_lake.data.order import TrainOrder

    units = np.append(np.arange(0, rows, unit_rows, dtype=np.int64), rows)
    tracemalloc.start()
    started = time.perf_counter()
    order = TrainOrder(units, global_batch, seed=0, epoch=3, partitions=8, group_units=16)
    for step in (0, 1, order.steps // 2, order.steps - 1):
        order.batch(step, order.owned_by(0, 8))
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (
        f"order at {rows:,} rows ({len(units) - 1:,} units of {unit_rows:,}), one rank of 8: peak "
        f"{peak / 2**20:.1f} MiB, {seconds:.2f} s for the plan and 4 batches (the old permutation: "
        f"{8 * rows / 2**30:.2f} GiB per rank per epoch)"
    )


def block_shuffle(n: int, seed: int, epoch: int, block_size: int = 1024, window: int = 16384) -> np.ndarray:
    """The previous default order (blocks of 1,024 rows, windows of 16,384), for comparison."""
    rng = np.random.default_rng([seed, epoch])
    blocks = rng.permutation(-(-n // block_size))
    per = window // block_size
    parts = [
        rng.permutation(
            np.concatenate([np.arange(b * block_size, min((b + 1) * block_size, n)) for b in chunk])
        )
        for chunk in (blocks[i : i + per] for i in range(0, len(blocks), per))
    ]
    return np.concatenate(parts)


def shuffle_quality(
    rows: int, classes: int, unit_rows: int, global_batch: int = 256, batches: int = 200
) -> str:
    """On a class-sorted layout (an ImageFolder ingest): mean label entropy of a global batch
    relative to a uniform shuffle's, and read units per batch, for the old and the new order."""
    from fashion_lake.data.order import TrainOrder

    labels = np.arange(rows) * classes // rows
    units = np.append(np.arange(0, rows, unit_rows), rows)

    def measure(picked: list[np.ndarray]) -> tuple[float, float]:
        entropy = []
        for batch in picked:
            p = np.bincount(labels[batch], minlength=classes) / len(batch)
            entropy.append(-(p[p > 0] * np.log(p[p > 0])).sum())
        spread = [len(np.unique(np.searchsorted(units, b, side="right"))) for b in picked]
        return float(np.mean(entropy)), float(np.mean(spread))

    rng = np.random.default_rng(0)
    uniform, _ = measure([rng.choice(rows, global_batch, replace=False) for _ in range(batches)])
    old = block_shuffle(rows, 0, 0)
    steps = np.linspace(0, rows // global_batch - 1, batches).astype(int)
    cells = [f"{rows:,} rows, {classes} classes, units of {unit_rows:,} rows"]
    h, u = measure([old[g * global_batch : (g + 1) * global_batch] for g in steps])
    cells.append(f"old {h / uniform:.2f} ({u:.0f} units)")
    for group in (4, 16):
        order = TrainOrder(units, global_batch, partitions=8, group_units=group)
        h, u = measure([order.batch(int(g), range(8))[1] for g in steps])
        cells.append(f"new, groups of {group}: {h / uniform:.2f} ({u:.0f} units)")
    return table_row(cells)


def parse_grid(text: str, global_batch: int) -> list[tuple[int, int]]:
    grid = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            world, workers = (int(n) for n in item.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--grid: {item!r} is not WxK (processes x workers), e.g. 2x2.") from None
        if world < 1 or workers < 0 or global_batch % world:
            raise ConfigError(
                f"--grid: {item!r} needs W >= 1 dividing --global_batch {global_batch}, K >= 0."
            )
        grid.append((world, workers))
    if not grid:
        raise ConfigError("--grid names no runs; e.g. --grid 1x0,2x2.")
    return grid


def parser() -> argparse.ArgumentParser:
    class Parser(OneLineErrors, argparse.ArgumentParser):
        program = "fashion_lake.tools.readbench"

    p = Parser(prog="python -m fashion_lake.tools.readbench", description=__doc__.split("\n")[0])
    raw_dir = os.environ.get("FASHION_LAKE_RAW_DIR", "/work/shared/fashion-mnist")
    p.add_argument("--raw_dir", default=raw_dir, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--grid", default=",".join(f"{w}x{k}" for w, k in DEFAULT_GRID), help="runs: WxK,...")
    p.add_argument("--lakes", default="png,raw", help="lakes to read: png, raw (and jpeg with --photos)")
    p.add_argument("--rows", type=int, default=None, help="the first N Fashion-MNIST rows (default: all)")
    p.add_argument("--photos", type=int, default=0, help="also a jpeg lake of N synthetic 256x256 photos")
    p.add_argument("--global_batch", type=int, default=256, help="rows per step over all ranks")
    p.add_argument("--latency_ms", type=float, default=0.0, help="delay each request by this much")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take")
    p.add_argument("--repeats", type=int, default=1, help="measure the grid this many times over")
    p.add_argument(
        "--photo_gb", type=float, default=0.0, help="also one epoch of a local photo lake this big"
    )
    p.add_argument("--cap", default="1.5GiB", help="the memory cgroup limit of that photo epoch")
    return p


def main(argv: list[str] | None = None) -> list[Run]:
    from fashion_lake.ingest.write import load_fashion_mnist

    args = parser().parse_args(argv)
    grid = parse_grid(args.grid, args.global_batch)
    names = [name.strip() for name in args.lakes.split(",") if name.strip()]
    names += ["jpeg"] if args.photos and "jpeg" not in names else []
    if unknown := sorted(set(names) - {"png", "raw", "jpeg"}):
        raise ConfigError(f"--lakes: unknown {unknown}; choose from png, raw, jpeg.")
    if ("jpeg" in names and args.photos < 1) or (args.rows is not None and args.rows < 1):
        raise ConfigError("--rows and --photos (needed by --lakes jpeg) must be 1 or more.")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be 1 or more, not {args.repeats}.")
    from fashion_lake.data.plan import parse_bytes

    cap = parse_bytes(args.cap)
    images, labels, _ = load_fashion_mnist(args.raw_dir, "train")
    images, labels = images[: args.rows], labels[: args.rows]
    runs: list[Run] = []
    with (
        moto_server() as endpoint,
        CountingProxy(endpoint, args.latency_ms) as proxy,
        tempfile.TemporaryDirectory(prefix="readbench-") as tmp,
    ):
        for name in names:
            data = photos(args.photos) if name == "jpeg" else (images, labels)
            started, url = time.perf_counter(), f"s3://{BUCKET}/{name}"
            write_lake(url, creds_for(endpoint), name, *data)
            stored, objects = stored_bytes(endpoint, name)
            lake = Lake(name, url, len(data[1]), stored)
            unit = unit_read(endpoint, proxy.url, name)
            print(
                f"\n{name}: {lake.rows} rows, {stored / 1e6:.1f} MB in {objects} objects, written in "
                f"{time.perf_counter() - started:.0f} s; global batch {args.global_batch}, latency "
                f"{args.latency_ms:g} ms; reading its largest object (a chunk) takes {unit:.2f} s\n",
                table_row(COLUMNS.split(", ")),
                table_row(["---"] * 10),
                sep="\n",
            )
            for _, (world, workers) in itertools.product(range(args.repeats), grid):
                runs.append(measure(lake, world, workers, proxy, args, Path(tmp)))
                print(runs[-1].row(), flush=True)
            if args.repeats > 1:
                print(first_batches([run for run in runs if run.lake is lake]))
        if args.photo_gb > 0:
            print("\n" + photo_epoch(args.photo_gb, cap, Path(tmp)))
    print("\n" + order_memory())
    print("\nshuffle (label entropy of a global batch / a uniform shuffle's, units per batch):")
    print(shuffle_quality(60_000, 10, 10_204))
    print(shuffle_quality(1_281_167, 1000, 61))
    print(f"\nwhat the order predicts for epochs 0-{EPOCHS - 1} (mean, min-max): reads / stored (rows of the "
          "units each rank touches), and the largest rank's rows over an even share:")  # fmt: skip
    by_name = _by_name(runs)
    once = [same[0] for same in by_name.values()]  # the first round's
    for run in once:
        if run.workers == min(r.workers for r in once if r.lake is run.lake and r.world == run.world):
            reads, largest = (
                f"{np.mean(v):.2f}, {min(v):.2f}-{max(v):.2f}" for v in (run.touched, run.largest)
            )
            print(f"  {run.lake.name} {run.world} ranks: reads {reads}; largest share {largest}")
    most = {name: max(run.epoch[1] / run.lake.stored for run in same) for name, same in by_name.items()}
    print("\nreads: " + ", ".join(f"{name}={ratio:.2f}" for name, ratio in most.items()))
    return runs


def _by_name(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs of each ``LAKE_WxK``, in the order of their first runs."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.name, []).append(run)
    return out


def first_batches(runs: list[Run]) -> str:
    """Per ``W x K`` of ``runs`` (one lake's): the median and range of first batch / bare reads."""
    groups, cells = list(_by_name(runs).values()), []
    for same in groups:
        r = [run.first_batch / run.first_units for run in same]
        cells.append(f"{same[0].world} x {same[0].workers}: {np.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
    count = max(map(len, groups))
    return f"first batch / bare reads, median (range) of {count} runs: " + ", ".join(cells)


def unit_read(endpoint: str, proxy: str, prefix: str) -> float:
    """Seconds to GET the largest object under ``prefix`` through the proxy (its latency included)."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    key = max((obj for page in pages for obj in page.get("Contents", [])), key=lambda obj: obj["Size"])["Key"]
    started = time.perf_counter()
    s3_client(proxy).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return time.perf_counter() - started


def cli(argv: list[str] | None = None) -> None:
    run_command("fashion_lake.tools.readbench", lambda: main(argv))


if __name__ == "__main__":
    cli()
