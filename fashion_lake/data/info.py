"""Checking a dataset once, up front: columns, classes, the first labels and image layout.

``inspect_lake`` returns a ``LakeInfo``, what the loaders need to know; ``reader.py`` checks
every other row as it reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fashion_lake.data.decode import image_channels, image_codec
from fashion_lake.errors import DatasetError

SAMPLE_ROWS = 256  # a compressed lake's first rows, whose headers set its channels (colour if any is)


@dataclass(frozen=True)
class LakeInfo:
    """What the model needs to know about a dataset, checked once up front."""

    rows: int
    class_names: list[str]
    sample_shape: tuple[int, ...]  # H, W, C
    version: str | None
    codec: str | None = None  # the image column's compression when rows are decoded from bytes here
    row_bytes: float = 0.0  # a row as read: its encoded size (mean of SAMPLE_ROWS), or its pixels
    row_ids: np.ndarray | None = field(default=None, repr=False, compare=False)  # view row -> dataset row


def inspect_lake(
    ds: Any,
    url: str,
    image_column: str,
    label_column: str,
    class_names: Sequence[str] | None = None,
    base: Any = None,
    expected_classes: Sequence[str] | None = None,
) -> LakeInfo:
    """Check columns, size, class names and the first rows' labels; return what the loaders need.

    ``ds`` may be a query view; class names then come from ``base``, the dataset it views.
    ``expected_classes`` are the classes the model is built for (the training set's): a dataset
    with other classes is refused as such before its labels are checked against its own names.
    """
    columns = [c.name for c in ds.schema.columns]
    missing = [c for c in (image_column, label_column) if c not in columns]
    if missing:
        raise DatasetError(
            f"{url!r} has no column {', '.join(map(repr, missing))}; it has {columns}. Set "
            "--data.image_column / --data.label_column to the dataset's column names."
        )
    rows = len(ds)
    if rows == 0:
        raise DatasetError(f"{url!r} is empty (0 rows); ingest data into it first, or widen the query.")
    if class_names is None:
        meta = (ds if base is None else base)[label_column].metadata
        if "class_names" not in meta or not meta["class_names"]:
            raise DatasetError(
                f"column {label_column!r} of {url!r} has no class names in its metadata; make it "
                "a ClassLabel column with metadata['class_names'] or pass --data.class_names."
            )
        class_names = meta["class_names"]
    class_names = [str(c) for c in class_names]
    if expected_classes is not None and class_names != list(expected_classes):
        raise DatasetError(
            f"{url!r} has classes {class_names}, but the model is built for {list(expected_classes)} "
            "(the training set's); use datasets with the same classes, in the same order."
        )
    # the first rows only: the readers check every label as they read it (a scan here would
    # download the whole column on every rank)
    sample = min(rows, SAMPLE_ROWS)
    labels = np.asarray(ds[label_column][0:sample])
    if labels.ndim != 1 and labels.reshape(sample, -1).shape[1] != 1:
        raise DatasetError(
            f"column {label_column!r} of {url!r} holds {labels.shape[1:]} arrays, not one class id per row."
        )
    labels = labels.reshape(sample)  # Deep Lake 3 class_label rows are (1,) arrays
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(class_names):
        bad = int(np.flatnonzero((labels < 0) | (labels >= len(class_names)))[0])
        raise DatasetError(
            f"row {bad} of {url!r} has label {int(labels[bad])}, outside 0..{len(class_names) - 1} "
            f"({len(class_names)} class names); fix the labels or the class names."
        )
    for row in range(min(rows, 16)):  # the first image that decodes: a corrupt row is the reader's to name
        first = np.asarray(ds[image_column][row : row + 1])
        if first.dtype != object:
            break
    if first.dtype != np.uint8:  # the pipeline scales 0..255 to 0..1 and augments uint8 batches
        raise DatasetError(
            f"column {image_column!r} of {url!r} holds {first.dtype} images; fashion_lake reads 8-bit "
            "images (uint8, 0..255). Store them as uint8 (e.g. (x * 255).round().astype('uint8') for "
            "values in 0..1) or ingest the image files with `python -m fashion_lake.ingest image_folder`."
        )
    if first.ndim == 3:  # H, W without a channel axis
        first = first[..., None]
    if first.ndim != 4:
        raise DatasetError(
            f"column {image_column!r} of {url!r} does not hold HxWxC images ({first.shape[1:]})."
        )
    version = getattr(base if base is not None else ds, "version", None)
    codec, shape = image_codec(ds, image_column), tuple(first.shape[1:])
    row_bytes = float(np.prod(shape))
    if codec is not None:
        with suppress(Exception):  # unreadable or undecodable here: the reader names the row later
            encoded = ds[image_column].get_bytes(slice(0, min(rows, SAMPLE_ROWS)))
            row_bytes = sum(len(data) for data in encoded) / len(encoded)
            # Deep Lake may decode grey jpeg as RGB: the headers say what rows hold
            shape = (*shape[:2], max(image_channels(data) for data in encoded))
    return LakeInfo(rows, class_names, shape, version, codec, row_bytes)
