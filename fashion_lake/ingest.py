"""Write image-classification data into Deep Lake 4.x datasets, atomically.

Three sources: the four canonical Fashion-MNIST IDX ``.gz`` files (checksummed), a
torchvision ``ImageFolder`` tree, and a Deep Lake 3 dataset (``convert``, through
``deeplake.convert``, keeping its columns). The first two get an ``images`` column (uint8
HxWxC) and a ``labels`` ClassLabel column whose metadata holds ``class_names``.

Atomic: a local destination is written beside itself and renamed into place only once
committed; a remote one carries ``fashion_lake.ingest = "in_progress"`` until the final
commit, and the data module refuses to read it in that state. Either way a failed or killed
ingest never leaves something that opens as a complete dataset, and re-running works.

Run ``python -m fashion_lake.ingest --help``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import sys
import tempfile
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from fashion_lake.errors import FashionLakeError
from fashion_lake.lake import (
    INGEST_KEY,
    LakeError,
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
IMAGE_COMPRESSIONS = ("null", "png", "jpeg")
APPEND_ROWS = 4096


class IngestError(LakeError):
    """Bad ingest input: the message names the file and the fix."""


# ----------------------------------------------------------------------------- IDX files
def _official_md5() -> dict[str, str]:
    """The checksums torchvision publishes for the official Fashion-MNIST files."""
    from torchvision.datasets import FashionMNIST

    return dict(FashionMNIST.resources)


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

    A ``SHA256SUMS`` file beside them (as published with a mirror) takes precedence over
    torchvision's MD5 list of the official files.
    """
    raw = Path(raw_dir).expanduser()
    if not raw.is_dir():
        raise IngestError(
            f"raw_dir {str(raw)!r} is not a directory. Pass the folder holding the four "
            "Fashion-MNIST IDX .gz files (e.g. --data.raw_dir ../shared/fashion-mnist)."
        )
    sha256, md5 = _read_sums(raw), _official_md5()
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
    """Fetch the four IDX files from torchvision's mirrors into ``raw_dir`` (online users)."""
    from torchvision.datasets.utils import download_url

    raw = Path(raw_dir).expanduser()
    raw.mkdir(parents=True, exist_ok=True)
    for name, md5 in _official_md5().items():
        if (raw / name).is_file():
            continue
        errors = []
        for mirror in FASHION_MNIST_MIRRORS:
            try:
                download_url(mirror + name, str(raw), filename=name, md5=md5)
                break
            except (urllib.error.URLError, OSError, RuntimeError) as e:
                errors.append(f"{mirror}: {e}")
        else:
            raise IngestError(
                f"could not download {name} ({'; '.join(errors)}). If this machine is offline, "
                "pass --data.raw_dir DIR (or set FASHION_LAKE_RAW_DIR) pointing at a folder "
                "with the four Fashion-MNIST IDX .gz files."
            )
    return raw


