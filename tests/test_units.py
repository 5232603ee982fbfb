"""Read units and memory limits (units.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fashion_lake.data.units import byte_units
from fashion_lake.host import memory_limit


def test_byte_units_cover_the_rows_in_runs_of_the_unit_size() -> None:
    starts = byte_units(25_000, row_bytes=784.0, unit_bytes=8_000_000)
    assert starts[0] == 0 and starts[-1] == 25_000
    assert set(np.diff(starts)[:-1].tolist()) == {10_204}


@pytest.mark.parametrize("version", [1, 2])
def test_memory_limit_reads_the_innermost_cgroup_limit(tmp_path: Path, version: int) -> None:
    proc = tmp_path / "cgroup"
    if version == 1:
        proc.write_text("9:cpu:/\n4:memory:/jobs/job-7\n")
        job = tmp_path / "memory" / "jobs" / "job-7"
        name, unlimited = "memory.limit_in_bytes", "9223372036854771712"
    else:
        proc.write_text("0::/jobs/job-7\n")
        job = tmp_path / "jobs" / "job-7"
        name, unlimited = "memory.max", "max"
    job.mkdir(parents=True)
    (job / name).write_text(unlimited)
    physical = memory_limit(tmp_path / "none", tmp_path)
    assert memory_limit(proc, tmp_path) == physical  # no limit set anywhere: physical memory
    (job.parent / name).write_text(str(3 << 30))
    assert memory_limit(proc, tmp_path) == 3 << 30  # the enclosing cgroup's limit binds
    (job / name).write_text(str(1536 << 20))
    assert memory_limit(proc, tmp_path) == 1536 << 20
