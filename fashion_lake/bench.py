"""Data-path benchmark: five loaders over the same lake, side by side, in one run.

    python -m fashion_lake.bench --url lakes/fashion-mnist-train

Each loader runs one warm-up epoch, then ``--epochs`` timed epochs; the table gives the
median samples/s. The last line holds the ratios the project tracks:
``ratio_vs_memory`` (our loader vs an in-memory TensorDataset), ``ratio_vs_naive`` (vs
``DataLoader(ds.pytorch(), shuffle=True)``) and ``aug_ratio_vs_seed`` (our augmented loader vs
the tutorial's per-sample PIL pipeline). The two per-row loaders are timed on their first
``--slow_batches`` batches per epoch (a rate, so comparable), to keep the run short.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from fashion_lake.data import DeepLakeDataModule
from fashion_lake.lake import open_lake
from fashion_lake.transforms import ColumnTransform, SeedTransform


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of these processes (Linux /proc), for the memory check."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def time_epochs(
    name: str,
    loader: DataLoader,
    epochs: int,
    consume: Callable[[dict], torch.Tensor],
    max_batches: int | None = None,
    set_epoch: Callable[[int], None] | None = None,
) -> tuple[float, int, int]:
    """Median samples/s over ``epochs`` timed epochs after one warm-up, and peak RSS growth in
    bytes (main process and workers) during the warm-up epoch (opening the dataset, filling
    caches) and during the timed epochs (relative to the end of the warm-up)."""
    me = os.getpid()
    base = rss_bytes([me])
    peaks, rates = [base, 0], []
    for epoch in tqdm(range(epochs + 1), desc=name, unit="epoch", leave=False):
        if set_epoch is not None:
            set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        for i, batch in enumerate(loader):
            seen += len(consume(batch))
            if i % 16 == 0:
                peaks[bool(epoch)] = max(peaks[bool(epoch)], rss_bytes([me, *_children(me)]))
            if max_batches is not None and i + 1 >= max_batches:
                break
        if epoch:  # epoch 0 warms caches, workers and allocators
            rates.append(seen / (time.perf_counter() - start))
        else:
            warm = rss_bytes([me, *_children(me)])
    return statistics.median(rates), peaks[0] - base, max(peaks[1] - warm, 0)


def main(
    url: str = "lakes/fashion-mnist-train",
    raw_dir: str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    epochs: int = 3,
    slow_batches: int = 40,
    seed: int = 0,
) -> dict[str, float]:
    """Benchmark the data path and print a table and the ratio line.

    Args:
        url: Training lake (built from raw_dir / $FASHION_LAKE_RAW_DIR if missing and local).
        raw_dir: Fashion-MNIST IDX folder, to build a missing lake.
        batch_size: Rows per batch for every loader.
        num_workers: DataLoader workers for every loader.
        epochs: Timed epochs per loader (after one warm-up epoch).
        slow_batches: Batches per epoch timed for the two per-row loaders.
        seed: Shuffle seed.
    """
    if epochs < 1 or slow_batches < 1:
        raise SystemExit("fashion_lake.bench: error: --epochs and --slow_batches must be >= 1")
    torch.manual_seed(seed)
    dm = DeepLakeDataModule(
        train_url=url, val_url=url, raw_dir=raw_dir, batch_size=batch_size, num_workers=num_workers,
        seed=seed, drop_last=False, rotation=0.0,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    rows = len(dm.datasets["train"])
    results: dict[str, tuple[float, int, int]] = {}

    def ours(rotation: float) -> Callable[[dict], torch.Tensor]:
        dm.batch_transform.degrees = rotation
        return lambda batch: dm.prepare_batch(batch, train=True)["images"]

    loader = dm.train_dataloader()
    set_epoch = loader.batch_sampler.sampler.set_epoch
    results["3 DeepLakeDataModule, no aug"] = time_epochs(
        "ours", loader, epochs, ours(0.0), set_epoch=set_epoch
    )
    results["4 DeepLakeDataModule, rotate"] = time_epochs(
        "ours+aug", loader, epochs, ours(20.0), set_epoch=set_epoch
    )
    del loader

    ds = open_lake(url)
    images = torch.from_numpy(np.asarray(ds["images"][0:rows])).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.asarray(ds["labels"][0:rows]).astype(np.int64))
    memory = DataLoader(
        TensorDataset(images, labels), batch_size=batch_size, shuffle=True, num_workers=num_workers
    )
    results["1 in-memory TensorDataset"] = time_epochs("memory", memory, epochs, lambda b: b[0])
    del memory, images, labels

    naive = DataLoader(ds.pytorch(), batch_size=batch_size, shuffle=True, num_workers=num_workers)
    results["2 naive ds.pytorch()"] = time_epochs("naive", naive, epochs, lambda b: b["images"], slow_batches)
    seed_rows = ds.pytorch(transform=ColumnTransform({"images": SeedTransform()}, ["images", "labels"]))
    seed_loader = DataLoader(seed_rows, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    results["5 seed per-sample PIL"] = time_epochs(
        "seed", seed_loader, epochs, lambda b: b["images"], slow_batches
    )

    print(f"\n{rows} rows from {url}, batch {batch_size}, {num_workers} workers, median of {epochs} epochs")
    print(f"{'loader':<32}{'samples/s':>12}{'RSS growth: warm-up':>22}{'timed epochs':>15}")
    for name in sorted(results):
        rate, first, steady = results[name]
        print(f"{name:<32}{rate:>12,.0f}{first / 2**20:>19.1f} MB{steady / 2**20:>12.1f} MB")
    rate = {name[0]: value[0] for name, value in results.items()}
    ratios = {
        "ratio_vs_memory": rate["3"] / rate["1"],
        "ratio_vs_naive": rate["3"] / rate["2"],
        "aug_ratio_vs_seed": rate["4"] / rate["5"],
    }
    print(" ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    return ratios


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
