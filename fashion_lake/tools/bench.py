"""Data-path benchmark: every loader and storage format over the same rows, side by side, in one run.

    python -m fashion_lake.tools.bench --url lakes/fashion-mnist-train

From the raw lake at ``--url`` (our ingest: uncompressed uint8) the benchmark writes png and
jpeg copies of the same rows with plain ``deeplake`` (``types.Image(sample_compression=...)``
and ``ClassLabel``, as a user would), then times, each for one warm-up and ``--epochs`` epochs
or more, 3 s of them at least (median samples/s of what each loader yields; memory is sampled
in the warm-up and in one more epoch after the timed ones, never while timing):

1. an in-memory ``TensorDataset`` (the baseline), 2. the naive ``ds.pytorch()`` loader,
3. the data module on the raw lake, 4. the same plus the float conversion, normalisation and
rotation that run on the device in training, 5. the tutorial's per-sample PIL pipeline
(rotation, ``ToTensor``, ``Normalize``), 6./7. the data module on the png/jpeg lakes (its
defaults: worker processes decode), and 8./9. the decode-only bound: the encoded bytes already
in memory, decoded on all cores with nothing else to do. Row 3w is the raw lake again with as
many workers as the png row, so that their memory is comparable. The two per-row loaders are
timed on their first ``--slow_batches`` batches per epoch (a rate, so comparable). Memory is PSS (shared pages
split between the processes that map them), so the main process and its workers add up.

A shared machine's speed drifts within a run, so the data module's rows 3, 6 and 7 (and
``--compare``'s) are compared with the in-memory loader timed right before and right after
them, 3 s of epochs each (``memory beside``: the mean of the two medians), not with row 1,
timed a minute apart.

The last line holds the ratios the project tracks: ``raw_vs_memory``, ``raw_vs_naive``,
``aug_vs_seed``, ``png_vs_memory`` / ``jpeg_vs_memory`` (each against the in-memory loader
beside it) and ``png_vs_decode`` / ``jpeg_vs_decode`` (the data module against the
decode-only bound).

    python -m fashion_lake.tools.bench --ingest 1000

times ``ingest image_folder`` instead, on N and 4N synthetic jpeg photos (random sizes from
200x150 to 640x480, 10 classes) written to a temporary folder: with its defaults (the files
keep their bytes) and with ``image_size 256`` (every file decoded, resized and re-encoded).
Each ingest runs in a fresh process, timed from its imports' end to ``image_folder``'s return;
meanwhile its memory is sampled every 50 ms: RSS and PSS summed over it and its worker
processes ("RSS ready": the process alone before it started). Then the N photos' lake (bytes
kept) is read as 224x224 batches: the data module's training crops (P1) and evaluation crops
(P2), and ``ds.pytorch`` with torchvision's ``RandomResizedCrop`` per sample (P3). The last line
holds ``rss_4n_vs_n`` (memory must not grow with the number of files), ``kept_vs_reencoded``
and ``crops_vs_per_sample``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from fashion_lake.data.augment import ColumnTransform, SeedTransform
from fashion_lake.data.decode import decode_all
from fashion_lake.data.module import DeepLakeDataModule
from fashion_lake.errors import ConfigError, IngestError, OneLineErrors, message, run_command
from fashion_lake.host import available_cores
from fashion_lake.lake import open_lake
from fashion_lake.tools.plain import write_plain_lake

CODECS = ("png", "jpeg")
MIN_TIMED_S = 3.0  # each loader's timed epochs last at least this long together


def rollup_bytes(pids: Iterable[int], fields: tuple[str, ...] = ("Pss",)) -> dict[str, int]:
    """``fields`` of /proc/PID/smaps_rollup (Linux) summed over these processes, in bytes."""
    totals = dict.fromkeys(fields, 0)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in totals:
                    totals[key] += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return totals


def pss_bytes(pids: Iterable[int]) -> int:
    """Proportional resident memory of these processes (Linux /proc), for the memory check."""
    return rollup_bytes(pids)["Pss"]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    return [pid, *(p for child in _children(pid) for p in _tree(child))]


class Timing(NamedTuple):
    rate: float  # median samples/s of the timed epochs
    warmup: int  # peak PSS growth in bytes during the warm-up epoch
    after: int  # the same during an epoch after the timed ones
    beside: float | None = None  # the in-memory loader's samples/s, timed right before and after it


def memory_rate(loader: Iterable, epochs: int) -> float:
    """Median samples/s of the in-memory loader's epochs, ``epochs`` or more, ``MIN_TIMED_S`` at
    least (no warm-up, no memory sampling: it is timed again beside other loaders)."""
    rates: list[float] = []
    timed = 0.0
    while len(rates) < epochs or timed < MIN_TIMED_S:
        seen, start = 0, time.perf_counter()
        for images, _ in loader:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
        timed += time.perf_counter() - start
    return statistics.median(rates)


def time_epochs(
    name: str,
    loader: Iterable,
    epochs: int,
    consume: Callable[[dict], torch.Tensor],
    max_batches: int | None = None,
    set_epoch: Callable[[int], None] | None = None,
) -> Timing:
    """Median samples/s over ``epochs`` timed epochs after one warm-up, or as many more as fill
    ``MIN_TIMED_S`` (a loader whose epoch takes a fraction of a second is otherwise timed in a
    window that a burst of other work on the machine fills), and peak PSS growth in bytes (main
    process and workers) during the warm-up epoch (opening the dataset, starting workers,
    filling caches) and during one more epoch after the timed ones (relative to the end of the
    warm-up: it includes whatever the timed epochs kept).

    Memory is sampled every 0.25 s, and never during the timed epochs: reading PSS costs ~4 ms
    a process, which on 2 cores took ~5% from the loaders with workers (and nothing from the
    decode-only bound, which is timed without it).
    """
    me = os.getpid()
    base = pss_bytes([me, *_children(me)])
    peaks = [base, 0]  # during the warm-up; during the epoch after the timed ones

    def one_epoch(epoch: int, sample: int | None) -> float:
        """Samples/s of one epoch; ``sample``: where to keep its PSS peak (None: time it)."""
        if set_epoch is not None:
            set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        sampled = start
        for i, batch in enumerate(loader):
            seen += len(consume(batch))
            if sample is not None and (i == 0 or time.perf_counter() - sampled >= 0.25):
                peaks[sample] = max(peaks[sample], pss_bytes([me, *_children(me)]))
                sampled = time.perf_counter()
            if max_batches is not None and i + 1 >= max_batches:
                break
        return seen / (time.perf_counter() - start)

    one_epoch(0, sample=0)  # warms caches, workers and allocators
    warm = pss_bytes([me, *_children(me)])
    rates: list[float] = []
    began = time.perf_counter()
    with tqdm(desc=name, unit="epoch", leave=False) as bar:
        while len(rates) < epochs or time.perf_counter() - began < MIN_TIMED_S:
            rates.append(one_epoch(len(rates) + 1, sample=None))
            bar.update()
    one_epoch(len(rates) + 1, sample=1)
    return Timing(statistics.median(rates), peaks[0] - base, max(peaks[1] - warm, 0))


def _row_key(name: str) -> tuple[int, str]:
    """Table order: "3", "3w", "4", ..., "10"."""
    number = name.split()[0]
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(digits), number[len(digits) :]


_ENCODED: list[bytes] = []  # the decode bound's bytes, inherited by its forked processes


def _decode_share(args: tuple[int, int, str, tuple[int, int, int]]) -> int:
    start, stop, codec, shape = args
    for at in range(start, stop, 256):
        decode_all(_ENCODED[at : min(at + 256, stop)], codec, shape)
    return stop - start


def decode_bound(
    encoded: list[bytes], codec: str, shape: tuple[int, int, int], epochs: int, processes: int
) -> Timing:
    """Samples/s decoding ``encoded`` (in memory, ``(H, W, C)`` images) in batches of 256 on
    ``processes`` forked processes, with the decoder the data module uses."""
    global _ENCODED
    _ENCODED = encoded
    shares = np.linspace(0, len(encoded), processes + 1).astype(int)
    work = [(int(a), int(b), codec, shape) for a, b in zip(shares[:-1], shares[1:], strict=True)]
    rates = []
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_decode_share, work)  # warm-up
        for _ in range(epochs):
            start = time.perf_counter()
            rows = sum(pool.map(_decode_share, work))
            rates.append(rows / (time.perf_counter() - start))
    _ENCODED = []
    return Timing(statistics.median(rates), 0, 0)


# ----------------------------------------------------------------------------- ingest
PHOTO_CLASSES = 10
# One ingest in a fresh process: prints "ready" once imported, then the seconds image_folder took.
_INGEST = """import sys, time
from fashion_lake.ingest.write import image_folder
print("ready", flush=True)
start = time.perf_counter()
image_folder(sys.argv[1], sys.argv[2], image_size=int(sys.argv[3]) or None)
print(time.perf_counter() - start, flush=True)
"""


class IngestRun(NamedTuple):
    files: int
    nbytes: int
    seconds: float
    rss: int  # peaks, bytes
    pss: int
    ready: int


def write_photos(root: Path, count: int, rng: np.random.Generator, first: int = 0) -> None:
    """``count`` photo-like RGB jpegs (smooth random colour fields plus sensor-like noise, quality
    90) of random sizes from 200x150 to 640x480, spread over PHOTO_CLASSES class folders."""
    from PIL import Image

    for i in range(first, first + count):
        width, height = int(rng.integers(200, 641)), int(rng.integers(150, 481))
        coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
        pixels = np.clip(smooth + rng.integers(-6, 7, smooth.shape, dtype=np.int16), 0, 255)
        folder = root / f"class{i % PHOTO_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def run_ingest(root: Path, dest: Path, image_size: int | None) -> tuple[float, int, int, int]:
    """Seconds ``image_folder(root, dest)`` takes in a fresh process; peak RSS and peak PSS summed
    over that process and its workers meanwhile (sampled every 50 ms); and the process's RSS
    before it started. Its imports and its exit are not counted."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-c", _INGEST, str(root), str(dest), str(image_size or 0)]
    peaks = {"Rss": 0, "Pss": 0}
    done = threading.Event()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)

        def sample() -> None:
            while not done.is_set():
                now = rollup_bytes(_tree(proc.pid), ("Rss", "Pss"))
                peaks.update({key: max(peaks[key], now[key]) for key in peaks})
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        proc.stdout.readline()  # "ready": imported
        ready = rollup_bytes([proc.pid], ("Rss",))["Rss"]
        sampler.start()
        seconds = proc.stdout.readline()  # image_folder returned
        done.set()
        sampler.join()
        if proc.wait() != 0:
            err.seek(0)
            raise IngestError(f"the benchmarked ingest failed: {message(err.read()[-3000:])}")
    return float(seconds), peaks["Rss"], peaks["Pss"], ready


