"""Opening Deep Lake datasets by URL and reading them as fast batches.

``LakeSource`` is the picklable address of a dataset (URL, credentials, version); every
process, DataLoader workers included, opens its own handle from it. ``LakeDataset`` is the
map-style dataset the loaders use: ``ds.pytorch()`` for per-row reads (and per-sample
transforms), plus ``__getitems__`` that reads whole batches as contiguous column slices
through a small per-process block cache.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from fashion_lake.errors import FashionLakeError

INGEST_KEY = "fashion_lake.ingest"
ROW_ID = "fashion_lake_row"
CORRUPT = -1  # the label given to a corrupt row that is to be skipped
REMOTE_SCHEMES = ("s3://", "gcs://", "gs://", "azure://", "az://", "al://", "hub://", "https://")


class LakeError(FashionLakeError):
    """A dataset or its configuration is unusable; the message says what and how to fix it."""


ENV_REFERENCE = "env:"
# Credential keys that name things rather than prove identity; any other key is a secret.
PUBLIC_CREDS = {
    "endpoint_url", "aws_region", "region", "profile_name", "aws_access_key_id",
    "account_name", "client_id", "tenant_id", "creds_key", "project",
}  # fmt: skip


def check_secrets(creds: dict[str, str] | None, token: str | None = None, flag: str = "--data.") -> None:
    """Refuse secrets given by value: the config, checkpoints and logs would keep them.

    Secrets are named by reference instead, ``env:NAME`` for the environment variable NAME,
    and resolved only when a dataset is opened (``storage_args``). Only the keys in
    ``PUBLIC_CREDS`` (endpoint, region, key id, ...) may be given by value.
    """
    named = {**(creds or {}), **({"token": token} if token is not None else {})}
    for key, value in named.items():
        if key not in PUBLIC_CREDS and not str(value).startswith(ENV_REFERENCE):
            where = f"{flag}token" if key == "token" and token is not None else f"{flag}creds.{key}"
            raise LakeError(
                f"{where} is given by value; it would be written to config.yaml, checkpoints and logs. "
                f"Put it in an environment variable and pass its name: {key}: env:NAME (or leave it "
                "out and let Deep Lake read the standard variables, e.g. AWS_SECRET_ACCESS_KEY)."
            )


def brief(error: BaseException) -> str:
    """A library's error message on one line (Deep Lake's and S3's span several)."""
    return " ".join(str(error).split())


@contextmanager
def storage_errors(what: str, hint: str = "") -> Iterator[None]:
    """Turn a storage library's error into one ``LakeError``: "{what} failed: {error}. {hint}".

    Our own ``LakeError``s (a missing env var, an unopenable version) pass unchanged.
    """
    try:
        yield
    except LakeError:
        raise
    except Exception as e:  # deeplake's errors share no base class beyond Exception
        raise LakeError(f"{what} failed: {brief(e)}" + (f". {hint}" if hint else "")) from e


def _resolve(key: str, value: str) -> str:
    if not value.startswith(ENV_REFERENCE):
        return value
    name = value.removeprefix(ENV_REFERENCE)
    if name not in os.environ:
        raise LakeError(f"{key} refers to the environment variable {name}, which is not set; export it.")
    return os.environ[name]


def storage_args(creds: dict[str, str] | None, token: str | None = None) -> dict[str, Any]:
    """``creds`` and ``token`` for Deep Lake, with ``env:NAME`` references resolved."""
    resolved = {key: _resolve(f"creds.{key}", str(value)) for key, value in (creds or {}).items()}
    return {"creds": resolved, "token": None if token is None else _resolve("token", token)}


def is_local(url: str) -> bool:
    return url.startswith("file://") or "://" not in url


def local_path(url: str) -> Path:
    return Path(url.removeprefix("file://")).expanduser().absolute()


def lake_exists(url: str, creds: dict[str, str] | None = None, token: str | None = None) -> bool:
    import deeplake

    if url.startswith("hub://"):  # Deep Lake 3 datasets: only a query can tell
        return True
    return bool(deeplake.exists(url, **storage_args(creds, token)))


