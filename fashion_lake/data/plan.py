"""How a loader is sized: worker processes, the memory budget and the shuffle groups it holds,
steps per worker item, and the one line that says which data path is live. Plain arithmetic
over a dataset's facts: no Lightning.
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass

from fashion_lake.data.decode import host_decoder_name
from fashion_lake.data.handoff import ring_slots
from fashion_lake.data.reader import LakeDataset
from fashion_lake.errors import ConfigError
from fashion_lake.host import available_cores, memory_limit

# the most rows, decoded bytes and steps one worker item serves
GROUP_ROWS, GROUP_BYTES, GROUP_BATCHES = 2048, 4 << 20, 8
MAX_WORKERS = 8  # workers per device when unset: decoding scales over processes up to about this
MAX_GROUP_UNITS = 16  # read units per shuffle group, however large the budget
IN_FLIGHT_BYTES = 64 << 20  # decoded images in flight per worker, at most
SIZES = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30, "b": 1}


def parse_bytes(value: int | str | None) -> int | None:
    """``2GiB``, ``512MB``, ``1e9`` or a plain number of bytes; None stays None."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :] or "b"
    try:
        if unit not in SIZES:
            raise ValueError
        return int(float(number) * SIZES[unit])
    except ValueError:
        raise ConfigError(
            f"data.memory_budget must be a number of bytes or a size such as 2GiB or 512MB, not {value!r}."
        ) from None


def forked() -> bool:
    """Whether DataLoader workers start by fork here (the Linux default before Python 3.14)."""
    return multiprocessing.get_start_method() == "fork"


def workers_for(dataset: LakeDataset, configured: int | None, devices: int) -> int:
    """``configured``, or when unset: 0 for raw pixels (reads are memory copies, fastest in the
    training process), else the cores each device has, up to ``MAX_WORKERS`` (decoding is CPU-bound)."""
    if configured is not None:
        return configured
    if dataset.info.codec is None and dataset.sample_transform is None and dataset.crops is None:
        return 0
    return max(1, min(MAX_WORKERS, available_cores() // max(1, devices)))


def budget_for(configured: int | None, devices: int) -> int:
    """Bytes one rank's training loader may hold: ``configured``, else a quarter of what this
    process may use (its cgroup limit, else physical memory), shared by the machine's devices."""
    return configured if configured is not None else memory_limit() // (4 * max(1, devices))


@dataclass(frozen=True)
class Tasks:
    """What a worker hands over: ``group`` steps' parts per item, ``prefetch`` items in flight."""

    group: int = 1
    prefetch: int | None = None  # None: no workers

    def in_flight(self, workers: int, batch_bytes: int) -> int:
        """Bytes of decoded batches the workers may hold (each its ring of slots)."""
        return workers * ring_slots(self.prefetch) * self.group * batch_bytes if self.prefetch else 0


def tasks_for(dataset: LakeDataset, workers: int, batch_rows: int, batch_bytes: int) -> Tasks:
    """Each item a worker hands over costs the loader a fixed overhead, as much as decoding
    dozens of small jpeg rows (docs/data-path.md), so an item holds a worker's parts of up to
    ``GROUP_BATCHES`` steps, ``GROUP_ROWS`` rows and ``GROUP_BYTES``; up to 8 steps are in flight
    per worker, within ``IN_FLIGHT_BYTES`` of decoded images."""
    if not workers:
        return Tasks()
    batch_bytes = max(1, batch_bytes)
    group = 1
    if dataset.sample_transform is None and not dataset.decode_on_device:
        group = max(1, min(GROUP_BATCHES, GROUP_ROWS // batch_rows, GROUP_BYTES // batch_bytes))
    return Tasks(group, max(2, min(math.ceil(8 / group), IN_FLIGHT_BYTES // (group * batch_bytes))))


def group_units_for(budget: int, unit_bytes: float, partitions: int, in_flight: int) -> int:
    """Units per shuffle group: as many as the budget holds (two groups per partition, this one
    and the next, read ahead), after the ``in_flight`` bytes of batches, up to ``MAX_GROUP_UNITS``.
    Counted for all partitions, so it does not depend on the world size."""
    unit = max(1.0, unit_bytes)
    fits = int((budget - in_flight) // (2 * partitions * unit))
    if fits < 1:
        need = in_flight + 2 * partitions * unit
        raise ConfigError(
            f"data.memory_budget of {budget / 2**20:.0f} MiB cannot hold one batch: a training rank "
            f"needs ~{need / 2**20:.0f} MiB ({2 * partitions} read units of ~{unit / 2**20:.1f} "
            f"MiB and {in_flight / 2**20:.0f} MiB of batches in flight); raise --data.memory_budget, or "
            "lower --data.batch_size, --data.num_workers or --data.partitions."
        )
    return min(MAX_GROUP_UNITS, fits)


def live_path(
    url: str,
    dataset: LakeDataset,
    workers: int,
    unit_kind: str,
    partitions: int,
    group_units: int,
    budget: int,
) -> str:
    """One line naming the data path that is live, so that nothing falls back silently."""
    info = dataset.info
    if dataset.sample_transform is not None:
        reading = "rows one at a time through ds.pytorch and the per-sample transform"
    elif info.codec is None:
        reading = "raw pixels"
    elif dataset.decode_on_device:
        reading = f"{info.codec} decoded on the device"
    else:
        reading = f"{info.codec} decoded on the host ({host_decoder_name(info.codec, dataset.channels)})"
    crops = f", cropped to {'x'.join(map(str, dataset.crops.size))}" if dataset.crops else ""
    sharing = ""
    if workers:
        handoff = "shared-memory slots" if forked() and dataset.sample_transform is None else "pickled"
        reads = "each reads its run of every unit" if dataset.split_units else "each reads whole units"
        sharing = f" ({reads}; batches cross {handoff})" if workers > 1 else f" (batches cross {handoff})"
    return (
        f"Training data: {url!r}, {reading}{crops}; {workers} worker process{'' if workers == 1 else 'es'} "
        f"per device{sharing}; {len(dataset.units) - 1} read units ({unit_kind}, "
        f"~{dataset.unit_bytes() / 2**20:.1f} MiB each); {partitions} partitions, {group_units} units per "
        f"shuffle group; memory budget {budget / 2**30:.2f} GiB per device."
    )