def ingest_bench(n: int, seed: int, work_dir: str | None) -> dict[str, float]:
    """Time ``ingest image_folder`` on n and 4n synthetic photos, kept and re-encoded; print a
    table and the ratio line."""
    if n < PHOTO_CLASSES:
        raise ConfigError(f"--ingest must be {PHOTO_CLASSES} or more (photos, one class each at least).")
    rng = np.random.default_rng(seed)
    runs: dict[tuple[str, str], IngestRun] = {}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        roots = {"N": Path(tmp) / "photos-n", "4N": Path(tmp) / "photos-4n"}
        start = time.perf_counter()
        write_photos(roots["N"], n, rng)
        write_photos(roots["4N"], 3 * n, rng, first=n)
        for path in roots["N"].rglob("*.jpg"):  # 4N = the same N files (linked) and 3N more
            os.link(path, roots["4N"] / path.relative_to(roots["N"]))
        print(f"wrote {4 * n} photos in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        for how, image_size in (("kept", None), ("image_size 256", 256)):
            for size, root in roots.items():
                files = list(root.rglob("*.jpg"))
                dest = Path(tmp) / f"lake-{how}-{size}".replace(" ", "")
                seconds, rss, pss, ready = run_ingest(root, dest, image_size)
                if (how, size) != ("kept", "N"):
                    shutil.rmtree(dest)
                nbytes = sum(f.stat().st_size for f in files)
                runs[how, size] = IngestRun(len(files), nbytes, seconds, rss, pss, ready)
        loaders = photo_loaders(str(Path(tmp) / "lake-kept-N"), seed)
    print(f"\ningest image_folder, {available_cores()} cores, the files in the page cache")
    columns = ("files", "MB", "seconds", "images/s", "MB/s", "peak RSS", "peak PSS", "RSS ready")
    print(f"{'run':<20}" + "".join(f"{c:>11}" for c in columns))
    for (how, size), run in runs.items():
        mb = run.nbytes / 2**20
        memory = [f"{m / 2**20:.0f} MB" for m in (run.rss, run.pss, run.ready)]
        cells = [run.files, f"{mb:.1f}", f"{run.seconds:.2f}", f"{run.files / run.seconds:,.0f}",
                 f"{mb / run.seconds:.1f}", *memory]  # fmt: skip
        print(f"{how + ', ' + size:<20}" + "".join(f"{c:>11}" for c in cells))
    rate = {key: run.files / run.seconds for key, run in runs.items()}
    ratios = {
        "rss_4n_vs_n": runs["kept", "4N"].rss / runs["kept", "N"].rss,
        "rss_4n_vs_n_resized": runs["image_size 256", "4N"].rss / runs["image_size 256", "N"].rss,
        "pss_4n_vs_n": runs["kept", "4N"].pss / runs["kept", "N"].pss,
        "kept_vs_reencoded": rate["kept", "4N"] / rate["image_size 256", "4N"],
    }
    print(f"\n{n} of those photos (kept jpeg bytes) to 224x224 batches of {PHOTO_BATCH}, median of 2 epochs")
    print(f"{'loader':<44}{'workers':>8}{'samples/s':>12}{'PSS growth: warm-up':>22}{'timed epochs':>15}")
    for name, (workers, (rate_, first, steady)) in loaders.items():
        print(f"{name:<44}{workers:>8}{rate_:>12,.0f}{first / 2**20:>19.1f} MB{steady / 2**20:>12.1f} MB")
    ratios["crops_vs_per_sample"] = loaders["P1 data module, train crops"][1][0] / loaders[PER_SAMPLE][1][0]
    print(" ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    return ratios


PHOTO_BATCH = 64
PER_SAMPLE = "P3 ds.pytorch + RandomResizedCrop per sample"


def photo_loaders(lake: str, seed: int) -> dict[str, tuple[int, tuple[float, int, int]]]:
    """The data module's 224x224 training crops and evaluation crops on a photo lake, and what a
    user writes per sample without it: ``ds.pytorch`` with torchvision's ``RandomResizedCrop``
    (PIL) on as many worker processes. name -> (workers, time_epochs' result)."""
    from torchvision import transforms as T

    out = {}
    dm = DeepLakeDataModule(train_url=lake, val_url=lake, batch_size=PHOTO_BATCH, seed=seed, image_size=224,
                            rotation=0.0, drop_last=False, normalize="imagenet")  # fmt: skip
    dm.setup("fit")
    for name, loader in (("P1 data module, train crops", dm.train_dataloader()),
                         ("P2 data module, eval resize + centre crop", dm.val_dataloader())):  # fmt: skip
        set_epoch = loader.set_epoch
        out[name] = (
            loader.num_workers,
            time_epochs(name, loader, 2, lambda b: b["images"], set_epoch=set_epoch),
        )
        del loader, set_epoch
        dm._train_loader = None
        gc.collect()
    workers = out["P1 data module, train crops"][0]
    crop = T.Compose([T.ToPILImage(), T.RandomResizedCrop(224), T.PILToTensor()])
    rows = open_lake(lake).pytorch(
        transform=lambda row: {"images": crop(row["images"]), "labels": row["labels"]}
    )
    per_sample = DataLoader(
        rows, batch_size=PHOTO_BATCH, shuffle=True, num_workers=workers, persistent_workers=True
    )
    out[PER_SAMPLE] = workers, time_epochs("per-sample", per_sample, 2, lambda b: b["images"])
    return out


def main(
    url: str = "lakes/fashion-mnist-train",
    raw_dir: str | None = None,
    batch_size: int = 256,
    num_workers: int | None = None,
    epochs: int = 3,
    slow_batches: int = 40,
    seed: int = 0,
    work_dir: str | None = None,
    compare: list[str] | None = None,
    ingest: int | None = None,
) -> dict[str, float]:
    """Benchmark the data path and print a table and the ratio line.

    Args:
        url: Training lake, raw uint8 (built from raw_dir / $FASHION_LAKE_RAW_DIR if missing and local).
        raw_dir: Fashion-MNIST IDX folder, to build a missing lake.
        batch_size: Rows per batch for every loader.
        num_workers: DataLoader workers for the data module (default: its own choice per
            storage format); the in-memory and per-row loaders run in-process.
        epochs: Timed epochs per loader (after one warm-up epoch).
        slow_batches: Batches per epoch timed for the two per-row loaders.
        seed: Shuffle seed.
        work_dir: Where to write the png/jpeg copies (default: a temporary folder, removed after).
        compare: More lakes to time the data module on, a row each (e.g. a Deep Lake 3 dataset
            and its converted copy).
        ingest: Benchmark ``ingest image_folder`` instead, on this many synthetic photos and on
            four times as many (written under work_dir).
    """
    if ingest is not None:
        return ingest_bench(ingest, seed, work_dir)
    if epochs < 1 or slow_batches < 1:
        raise ConfigError(f"--epochs and --slow_batches must be 1 or more, not {epochs} and {slow_batches}.")
    torch.manual_seed(seed)
    results: dict[str, Timing] = {}
    workers: dict[str, int] = {}

    def module(lake: str, workers: int | None = num_workers) -> DeepLakeDataModule:
        dm = DeepLakeDataModule(
            train_url=lake, val_url=lake, raw_dir=raw_dir, batch_size=batch_size, num_workers=workers,
            seed=seed, drop_last=False, rotation=0.0,
        )  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")
        return dm

    def run_module(
        name: str, dm: DeepLakeDataModule, rotation: float | None = None, beside: DataLoader | None = None
    ) -> None:
        """Time what the loader yields (uint8 batches), or with ``rotation`` also the float
        conversion, normalisation and rotation that run on the device in training; with
        ``beside`` (the in-memory loader) that loader too, right before and right after (before
        the workers start and once they have ended: their memory is not the baseline's)."""
        before = memory_rate(beside, epochs) if beside is not None else None
        loader = dm.train_dataloader()
        consume = lambda b: b["images"]  # noqa: E731
        if rotation is not None:
            dm.batch_transform.degrees = rotation
            consume = lambda b: dm.prepare_batch(b, train=True)["images"]  # noqa: E731
        workers[name] = loader.num_workers
        set_epoch = loader.set_epoch
        results[name] = time_epochs(name, loader, epochs, consume, set_epoch=set_epoch)
        del loader, consume, set_epoch
        dm._train_loader = None  # the module holds the loader too
        gc.collect()  # its persistent workers end here, before the next loader is timed
        if beside is not None and before is not None:  # (both or neither)
            results[name] = results[name]._replace(beside=(before + memory_rate(beside, epochs)) / 2)

    dm = module(url)
    rows, class_names = len(dm.datasets["train"]), dm.class_names
    ds = open_lake(url)
    hwc = np.asarray(ds["images"][0:rows])
    labels = np.asarray(ds["labels"][0:rows]).astype(np.uint32)
    images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    memory = DataLoader(TensorDataset(images, torch.from_numpy(labels.astype(np.int64))),
                        batch_size=batch_size, shuffle=True)  # fmt: skip
    results["1 in-memory TensorDataset"] = time_epochs("memory", memory, epochs, lambda b: b[0])
    run_module("3 DeepLakeDataModule raw", dm, beside=memory)
    run_module("4 DeepLakeDataModule raw, rotate", dm, rotation=20.0)

    naive = DataLoader(ds.pytorch(), batch_size=batch_size, shuffle=True)
    results["2 naive ds.pytorch()"] = time_epochs("naive", naive, epochs, lambda b: b["images"], slow_batches)
    seed_rows = ds.pytorch(transform=ColumnTransform({"images": SeedTransform()}, ["images", "labels"]))
    seed_loader = DataLoader(seed_rows, batch_size=batch_size, shuffle=True)
    results["5 seed per-sample PIL"] = time_epochs(
        "seed", seed_loader, epochs, lambda b: b["images"], slow_batches
    )
    del naive, seed_loader, seed_rows

    cores = available_cores()
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for n, codec in enumerate(CODECS):
            lake = str(Path(tmp) / f"{Path(url).name}-{codec}")
            write_plain_lake(lake, hwc, labels, codec, class_names)
            run_module(f"{6 + n} DeepLakeDataModule {codec}", module(lake), beside=memory)
            copy = open_lake(lake)  # held: Deep Lake's bytes live as long as their dataset
            encoded = list(copy["images"].get_bytes(slice(0, rows)))
            bound = f"{8 + n} decode-only bound {codec}"
            results[bound] = decode_bound(encoded, codec, hwc.shape[1:], epochs, cores)
            workers[bound] = cores
    png_workers = workers["6 DeepLakeDataModule png"]  # the raw lake with as many: memory comparable
    run_module(f"3w DeepLakeDataModule raw, {png_workers} workers", module(url, png_workers))
    for n, other in enumerate(compare or []):
        run_module(f"{10 + n} DeepLakeDataModule {other}", module(other), beside=memory)
    del memory, images

    print(f"\n{rows} rows from {url}, batch {batch_size}, median of {epochs} or more epochs (3 s at least) "
          "after a warm-up")  # fmt: skip
    width = max(36, *(len(name) + 2 for name in results))
    header = f"{'workers':>8}{'samples/s':>12}{'memory beside':>15}"
    print(f"{'loader':<{width}}{header}{'PSS growth: warm-up':>22}{'epoch after':>15}")
    for name in sorted(results, key=_row_key):
        timing = results[name]
        beside = f"{timing.beside:>15,.0f}" if timing.beside is not None else f"{'':>15}"
        growth = f"{timing.warmup / 2**20:>19.1f} MB{timing.after / 2**20:>12.1f} MB"
        print(f"{name:<{width}}{workers.get(name, 0):>8}{timing.rate:>12,.0f}{beside}{growth}")
    key = {name.split()[0]: timing for name, timing in results.items()}
    rate = {n: timing.rate for n, timing in key.items()}

    def vs_memory(n: str) -> float:
        beside = key[n].beside
        assert beside is not None, f"row {n} is compared with the in-memory loader timed beside it"
        return rate[n] / beside

    ratios = {
        "raw_vs_memory": vs_memory("3"),
        "raw_vs_naive": rate["3"] / rate["2"],
        "aug_vs_seed": rate["4"] / rate["5"],
        "png_vs_memory": vs_memory("6"),
        "jpeg_vs_memory": vs_memory("7"),
        "png_vs_decode": rate["6"] / rate["8"],
        "jpeg_vs_decode": rate["7"] / rate["9"],
    }
    ratios.update({f"{n}_vs_memory": vs_memory(n) for n in rate if _row_key(n)[0] >= 10})
    print(" ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    return ratios


def cli(args: list[str] | None = None) -> None:
    """``python -m fashion_lake.tools.bench``: bad input is one line and exit 2, as everywhere."""
    from jsonargparse import CLI, ArgumentParser

    class Parser(OneLineErrors, ArgumentParser):
        program = "fashion_lake.tools.bench"

    prog = "python -m fashion_lake.tools.bench"
    run_command(
        prog.split()[-1], lambda: CLI(main, args=args, as_positional=False, parser_class=Parser, prog=prog)
    )


if __name__ == "__main__":
    cli()
