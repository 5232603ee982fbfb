"""Write image-classification data into Deep Lake 4.x datasets, atomically.

Three sources: the four canonical Fashion-MNIST IDX ``.gz`` files (checksummed), a
torchvision ``ImageFolder`` tree, and a Deep Lake 3 dataset (``convert``, through
``deeplake.convert``, keeping its columns). The first two get an ``images`` column (uint8
HxWxC, raw or png/jpeg-compressed) and a ``labels`` ClassLabel column whose metadata holds
``class_names``. An image folder is streamed file by file through worker processes
(``fashion_lake.ingest.folder``), and files already in the column's format keep their bytes.

Atomic: a local destination is written beside itself and renamed into place only once
committed; a remote one carries ``fashion_lake.ingest = "in_progress"`` until the final
commit, and the data module refuses to read it in that state. Either way a failed or killed
ingest never leaves something that opens as a complete dataset, and re-running works.

Run ``python -m fashion_lake.ingest --help``.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import multiprocessing
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import numpy as np
from tqdm.auto import tqdm

from fashion_lake.errors import IngestError, OneLineErrors, run_command
from fashion_lake.host import available_cores
from fashion_lake.ingest.folder import (
    FORMATS,
    IMG_EXTENSIONS,
    Plan,
    encode_many,
    list_image_folder,
    probe_many,
)
from fashion_lake.lake import (
    INGEST_KEY,
    Creds,
    check_reachable,
    check_secrets,
    is_local,
    lake_format,
    local_path,
    open_lake,
    storage_args,
    storage_errors,
)

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# torchvision's own download locations; tests point this at a closed loopback port.
FASHION_MNIST_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
# the MD5s of the official release's files (as torchvision also checks them)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DOWNLOAD_TIMEOUT = 60.0  # seconds without a byte before a mirror counts as unreachable
IMAGE_COMPRESSIONS = ("null", "png", "jpeg")
APPEND_ROWS = 4096  # rows per append at most
APPEND_BYTES = 8 << 20  # and about this many bytes of images
COMMIT_BYTES = 32 << 20  # bytes of images appended between commits (see write_lake)
PROBE_FILES = 1024  # files per worker task reading headers
ENCODE_FILES = 64  # files per worker task encoding: well under a second of work
TASKS_AHEAD = 2  # tasks per worker submitted ahead of the one awaited
SKIPPED_FILES_LISTED = 100
T = TypeVar("T")


# ----------------------------------------------------------------------------- IDX files
def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_sums(raw_dir: Path) -> dict[str, str]:
    sums = raw_dir / "SHA256SUMS"
    if not sums.is_file():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def verify_raw_dir(raw_dir: str | Path, split: str) -> tuple[Path, Path]:
    """Check that ``raw_dir`` holds the split's two IDX files with known checksums.

    A ``SHA256SUMS`` file beside them (as published with a mirror) takes precedence over the
    MD5s of the official files.
    """
    raw = Path(raw_dir).expanduser()
    if not raw.is_dir():
        raise IngestError(
            f"raw_dir {str(raw)!r} is not a directory. Pass the folder holding the four "
            "Fashion-MNIST IDX .gz files (e.g. --data.raw_dir ../shared/fashion-mnist)."
        )
    sha256, md5 = _read_sums(raw), FASHION_MNIST_MD5
    paths = []
    for name in IDX_FILES[split]:
        path = raw / name
        if not path.is_file():
            raise IngestError(
                f"{name} is missing from raw_dir {str(raw)!r}. It needs the four Fashion-MNIST "
                f"files: {', '.join(n for pair in IDX_FILES.values() for n in pair)}."
            )
        if name in sha256:
            algorithm, expected = "sha256", sha256[name]
        else:
            algorithm, expected = "md5", md5[name]
        actual = _digest(path, algorithm)
        if actual != expected:
            raise IngestError(
                f"checksum mismatch for {path}: {algorithm} is {actual}, expected {expected}. "
                "The file is corrupt or not the Fashion-MNIST release; download it again."
            )
        paths.append(path)
    return paths[0], paths[1]


def read_idx(path: Path) -> np.ndarray:
    """Decode one (gzipped) IDX file into a uint8 array, checking its header."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise IngestError(f"{path} is not a readable gzip file ({e}); download it again.") from e
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise IngestError(f"{path} is not a uint8 IDX file (bad magic number).")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims)) + 4 + 4 * ndim
    if len(data) != expected:
        raise IngestError(f"{path} is truncated or padded: {len(data)} bytes, header says {expected}.")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(raw_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Images as (N, 28, 28, 1) uint8, labels as (N,) uint8, and a provenance record."""
    images_path, labels_path = verify_raw_dir(raw_dir, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IngestError(
            f"{images_path.name} {images.shape} and {labels_path.name} {labels.shape} "
            "do not describe the same images."
        )
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise IngestError(f"{labels_path} holds labels outside 0..9.")
    source = {
        "kind": "fashion-mnist-idx",
        "split": split,
        "rows": len(labels),
        "files": {p.name: _digest(p, "sha256") for p in (images_path, labels_path)},
    }
    return images[..., None], labels, source


def download_fashion_mnist(raw_dir: str | Path) -> Path:
    """Fetch the four IDX files from the mirrors into ``raw_dir`` (online users), checking each
    file's MD5 before it takes its final name."""
    raw = Path(raw_dir).expanduser()
    raw.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MNIST_MD5.items():
        if (raw / name).is_file():
            continue
        errors = []
        for mirror in FASHION_MNIST_MIRRORS:
            try:
                _download(mirror + name, raw / name, md5)
                break
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{mirror}: {e}")
        else:
            raise IngestError(
                f"could not download {name} ({'; '.join(errors)}). If this machine is offline, "
                "pass --data.raw_dir DIR (or set FASHION_LAKE_RAW_DIR) pointing at a folder "
                "with the four Fashion-MNIST IDX .gz files."
            )
    return raw


def _download(url: str, dest: Path, md5: str) -> None:
    """``url`` to ``dest`` through a temporary file beside it; a wrong checksum leaves nothing."""
    partial = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
        if (actual := _digest(partial, "md5")) != md5:
            raise ValueError(f"md5 {actual}, expected {md5}")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _slices(n: int) -> Iterator[slice]:
    """IDX rows in appends of ``APPEND_ROWS``."""
    for start in range(0, n, APPEND_ROWS):
        yield slice(start, min(start + APPEND_ROWS, n))


# ----------------------------------------------------------------------------- writing
class Batch(NamedTuple):
    """Rows to append, and how far they move the progress bar (their rows plus skipped files)."""

    images: np.ndarray | list[bytes | np.ndarray]
    labels: np.ndarray
    progress: int


def _nbytes(images: np.ndarray | list[bytes | np.ndarray]) -> int:
    if isinstance(images, np.ndarray):
        return images.nbytes
    return sum(len(image) if isinstance(image, bytes) else image.nbytes for image in images)


def write_lake(
    dest: str,
    batches: Iterable[Batch],
    class_names: list[str],
    source: Callable[[], dict],
    total: int,
    compression: str = "null",
    overwrite: bool = False,
    creds: Creds | None = None,
    token: str | None = None,
) -> str:
    """Append ``batches`` to a new dataset at ``dest`` atomically and return the committed version.

    ``batches`` may be a stream: nothing is held beyond the batch being appended, and a commit
    every ``COMMIT_BYTES`` keeps memory flat (Deep Lake's commit takes anonymous memory in
    proportion to the bytes appended since the previous commit, and a commit is cheap; see
    docs/ingest.md). ``source()`` is the provenance record, asked for once every batch is
    written (a stream's counts are known only then); ``total`` is the progress bar's length.
    """
    import deeplake

    if compression not in IMAGE_COMPRESSIONS:
        raise IngestError(f"compression must be one of {IMAGE_COMPRESSIONS}, not {compression!r}.")
    final = _clear_destination(dest, overwrite, creds, token)
    work_url = dest if final is None else _partial(final)
    try:
        ds = deeplake.create(work_url, **storage_args(creds, token))
        ds.metadata[INGEST_KEY] = "in_progress"
        ds.add_column("images", deeplake.types.Image(dtype="uint8", sample_compression=compression))
        ds.add_column("labels", deeplake.types.ClassLabel("uint32"))
        ds["labels"].metadata["class_names"] = list(class_names)
        ds.commit("fashion_lake: schema")
        rows = uncommitted = 0
        with tqdm(total=total, desc=f"writing {dest}", unit="img") as bar:
            for batch in batches:
                if len(batch.labels):
                    ds.append({"images": batch.images, "labels": batch.labels.astype(np.uint32)})
                    rows += len(batch.labels)
                    uncommitted += _nbytes(batch.images)
                    if uncommitted >= COMMIT_BYTES:
                        ds.commit(f"fashion_lake: {rows} rows so far")
                        uncommitted = 0
                bar.update(batch.progress)
        if rows == 0:
            raise IngestError("nothing to ingest: the source holds no images.")
        record = source()
        ds.metadata["source"] = record
        ds.metadata[INGEST_KEY] = "complete"
        ds.commit(f"fashion_lake: ingest {rows} rows from {record['kind']}")
        version = ds.version
        del ds
        if final is not None:
            _replace(work_url, final)
            _remove_leftovers(final)
    except BaseException:
        if final is not None:
            shutil.rmtree(work_url, ignore_errors=True)
        raise
    return version


def _overlaps(dest: Path, source: str | Path) -> bool:
    """Whether ``dest`` is ``source``, inside it, or holds it."""
    dest, source = dest.resolve(), Path(source).expanduser().resolve()
    return dest == source or source in dest.parents or dest in source.parents


def _check_destination(
    dest: str,
    overwrite: bool,
    creds: Creds | None = None,
    token: str | None = None,
    sources: Sequence[str | Path] = (),
) -> Path | None:
    """Refuse a destination that may not be written, before any work; writes nothing.

    ``overwrite`` replaces only a dataset (ours, complete or left unfinished, or any other Deep
    Lake dataset), never a folder that is not one, and nothing overlapping the ingest's own
    ``sources``. Returns ``dest``'s local path, or None for a remote URL.
    """
    import deeplake

    if not is_local(dest):
        check_reachable(dest, creds)
        if deeplake.exists(dest, **storage_args(creds, token)):
            state = open_lake(dest, creds, token, check_complete=False).metadata
            if not overwrite and (INGEST_KEY not in state or state[INGEST_KEY] == "complete"):
                raise IngestError(f"{dest} already exists; pass --overwrite true to replace it.")
        return None
    final = local_path(dest)
    for source in sources:
        if is_local(str(source)) and _overlaps(final, local_path(str(source))):
            raise IngestError(
                f"destination {str(final)!r} overlaps the source {str(source)!r}; write the dataset to a "
                "folder outside the source (and not around it)."
            )
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise IngestError(f"{final} already exists; pass --overwrite true to replace it.")
        if not final.is_dir() or lake_format(str(final)) is None:
            raise IngestError(
                f"{final} exists and is not a Deep Lake dataset; --overwrite replaces only a dataset. "
                "Choose another destination (nothing was changed)."
            )
    return final


def _clear_destination(dest: str, overwrite: bool, creds: Creds | None, token: str | None) -> Path | None:
    """``_check_destination``, then make room: a local destination's parent folder is created;
    a remote dataset that may be replaced (``overwrite``, or an unfinished ingest of ours) is
    deleted. Returns ``dest``'s local path, or None for a remote URL."""
    import deeplake

    final = _check_destination(dest, overwrite, creds, token)
    if final is not None:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final
    if deeplake.exists(dest, **storage_args(creds, token)):
        deeplake.delete(dest, **storage_args(creds, token))
    return None


PARTIAL = ".partial-"  # a partial's name: .{dest name}.partial-{random}-{pid}-{host} (Deep Lake reads "@")


def _partial(final: Path) -> str:
    """A hidden sibling of ``final`` to write into, renamed into place once complete. Its name
    records the writing process, so a later ingest can tell a killed one's leftover from a live one."""
    owner = f"{uuid.uuid4().hex[:8]}-{os.getpid()}-{socket.gethostname()}"
    return str(final.parent / f".{final.name}{PARTIAL}{owner}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_leftovers(final: Path) -> list[Path]:
    """Remove the partials of ``final`` that ingests on this machine left when killed; return them.

    A partial whose writer still runs, or that another machine writes, is left alone.
    """
    removed = []
    for path in final.parent.glob(f".{glob.escape(final.name)}{PARTIAL}*"):
        _, pid, host = (path.name.rsplit(PARTIAL, 1)[1].split("-", 2) + ["", ""])[:3]
        if not path.is_dir() or not pid.isdigit() or host != socket.gethostname() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _replace(work_url: str, final: Path) -> None:
    if final.exists():  # overwrite: the old one goes only once the new one is whole
        shutil.rmtree(final)
    os.replace(work_url, final)


# ----------------------------------------------------------------------------- image folder
def _check_image_size(image_size: int | Sequence[int] | None) -> int | tuple[int, int] | None:
    def positive(n: object) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and n > 0

    if image_size is None:
        return None
    if isinstance(image_size, int) and positive(image_size):
        return image_size
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(map(positive, image_size)):
        return image_size[0], image_size[1]
    raise IngestError(
        f"image_size must be a positive N (shorter side to N, keeping the aspect ratio) or [H, W] "
        f"(exactly H x W), not {image_size!r}."
    )


def _size_record(size: int | tuple[int, int] | None) -> int | list[int] | str:
    """image_size for the metadata, where Deep Lake 4.7 stores a nested None as {}."""
    return "original" if size is None else list(size) if isinstance(size, tuple) else size


def _choose(mode: str, compression: str, grey: bool, formats: Counter[str]) -> tuple[str, str]:
    """The "auto" choices: "L" if every image is grey, and the format most files already have."""
    if mode == "auto":
        mode = "L" if grey else "RGB"
    if compression == "auto":
        compression = "jpeg" if formats["jpeg"] > formats["png"] else "png"
    return mode, compression


@contextmanager
def _worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Spawned worker processes (no fork of a process running Deep Lake's and tqdm's threads),
    or None to work in this process. Workers ignore Ctrl-C: the parent stops them, cleanly,
    rather than each printing a traceback."""
    if workers == 0:
        yield None
        return
    spawn = multiprocessing.get_context("spawn")
    ignore_ctrl_c = (signal.SIGINT, signal.SIG_IGN)
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=signal.signal, initargs=ignore_ctrl_c)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(
    pool: ProcessPoolExecutor | None, workers: int, fn: Callable[..., T], tasks: Iterable[tuple]
) -> Iterator[T]:
    """``fn(*task)`` for each task, in order. In the pool at most ``TASKS_AHEAD`` tasks per worker
    are submitted ahead of the one awaited, so memory does not grow with the number of tasks."""
    if pool is None:
        yield from (fn(*task) for task in tasks)
        return
    ahead: deque[Future[T]] = deque()
    try:
        for task in tasks:
            ahead.append(pool.submit(fn, *task))
            if len(ahead) >= TASKS_AHEAD * workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        for future in ahead:
            future.cancel()


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Tally:
    """What happened to the files, for the dataset's ``source`` metadata."""

    root: Path
    skip_unreadable: bool
    kept: int = 0
    reencoded: int = 0
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)

    def unreadable(self, error: str, path: str) -> None:
        """Skip the file, or stop the ingest naming it."""
        if not self.skip_unreadable:
            raise IngestError(
                f"{error}; remove it or pass --skip_unreadable true to skip it (skipped files are "
                "counted in the dataset metadata)."
            )
        self.skipped += 1
        if len(self.skipped_files) < SKIPPED_FILES_LISTED:
            self.skipped_files.append(os.path.relpath(path, self.root))


def _encoded_batches(
    pool: ProcessPoolExecutor | None, workers: int, files: list[tuple[str, int]], plan: Plan, tally: _Tally
) -> Iterator[Batch]:
    """The files encoded by ``plan``, in order, as batches of at most ``APPEND_ROWS`` rows and
    about ``APPEND_BYTES``."""
    tasks = (([path for path, _ in chunk], plan) for chunk in _chunks(files, ENCODE_FILES))
    results = _in_order(pool, workers, encode_many, tasks)
    images: list[bytes | np.ndarray] = []
    labels: list[int] = []
    size = progress = 0
    for chunk, encoded in zip(_chunks(files, ENCODE_FILES), results, strict=True):
        for (path, label), result in zip(chunk, encoded, strict=True):
            progress += 1
            if result.error is not None:
                tally.unreadable(result.error, path)
                continue
            images.append(result.data)
            labels.append(label)
            size += _nbytes(images[-1:])
            tally.kept += result.kept
            tally.reencoded += not result.kept
            if len(images) >= APPEND_ROWS or size >= APPEND_BYTES:
                yield Batch(images, np.array(labels, np.uint32), progress)
                images, labels, size, progress = [], [], 0, 0
    if progress:
        yield Batch(images, np.array(labels, np.uint32), progress)


def fashion_mnist(
    dest: str,
    raw_dir: str | None = None,
    split: Literal["train", "test"] = "train",
    download: bool = False,
    compression: Literal["null", "png", "jpeg"] = "null",
    overwrite: bool = False,
    creds: Creds | None = None,
    token: str | None = None,
) -> str:
    """Ingest a Fashion-MNIST split from the four IDX .gz files.

    Args:
        dest: Deep Lake URL to create (local path, file://, mem://, s3://, ...).
        raw_dir: Folder with the IDX files (default: $FASHION_LAKE_RAW_DIR).
        split: "train" (60k rows) or "test" (10k rows).
        download: Fetch missing files from torchvision's mirrors into raw_dir first.
        compression: Image sample compression: "null" (raw, fastest to read), "png" (lossless)
            or "jpeg" (lossy, smallest).
        overwrite: Replace an existing dataset at dest.
        creds: Storage credentials; secrets by reference, e.g.
            ``{endpoint_url: http://..., aws_secret_access_key: env:AWS_SECRET_ACCESS_KEY}``.
        token: Activeloop token by reference, e.g. ``env:ACTIVELOOP_TOKEN``.
    """
    check_secrets(creds, token, flag="--")
    raw_dir = raw_dir or os.environ.get("FASHION_LAKE_RAW_DIR")
    if raw_dir is None:
        raise IngestError("pass --raw_dir DIR (or set FASHION_LAKE_RAW_DIR).")
    _check_destination(dest, overwrite, creds, token, sources=[raw_dir])  # before reading the files
    if download:
        download_fashion_mnist(raw_dir)
    images, labels, source = load_fashion_mnist(raw_dir, split)
    batches = (Batch(images[part], labels[part], part.stop - part.start) for part in _slices(len(labels)))
    return write_lake(
        dest,
        batches,
        FASHION_MNIST_CLASSES,
        lambda: source,
        len(labels),
        compression,
        overwrite,
        creds,
        token,
    )


def image_folder(
    root: str,
    dest: str,
    mode: Literal["auto", "L", "RGB"] = "auto",
    image_size: int | tuple[int, int] | None = None,
    compression: Literal["auto", "null", "png", "jpeg"] = "auto",
    skip_unreadable: bool = False,
    workers: int | None = None,
    overwrite: bool = False,
    creds: Creds | None = None,
    token: str | None = None,
) -> str:
    """Ingest a torchvision ImageFolder tree, root/<class_name>/<image>, streaming it file by file.

    Files already in the chosen format and mode (and upright, and not resized) are stored with
    their bytes unchanged, after checking that they decode; the others are converted and
    re-encoded in worker processes. Rows keep the folder's order; memory does not grow with the
    number of files.

    Args:
        root: The folder whose subfolders are the classes (sorted names give class ids).
        dest: Deep Lake URL to create.
        mode: PIL mode to store: "L" (grayscale), "RGB", or "auto": "L" if every image is grey.
        image_size: Resize: N makes the shorter side N, keeping the aspect ratio (as torchvision's
            Resize(N)); [H, W] makes every image exactly H x W. Default: keep each file's size.
        compression: Image sample compression: "png" (lossless), "jpeg" (lossy, quality 95),
            "null" (raw pixels), or "auto": jpeg or png, whichever most files already are (png on
            a tie), so that those keep their bytes.
        skip_unreadable: Skip files that do not decode (counted and listed in the dataset's
            metadata) rather than stop at the first.
        workers: Processes that read and encode the files (default: the available cores; 0:
            this process).
        overwrite: Replace an existing dataset at dest.
        creds: Storage credentials, secrets by reference (see ``fashion_mnist``).
        token: Activeloop token by reference.
    """
    check_secrets(creds, token, flag="--")
    if mode not in ("auto", "L", "RGB"):
        raise IngestError(f'mode must be "auto", "L" or "RGB", not {mode!r}.')
    if compression not in ("auto", *IMAGE_COMPRESSIONS):
        raise IngestError(f"compression must be auto or one of {IMAGE_COMPRESSIONS}, not {compression!r}.")
    size = _check_image_size(image_size)
    workers = available_cores() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise IngestError(f"workers must be 0 (this process) or more, not {workers!r}.")
    files, classes, ignored = list_image_folder(root)
    if ignored:
        kinds = Counter(Path(path).suffix.lower() or Path(path).name for path in ignored)
        listed = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())
        print(
            f"fashion_lake.ingest: ignoring {len(ignored)} file(s) whose type is not read ({listed}); "
            f"image types read: {', '.join(IMG_EXTENSIONS)} (listed in the dataset's metadata).",
            file=sys.stderr,
        )
    _check_destination(dest, overwrite, creds, token, sources=[root])  # before reading every file
    tally = _Tally(Path(root).expanduser(), skip_unreadable)
    workers = min(workers, -(-len(files) // ENCODE_FILES))  # no idle processes for a small folder
    with _worker_pool(workers) as pool:
        tasks = (([path for path, _ in chunk],) for chunk in _chunks(files, PROBE_FILES))
        probed = _in_order(pool, workers, probe_many, tasks)
        grey, formats = True, Counter[str]()  # what "auto" needs of the headers
        unreadable: set[int] = set()
        with tqdm(total=len(files), desc=f"probing {tally.root.name}", unit="img") as bar:
            for start, results in zip(range(0, len(files), PROBE_FILES), probed, strict=True):
                for at, header in enumerate(results, start):
                    if isinstance(header, str):
                        tally.unreadable(header, files[at][0])
                        unreadable.add(at)
                    else:
                        grey &= header.grey
                        formats[FORMATS.get(header.format, header.format)] += 1
                bar.update(len(results))
        if len(unreadable) == len(files):
            raise IngestError(f"no file in {tally.root} is a readable image.")
        if unreadable:  # else no second list of (path, label): ~200 bytes a file
            files = [file for at, file in enumerate(files) if at not in unreadable]
        mode, compression = _choose(mode, compression, grey, formats)
        plan = Plan(mode, compression, size)

        def source() -> dict:
            rows = tally.kept + tally.reencoded
            return {
                "kind": "image-folder", "root": str(tally.root), "rows": rows, "mode": mode,
                "compression": compression, "image_size": _size_record(size),
                "kept": tally.kept, "reencoded": tally.reencoded, "skipped": tally.skipped,
                "skipped_files": tally.skipped_files, "ignored": len(ignored),
                "ignored_files": ignored[:SKIPPED_FILES_LISTED],
            }  # fmt: skip

        batches = _encoded_batches(pool, workers, files, plan, tally)
        return write_lake(dest, batches, classes, source, len(files), compression, overwrite, creds, token)


def convert(
    src: str,
    dest: str,
    overwrite: bool = False,
    creds: Creds | None = None,
    token: str | None = None,
) -> str:
    """Convert a Deep Lake 3 dataset (e.g. the tutorial's hub://activeloop/...) to a native 4.x copy.

    Runs ``deeplake.convert`` into a staging folder, which is renamed into place (local DEST: a
    hidden sibling of it) or copied to DEST marked unfinished until the copy is complete (remote
    DEST: staged in the system temp folder, ``$TMPDIR``, which needs room for the dataset), so a
    failed or killed conversion leaves nothing at DEST that opens as complete. The copy keeps the images'
    encoded bytes and the class names, and records ``src`` in its metadata.

    Args:
        src: The Deep Lake 3 dataset (local path, s3://, hub://, ...; storage credentials from
            the environment, e.g. AWS_*, as deeplake.convert reads them).
        dest: Deep Lake URL to create.
        overwrite: Replace an existing dataset at dest.
        creds: Credentials for dest, secrets by reference (see ``fashion_mnist``).
        token: Activeloop token by reference, for hub:// and al://.
    """
    import deeplake

    check_secrets(creds, token, flag="--")
    args = storage_args(creds, token)
    kind = lake_format(src, token=token)
    if kind != "v3":
        what = "a Deep Lake 4 dataset: use it as it is" if kind == "v4" else "nothing Deep Lake can read"
        raise IngestError(f"{src!r} is not a Deep Lake 3 dataset ({what}).")
    _check_destination(dest, overwrite, creds, token, sources=[src] if is_local(src) else [])
    final = _clear_destination(dest, overwrite, creds, token)
    staging = _partial(final) if final is not None else tempfile.mkdtemp(prefix="fashion-lake-convert-")
    try:
        shutil.rmtree(staging, ignore_errors=True)  # deeplake.convert creates it
        with storage_errors(f"converting {src!r}"):
            deeplake.convert(src, staging, token=args["token"])
        ds = deeplake.open(staging)
        ds.metadata["source"] = {"kind": "deeplake3", "url": src, "rows": len(ds)}
        ds.metadata[INGEST_KEY] = "complete" if final is not None else "in_progress"
        ds.commit(f"fashion_lake: converted {len(ds)} rows from {src}")
        version = ds.version
        del ds
        if final is not None:
            _replace(staging, final)
            _remove_leftovers(final)
            return version
        with storage_errors(f"copying the converted dataset to {dest!r}"):
            deeplake.copy(staging, dest, dst_creds=args["creds"], token=args["token"])
            ds = deeplake.open(dest, **args)
            ds.metadata[INGEST_KEY] = "complete"
            ds.commit("fashion_lake: conversion complete")
            return ds.version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI, ArgumentParser

    class Parser(OneLineErrors, ArgumentParser):
        program = "fashion_lake.ingest"

    commands = [fashion_mnist, image_folder, convert]
    prog = "python -m fashion_lake.ingest"
    version = run_command(prog.split()[-1], lambda: CLI(commands, args=args, parser_class=Parser, prog=prog))
    print(f"committed version {version}")