def open_lake(
    url: str,
    creds: dict[str, str] | None = None,
    token: str | None = None,
    check_complete: bool = True,
) -> Any:
    """Open ``url`` read-only, turning Deep Lake's errors into one clear ``LakeError``.

    ``hub://`` URLs name Deep Lake 3 datasets, which Deep Lake 4 reads through a query;
    ``deeplake.convert(src, dst)`` makes a native 4.x copy that loads faster.
    """
    import deeplake

    args = storage_args(creds, token)
    try:
        if url.startswith("hub://"):
            ds = deeplake.query(f'SELECT * FROM "{url}"', token=args["token"])
        else:
            ds = deeplake.open_read_only(url, **args)
    except Exception as e:  # deeplake's errors share no base class beyond Exception
        hint = (
            "Check the URL and that the dataset exists there"
            + (" (build it with `python -m fashion_lake.ingest`)" if is_local(url) else "")
            + ("; check the credentials (creds/token)" if not is_local(url) else "")
            + "."
        )
        raise LakeError(f"cannot open Deep Lake dataset {url!r}: {brief(e)}. {hint}") from e
    meta = getattr(ds, "metadata", {})  # query views have none
    if check_complete and INGEST_KEY in meta and meta[INGEST_KEY] != "complete":
        raise LakeError(f"{url!r} is an ingest that did not finish; run the ingest again (it replaces it).")
    return ds


@dataclass(frozen=True)
class LakeInfo:
    """What the model needs to know about a dataset, checked once up front."""

    rows: int
    class_names: list[str]
    sample_shape: tuple[int, ...]  # H, W, C
    version: str | None
    row_ids: np.ndarray | None = field(default=None, repr=False, compare=False)  # view row -> dataset row


