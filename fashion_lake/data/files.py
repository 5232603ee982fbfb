"""Image files read in place, for ``predict``: ``--data.predict_url`` naming a folder or one file.

Nothing is ingested: each file is decoded when its batch is read, turned into the model's
channels and size, and its path travels with the batch into ``predictions.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from fashion_lake.data.crops import Crops
from fashion_lake.data.decode import to_channels
from fashion_lake.errors import DatasetError
from fashion_lake.ingest.folder import GREY_MODES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def local_file_path(url: str) -> Path | None:
    """The local path a URL names (a plain path or ``file://``), else None."""
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    return None if "://" in url else Path(url)


def image_files(url: str | None) -> list[Path] | None:
    """The image files ``url`` names: one image file, or a folder holding image files (searched
    recursively, in sorted order). None for anything else (a Deep Lake dataset, a remote URL, a
    path not there yet), which stays a dataset URL."""
    path = local_file_path(url) if url else None
    if path is None:
        return None
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(
                f"{url!r} is a file but not an image ({', '.join(sorted(IMAGE_SUFFIXES))}); name an image, "
                "a folder of images, or a Deep Lake dataset."
            )
        return [path]
    if not path.is_dir():
        return None
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return found or None


def read_image(path: Path, channels: int) -> np.ndarray:
    """A file's pixels as uint8 ``(H, W, channels)``, upright (EXIF orientation applied)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image = image.convert("L" if image.mode in GREY_MODES else "RGB")
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"cannot read the image {str(path)!r}: {e}") from None
    return to_channels(pixels[..., None] if pixels.ndim == 2 else pixels, channels)


class ImageFiles(Dataset):
    """Image files as rows ``{"images": (C, H, W) uint8, "index": i, "path": str}``.

    Each image is brought to ``channels`` and, with ``crops``, centre-cropped as evaluation rows
    of a lake are (``data.image_size``); else resized to ``size`` when given (the size the model
    was trained on), else used as it is (then all files must share one size).
    """

    def __init__(
        self,
        paths: list[Path],
        channels: int,
        crops: Crops | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.paths, self.channels, self.crops = list(paths), channels, crops
        self.resizer = Crops(size) if size is not None and crops is None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        pixels = read_image(path, self.channels)
        if self.crops is not None:
            pixels = self.crops.pixels(pixels, self.channels, train=False, epoch=0, row=index)
        elif self.resizer is not None and pixels.shape[:2] != self.resizer.size:
            pixels = self.resizer.resize(pixels, (0.0, 0.0, float(pixels.shape[0]), float(pixels.shape[1])))
        images = torch.from_numpy(np.array(pixels, order="C")).permute(2, 0, 1)  # a writable copy
        return {"images": images, "index": index, "path": str(path)}


def collate(rows: list[dict]) -> dict:
    """Rows of ``ImageFiles`` as one batch; files of different sizes are one clear error."""
    shapes = {tuple(r["images"].shape) for r in rows}
    if len(shapes) > 1:
        raise DatasetError(
            f"image files of different sizes in one batch ({sorted(shapes)}); set --data.image_size N to "
            "crop them to one size, as the model was trained on."
        )
    return {
        "images": torch.stack([r["images"] for r in rows]),
        "index": torch.tensor([r["index"] for r in rows]),
        "path": [r["path"] for r in rows],
    }
