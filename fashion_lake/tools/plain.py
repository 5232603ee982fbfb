"""Lakes written as a user writes them with plain ``deeplake``: for the benchmarks and the tests."""

from __future__ import annotations

import numpy as np


def write_plain_lake(
    url: str, images: np.ndarray, labels: np.ndarray, compression: str, class_names: list[str]
) -> None:
    """Images (N, H, W, C) and labels as a user writes them with plain deeplake."""
    import deeplake

    ds = deeplake.create(url)
    ds.add_column("images", deeplake.types.Image(sample_compression=compression))
    ds.add_column("labels", deeplake.types.ClassLabel("uint32"))
    ds["labels"].metadata["class_names"] = list(class_names)
    for start in range(0, len(images), 4096):
        ds.append({"images": images[start : start + 4096], "labels": labels[start : start + 4096]})
    ds.commit()
