"""What this machine lets a process use: CPU cores and memory (its cgroup's limits). No torch."""

from __future__ import annotations

import os
from pathlib import Path


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def memory_limit(proc: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes this process may use: its cgroup's limit where one is set (``proc`` names its cgroups,
    mounted under ``root``), else physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    for limit_file in cgroup_limit_files(proc, root):
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (physical or 1 << 62):
            return int(text)
    return physical


def cgroup_limit_files(proc: Path, root: Path) -> list[Path]:
    """This process's cgroup memory limits, innermost first (v2 ``memory.max``, v1 ``limit_in_bytes``)."""
    files: list[Path] = []
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, where = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = base / where.lstrip("/")
        while True:
            files.append(here / name)
            if here == base or base not in here.parents:
                break
            here = here.parent
    return files
