"""The datasets of a run, by split: where each lives, what it holds, its read units, and
building Fashion-MNIST where none exists yet. Plain Python: no Lightning, testable alone.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fashion_lake.data.info import LakeInfo, inspect_lake
from fashion_lake.data.units import UNIT_BYTES, byte_units, chunk_units, log_files
from fashion_lake.errors import DatasetError, IngestError
from fashion_lake.ingest.write import FASHION_MNIST_CLASSES, download_fashion_mnist, fashion_mnist
from fashion_lake.lake import (
    V3_NOTICE,
    Creds,
    LakeSource,
    is_local,
    is_v3,
    lake_format,
    local_path,
    storage_args,
    storage_errors,
)


def _default_raw_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fashion_lake" / "fashion-mnist"


class Catalog:
    """One dataset per split (``urls``: train, val, test, predict), opened and checked on first
    use, then cached. A checkpoint's Deep Lake versions go in ``pinned`` (url -> version), read
    unless ``use_latest_version``; ``queries`` select rows per split (Deep Lake TQL).
    """

    def __init__(
        self,
        urls: dict[str, str],
        *,
        image_column: str = "images",
        label_column: str = "labels",
        class_names: list[str] | None = None,
        queries: dict[str, str | None] | None = None,
        use_latest_version: bool = False,
        raw_dir: str | None = None,
        download: bool = False,
        creds: Creds | None = None,
        token: str | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.urls = dict(urls)
        self.image_column, self.label_column = image_column, label_column
        self.user_class_names = class_names
        self.queries = dict(queries or {})
        self.use_latest_version = use_latest_version
        self.raw_dir, self.download = raw_dir, download
        self.creds, self.token = creds, token
        self.say = say  # where notices go (rank zero's log in a run)
        self.pinned: dict[str, str] = {}
        self._infos: dict[tuple[str, str | None, str | None], LakeInfo] = {}
        self._opened: dict[tuple[str, str | None, str | None], Any] = {}
        self._reference_split: str | None | bool = False  # False: not looked up yet

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_opened": {}}  # open handles stay in their process

    def source(self, split: str) -> LakeSource:
        url = self.urls[split]
        version = None if self.use_latest_version else self.pinned.get(url)
        return LakeSource(url, self.creds, self.token, self.queries.get(split), version)

    def buildable(self, split: str) -> bool:
        url = self.urls[split]
        return is_local(url) and lake_format(url, self.creds, self.token) is None

    def info(self, split: str) -> LakeInfo:
        """Checked facts about one split's dataset (opened once, then cached)."""
        source = self.source(split)
        key = _key(source)
        if key not in self._infos:
            hint = "Check that the storage is reachable and the credentials are valid."
            with storage_errors(f"reading {source.url!r}", hint):  # labels, the first image, row ids
                base = source.open_base()  # opened once: the view and row ids derive from it
                if is_v3(base):
                    self.say(V3_NOTICE.format(url=source.url))
                reference = self.reference_split
                expected = None
                if reference is not None and self.urls[reference] != source.url:
                    expected = self.info(reference).class_names
                view = source.select(base)
                info = inspect_lake(
                    view,
                    source.url,
                    self.image_column,
                    self.label_column,
                    self.user_class_names,
                    base,
                    expected,
                )
                self._infos[key] = dataclasses.replace(info, row_ids=source.row_ids(base))
                self._opened[key] = view
        return self._infos[key]

    def opened(self, split: str) -> Any:
        """The split's dataset (or query view) as ``info`` opened it in this process, else None:
        reading it here needs no second open (several requests to storage). Kept for the run,
        so a forked worker, which opens its own, never frees the copy it inherits."""
        return self._opened.get(_key(self.source(split)))

    @property
    def reference_split(self) -> str | None:
        """The split whose dataset defines the classes: train if it exists, else val; None if unbuilt."""
        if self._reference_split is False:
            self._reference_split = next((s for s in ("train", "val") if not self.buildable(s)), None)
        return self._reference_split  # type: ignore[return-value]

    @property
    def reference(self) -> LakeInfo | None:
        return None if self.reference_split is None else self.info(self.reference_split)

    @property
    def class_names(self) -> list[str]:
        """Class names from the reference dataset's ClassLabel metadata (Fashion-MNIST's until built)."""
        if self.reference is None:
            return list(self.user_class_names or FASHION_MNIST_CLASSES)
        return self.reference.class_names

    def units(self, split: str) -> tuple[np.ndarray, str]:
        """The split's read units: the image column's storage chunks where its log says (local
        and S3 datasets), else runs of rows of Deep Lake's chunk size; and which of the two."""
        source, info = self.source(split), self.info(split)
        creds = storage_args(self.creds)["creds"]
        log = None if info.row_ids is not None else log_files(source.url, creds)
        if log is not None:
            found = chunk_units(log, self.image_column, source.version)
            if found is not None and int(found[-1]) == info.rows:
                return found, "Deep Lake chunks"
        return byte_units(info.rows, info.row_bytes), f"~{UNIT_BYTES / 1e6:.0f} MB runs of rows"

    def build_missing(self) -> None:
        """Build missing local Fashion-MNIST lakes from the IDX files.

        Only on a fresh start, where neither the training nor the validation dataset exists:
        a missing dataset beside existing ones is more likely a mistyped URL than a wish for
        a new Fashion-MNIST copy there, so it is refused, naming the URL.
        """
        missing: dict[str, str] = {}  # url -> its first split; test and predict default to val's URL
        for split, url in self.urls.items():
            if url in missing or lake_format(url, self.creds, self.token) is not None:
                continue
            if is_local(url) and local_path(url).exists():
                raise DatasetError(
                    f"{url!r} (data.{split}_url) exists but is not a Deep Lake dataset (4.x, or 3.x read "
                    "through a query); point the URL at a dataset."
                )
            if not is_local(url):
                raise DatasetError(
                    f"no Deep Lake dataset at {url!r} (data.{split}_url). Check the URL and credentials, "
                    f"or create it with `python -m fashion_lake.ingest fashion_mnist {url} --raw_dir DIR`."
                )
            missing.setdefault(url, split)
        if not missing:
            return
        if self.urls["train"] not in missing or self.urls["val"] not in missing:
            url, split = next(iter(missing.items()))
            fm_split = "train" if split == "train" else "test"
            raise DatasetError(
                f"no Deep Lake dataset at {url!r} (data.{split}_url); check the URL. Fashion-MNIST is built "
                "only when neither the training nor the validation dataset exists; to build this one, run "
                f"`python -m fashion_lake.ingest fashion_mnist {url} --split {fm_split} --raw_dir DIR`."
            )
        where = " and ".join(map(repr, missing))
        raw_dir = self.raw_dir or os.environ.get("FASHION_LAKE_RAW_DIR")
        if raw_dir is None:
            if not self.download:
                raise DatasetError(
                    f"no Deep Lake dataset at {where}. Check the URLs, or build Fashion-MNIST there from "
                    "its IDX files with --data.raw_dir DIR (or FASHION_LAKE_RAW_DIR), or with "
                    "--data.download true."
                )
            try:
                raw_dir = str(download_fashion_mnist(_default_raw_cache()))
            except IngestError as e:
                raise DatasetError(
                    f"no Deep Lake dataset at {where}, and building Fashion-MNIST failed: {e}"
                ) from e
        for url, split in missing.items():
            fm_split = "train" if split == "train" else "test"
            self.say(f"Building Fashion-MNIST {fm_split} split at {url} from {raw_dir}")
            fashion_mnist(dest=url, raw_dir=raw_dir, split=fm_split)
        self._reference_split = False  # the built datasets define the classes now


def _key(source: LakeSource) -> tuple[str, str | None, str | None]:
    """What a split's dataset is cached by: where, which rows, which version."""
    return source.url, source.query, source.version