def inspect_lake(
    ds: Any,
    url: str,
    image_column: str,
    label_column: str,
    class_names: Sequence[str] | None = None,
    base: Any = None,
) -> LakeInfo:
    """Check columns, size, class names and label range; return what the loaders need.

    ``ds`` may be a query view; class names then come from ``base``, the dataset it views.
    """
    columns = [c.name for c in ds.schema.columns]
    missing = [c for c in (image_column, label_column) if c not in columns]
    if missing:
        raise LakeError(
            f"{url!r} has no column {', '.join(map(repr, missing))}; it has {columns}. Set "
            "--data.image_column / --data.label_column to the dataset's column names."
        )
    rows = len(ds)
    if rows == 0:
        raise LakeError(f"{url!r} is empty (0 rows); ingest data into it first, or widen the query.")
    if class_names is None:
        meta = (ds if base is None else base)[label_column].metadata
        if "class_names" not in meta or not meta["class_names"]:
            raise LakeError(
                f"column {label_column!r} of {url!r} has no class names in its metadata; make it "
                "a ClassLabel column with metadata['class_names'] or pass --data.class_names."
            )
        class_names = meta["class_names"]
    class_names = [str(c) for c in class_names]
    labels = np.asarray(ds[label_column][0:rows])
    if labels.ndim != 1:
        raise LakeError(
            f"column {label_column!r} of {url!r} holds {labels.shape[1:]} arrays, not one class id per row."
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(class_names):
        bad = int(np.flatnonzero((labels < 0) | (labels >= len(class_names)))[0])
        raise LakeError(
            f"row {bad} of {url!r} has label {int(labels[bad])}, outside 0..{len(class_names) - 1} "
            f"({len(class_names)} class names); fix the labels or the class names."
        )
    first = np.asarray(ds[image_column][0:1])
    if first.ndim == 3:  # H, W without a channel axis
        first = first[..., None]
    if first.ndim != 4:
        raise LakeError(f"column {image_column!r} of {url!r} does not hold HxWxC images ({first.shape[1:]}).")
    version = getattr(base if base is not None else ds, "version", None)
    return LakeInfo(rows, class_names, tuple(first.shape[1:]), version)


@dataclass(frozen=True)
class LakeSource:
    """Where a dataset lives; cheap to pickle into DataLoader workers."""

    url: str
    creds: dict[str, str] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    query: str | None = None
    version: str | None = None  # a Deep Lake commit id; None: the latest

    def open_base(self) -> Any:
        ds = open_lake(self.url, self.creds, self.token)
        if self.version is None or getattr(ds, "version", self.version) == self.version:
            return ds
        try:
            return ds.history[self.version].open()
        except Exception as e:
            raise LakeError(
                f"version {self.version} of {self.url!r}, recorded in the checkpoint, cannot be opened "
                f"({brief(e)}). Restore it, or pass --data.use_latest_version true to read the latest one."
            ) from e

    def open(self) -> Any:
        """The dataset, or the view its TQL ``query`` selects."""
        return self.select(self.open_base())

    def row_ids(self, base: Any) -> np.ndarray | None:
        """For a query view of ``base``, the dataset row behind each view row (``index`` names real rows)."""
        if not self.query:
            return None
        view = self.select(base.query(f"SELECT *, ROW_NUMBER() AS {ROW_ID}"))
        return np.asarray(view[ROW_ID][0 : len(view)], dtype=np.int64)

    def select(self, ds: Any) -> Any:
        """``ds`` itself, or the view of it that ``query`` selects."""
        if not self.query:
            return ds
        try:
            return ds.query(self.query)
        except Exception as e:
            raise LakeError(
                f"query {self.query!r} on {self.url!r} failed: {brief(e)}. Queries are Deep Lake TQL, e.g. "
                '"SELECT * WHERE labels IN (0, 1)" or "SELECT * WHERE ROW_NUMBER() < 1000".'
            ) from e


def _collate_rows(rows: list[dict]) -> dict:
    return default_collate(rows) if rows else {}


class BlockCache:
    """Recently read blocks of ``block_size`` consecutive rows, in one preallocated slab.

    A batch is served by a single gather from the slab; only blocks not yet held are read
    (one contiguous request each), replacing the least recently used ones. Holding a shuffle
    window's blocks means each block is read once per window.
    """

    def __init__(
        self, block_size: int, capacity: int, read: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    ):
        self.block_size, self.capacity, self.read = block_size, max(1, capacity), read
        self.slots: OrderedDict[int, int] = OrderedDict()  # block -> slot, least recent first
        self.images: np.ndarray | None = None
        self.labels: np.ndarray | None = None

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks = idx // self.block_size
        wanted, where = np.unique(blocks, return_inverse=True)
        wanted_list = wanted.tolist()
        if len(wanted_list) > self.capacity:  # a batch wider than the cache: grow, never thrash
            self._resize(len(wanted_list))
        for block in wanted_list:
            if block in self.slots:
                self.slots.move_to_end(block)
        for block in wanted_list:
            if block not in self.slots:
                self._load(block)
        slot = np.fromiter((self.slots[b] for b in wanted_list), np.int64, len(wanted_list))
        rows = slot[where] * self.block_size + (idx - blocks * self.block_size)
        return self.images[rows], self.labels[rows]

    def _load(self, block: int) -> None:
        start = block * self.block_size
        images, labels = self.read(start, start + self.block_size)
        if self.images is None:
            self._resize(self.capacity, images)
        if len(self.slots) < self.capacity:
            slot = len(self.slots)
        else:
            _, slot = self.slots.popitem(last=False)
        rows = slice(slot * self.block_size, slot * self.block_size + len(images))
        self.images[rows], self.labels[rows] = images, labels
        self.slots[block] = slot

    def _resize(self, capacity: int, like: np.ndarray | None = None) -> None:
        like = self.images if like is None else like
        images = np.empty((capacity * self.block_size, *like.shape[1:]), dtype=like.dtype)
        labels = np.empty(capacity * self.block_size, dtype=np.int64)
        if self.images is not None:
            images[: len(self.images)], labels[: len(self.labels)] = self.images, self.labels
        self.images, self.labels, self.capacity = images, labels, capacity


class LakeDataset(Dataset):
    """Rows of one Deep Lake dataset as ``{'images', 'labels', 'index'}``.

    Fast path (no ``sample_transform``): ``__getitems__`` returns a whole batch with images
    as uint8 ``(B, C, H, W)``, gathered from a per-process ``BlockCache`` of contiguous
    column reads. Normalisation and augmentation then run on whole batches on the device.

    Fidelity path (a ``sample_transform``): each row goes through ``ds.pytorch(transform)``
    one at a time, as in the Deep Lake tutorial.
    """

    def __init__(
        self,
        source: LakeSource,
        info: LakeInfo,
        image_column: str = "images",
        label_column: str = "labels",
        sample_transform: Callable[[Any], dict] | None = None,
        block_size: int = 1024,
        cache_blocks: int = 16,
        skip_corrupt: bool = False,
    ) -> None:
        self.source, self.info = source, info
        self.image_column, self.label_column = image_column, label_column
        self.sample_transform = sample_transform
        self.block_size, self.cache_blocks = block_size, max(1, cache_blocks)
        self.skip_corrupt = skip_corrupt
        self._ds: Any = None
        self._rows: Any = None
        self._pid: int | None = None
        self._cache: BlockCache | None = None

    def __getstate__(self) -> dict:
        # Handles do not cross processes: each worker opens its own.
        return {**self.__dict__, "_ds": None, "_rows": None, "_pid": None, "_cache": None}

    @property
    def ds(self) -> Any:
        if self._ds is None or self._pid != os.getpid():
            self._ds = self.source.open()
            self._rows = self._ds.pytorch(transform=self.sample_transform)
            self._cache = BlockCache(self.block_size, self.cache_blocks, self._read)
            self._pid = os.getpid()
        return self._ds

    def __len__(self) -> int:
        return self.info.rows

    def __getitem__(self, index: int) -> dict:
        self.ds  # noqa: B018 - opens the handle in this process
        with storage_errors(f"reading row {self._row_id(int(index))} of {self.source.url!r}"):
            row = self._rows[int(index)]
        if self.sample_transform is None:
            images = torch.from_numpy(_hwc(np.asarray(row[self.image_column]))).permute(2, 0, 1)
        else:  # a per-column transform returns the columns under their own names
            images = row[self.image_column]
        labels = row[self.label_column]
        if isinstance(labels, np.ndarray | np.generic):  # Deep Lake's read-only scalars
            labels = int(labels)
        row = int(index) if self.info.row_ids is None else int(self.info.row_ids[index])
        return {"images": images, "labels": labels, "index": row}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        if self.sample_transform is not None:
            return _collate_rows([self[i] for i in indices])
        self.ds  # noqa: B018 - opens the handle (and cache) in this process
        idx = np.asarray(indices, dtype=np.int64)
        images, labels = self._cache.gather(idx)
        rows = idx if self.info.row_ids is None else self.info.row_ids[idx]
        batch = {"images": images, "labels": labels, "index": rows}
        if self.skip_corrupt:
            keep = labels != CORRUPT
            batch = {key: value[keep] for key, value in batch.items()}
            batch["skipped"] = np.int64(len(keep) - keep.sum())
        return {key: torch.as_tensor(value) for key, value in batch.items()}

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` as contiguous column slices: images (N, C, H, W), labels (N,).

        Deep Lake retries transient storage errors (resets, 5xx) itself; what still fails is
        permanent. Corrupt images come back as ``None``: an error naming the row, or with
        ``skip_corrupt`` a label of ``CORRUPT`` that ``__getitems__`` drops and counts.
        """
        stop = min(stop, self.info.rows)
        hint = (
            "Transient storage errors were already retried; check that the storage is reachable and "
            "the credentials are still valid, then resume with --ckpt_path last."
        )
        with storage_errors(f"reading rows {start}..{stop - 1} of {self.source.url!r}", hint):
            images = self.ds[self.image_column][start:stop]
            labels = np.array(self.ds[self.label_column][start:stop], dtype=np.int64)  # a writable copy
        if not isinstance(images, np.ndarray) or images.dtype == object:
            images = self._drop_corrupt(list(images), labels, start)
        chw = _hwc(images, batched=True).transpose(0, 3, 1, 2)
        return chw, labels

    def _drop_corrupt(self, images: list, labels: np.ndarray, start: int) -> np.ndarray:
        bad = [i for i, image in enumerate(images) if image is None]
        if bad:
            rows = [self._row_id(start + i) for i in bad]
            if not self.skip_corrupt:
                raise LakeError(
                    f"row {rows[0]} of {self.source.url!r} holds corrupt image bytes (corrupt rows "
                    f"here: {rows}). Re-ingest the dataset, or pass --data.skip_corrupt true to skip "
                    "such rows (counted as train_skipped_rows / val_skipped_rows in the logs)."
                )
            shape = next((np.asarray(image).shape for image in images if image is not None), None)
            for i in bad:
                images[i], labels[i] = np.zeros(shape or self.info.sample_shape, np.uint8), CORRUPT
        try:
            return np.stack([np.asarray(image) for image in images])
        except ValueError:
            raise LakeError(
                f"rows {start}..{start + len(images) - 1} of {self.source.url!r} hold images of differing "
                "shapes; re-ingest with one size (python -m fashion_lake.ingest image_folder --image_size N)."
            ) from None

    def _row_id(self, view_row: int) -> int:
        return view_row if self.info.row_ids is None else int(self.info.row_ids[view_row])


def _hwc(images: np.ndarray, batched: bool = False) -> np.ndarray:
    """Give grayscale images stored as HxW a channel axis."""
    return images[..., None] if images.ndim == (3 if batched else 2) else images