# ----------------------------------------------------------------------------- image folder
def load_image_folder(
    root: str | Path, mode: str = "L", image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Read a torchvision ImageFolder tree (one subfolder per class) into arrays."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root).expanduser()
    if not root.is_dir():
        raise IngestError(f"image folder {str(root)!r} is not a directory.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise IngestError(f"{root} has no class subfolders; expected root/<class_name>/<image files>.")
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in IMG_EXTENSIONS
    ]
    if not files:
        raise IngestError(f"{root} holds no image files ({', '.join(IMG_EXTENSIONS)}).")
    arrays, shape = [], None
    for path, _ in tqdm(files, desc=f"reading {root.name}", unit="img"):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if image_size is not None:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise IngestError(f"{path} is not a readable image ({e}).") from e
        array = array[..., None] if array.ndim == 2 else array
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise IngestError(
                f"{path} is {array.shape}, earlier images are {shape}; pass --image_size N "
                "to resize every image to NxN."
            )
        arrays.append(array)
    source = {"kind": "image-folder", "root": str(root), "rows": len(files), "mode": mode}
    labels = np.array([label for _, label in files], dtype=np.uint32)
    return np.stack(arrays), labels, classes, source


# ----------------------------------------------------------------------------- writing
def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def write_lake(
    dest: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    source: dict,
    compression: str = "null",
    overwrite: bool = False,
    creds: dict[str, str] | None = None,
    token: str | None = None,
) -> str:
    """Write ``images``/``labels`` to ``dest`` atomically and return the committed version."""
    import deeplake

    if compression not in IMAGE_COMPRESSIONS:
        raise IngestError(f"compression must be one of {IMAGE_COMPRESSIONS}, not {compression!r}.")
    if len(images) == 0:
        raise IngestError("nothing to ingest: the source holds no images.")
    final = _clear_destination(dest, overwrite, creds, token)
    work_url = dest if final is None else _partial(final)
    try:
        ds = deeplake.create(work_url, **storage_args(creds, token))
        ds.metadata[INGEST_KEY] = "in_progress"
        ds.add_column("images", deeplake.types.Image(dtype="uint8", sample_compression=compression))
        ds.add_column("labels", deeplake.types.ClassLabel("uint32"))
        ds["labels"].metadata["class_names"] = list(class_names)
        ds.commit("fashion_lake: schema")
        with tqdm(total=len(images), desc=f"writing {dest}", unit="img") as bar:
            for part in _batches(len(images), APPEND_ROWS):
                ds.append({"images": images[part], "labels": labels[part].astype(np.uint32)})
                bar.update(part.stop - part.start)
        ds.metadata["source"] = source
        ds.metadata[INGEST_KEY] = "complete"
        ds.commit(f"fashion_lake: ingest {len(images)} rows from {source['kind']}")
        version = ds.version
        del ds
        if final is not None:
            _replace(work_url, final)
    except BaseException:
        if final is not None:
            shutil.rmtree(work_url, ignore_errors=True)
        raise
    return version


def _clear_destination(
    dest: str, overwrite: bool, creds: dict[str, str] | None, token: str | None
) -> Path | None:
    """Check that ``dest`` may be written; return its local path, or None for a remote URL.

    A remote dataset left unfinished by an earlier ingest (marked ``in_progress``) is replaced;
    a complete one, or any dataset not written by us, only with ``overwrite``.
    """
    import deeplake

    if is_local(dest):
        final = local_path(dest)
        if final.exists() and not overwrite:
            raise IngestError(f"{final} already exists; pass --overwrite true to replace it.")
        final.parent.mkdir(parents=True, exist_ok=True)
        return final
    if deeplake.exists(dest, **storage_args(creds, token)):
        state = open_lake(dest, creds, token, check_complete=False).metadata
        if not overwrite and (INGEST_KEY not in state or state[INGEST_KEY] == "complete"):
            raise IngestError(f"{dest} already exists; pass --overwrite true to replace it.")
        deeplake.delete(dest, **storage_args(creds, token))
    return None


def _partial(final: Path) -> str:
    """A hidden sibling of ``final`` to write into, renamed into place once complete."""
    return str(final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}")


def _replace(work_url: str, final: Path) -> None:
    if final.exists():  # overwrite: the old one goes only once the new one is whole
        shutil.rmtree(final)
    os.replace(work_url, final)


def fashion_mnist(
    dest: str,
    raw_dir: str | None = None,
    split: Literal["train", "test"] = "train",
    download: bool = False,
    compression: Literal["null", "png", "jpeg"] = "null",
    overwrite: bool = False,
    creds: dict[str, str] | None = None,
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
    if download:
        download_fashion_mnist(raw_dir)
    images, labels, source = load_fashion_mnist(raw_dir, split)
    return write_lake(
        dest, images, labels, FASHION_MNIST_CLASSES, source, compression, overwrite, creds, token
    )


def image_folder(
    root: str,
    dest: str,
    mode: Literal["L", "RGB"] = "L",
    image_size: int | None = None,
    compression: Literal["null", "png", "jpeg"] = "null",
    overwrite: bool = False,
    creds: dict[str, str] | None = None,
    token: str | None = None,
) -> str:
    """Ingest a torchvision ImageFolder tree: root/<class_name>/<image>.

    Args:
        root: The folder whose subfolders are the classes (sorted names give class ids).
        dest: Deep Lake URL to create.
        mode: PIL mode to convert every image to ("L" grayscale or "RGB").
        image_size: Resize every image to image_size x image_size (needed if sizes differ).
        compression: Image sample compression: "null" (raw), "png" or "jpeg" (lossy).
        overwrite: Replace an existing dataset at dest.
        creds: Storage credentials, secrets by reference (see ``fashion_mnist``).
        token: Activeloop token by reference.
    """
    check_secrets(creds, token, flag="--")
    images, labels, classes, source = load_image_folder(root, mode, image_size)
    return write_lake(dest, images, labels, classes, source, compression, overwrite, creds, token)


def convert(
    src: str,
    dest: str,
    overwrite: bool = False,
    creds: dict[str, str] | None = None,
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
    from jsonargparse import CLI

    try:
        version = CLI([fashion_mnist, image_folder, convert], args=args)
    except FashionLakeError as e:
        print(f"fashion_lake.ingest: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"committed version {version}")


if __name__ == "__main__":
    main()
