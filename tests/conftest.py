"""Shared fixtures: tiny Fashion-MNIST IDX files and lakes cut from the real data in ../shared."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_lake.ingest.write import IDX_FILES, fashion_mnist, read_idx

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CONFIGS = REPO / "configs"
TINY_ROWS = {"train": 120, "test": 50}


def _real_raw_dir() -> Path:
    env = os.environ.get("FASHION_LAKE_RAW_DIR")
    return Path(env) if env else REPO.parent / "shared" / "fashion-mnist"


@pytest.fixture(scope="session")
def real_raw_dir() -> Path:
    path = _real_raw_dir()
    assert (path / "train-images-idx3-ubyte.gz").is_file(), (
        f"real Fashion-MNIST IDX files not found at {path}; set FASHION_LAKE_RAW_DIR"
    )
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="session")
def v3_lakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Fashion-MNIST in Deep Lake 3 format (../shared/fashion-mnist-v3, read-only there), copied to a
    temporary folder so that nothing a test does can write to the shared copy: split -> path."""
    import shutil

    env = os.environ.get("FASHION_LAKE_V3_DIR")
    shared = Path(env) if env else REPO.parent / "shared" / "fashion-mnist-v3"
    assert (shared / "fashion-mnist-test" / "dataset_meta.json").is_file(), (
        f"Deep Lake 3 Fashion-MNIST not found at {shared}; set FASHION_LAKE_V3_DIR"
    )
    root = tmp_path_factory.mktemp("v3")
    lakes = {}
    for split in ("train", "test"):
        lakes[split] = str(root / f"fashion-mnist-{split}")
        shutil.copytree(shared / f"fashion-mnist-{split}", lakes[split])
        for path in Path(lakes[split]).rglob("*"):  # the shared copy is read-only; the copy need not be
            path.chmod(path.stat().st_mode | 0o200)
        Path(lakes[split]).chmod(0o755)
    return lakes


@pytest.fixture(scope="session")
def tiny_raw_dir(real_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first rows of each real IDX file, rewritten as IDX with a SHA256SUMS beside them."""
    out = tmp_path_factory.mktemp("raw")
    sums = []
    for split, names in IDX_FILES.items():
        for name in names:
            write_idx(out / name, read_idx(real_raw_dir / name)[: TINY_ROWS[split]])
            sums.append(f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return out


@pytest.fixture(scope="session")
def tiny_lakes(tiny_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Local Deep Lake datasets: 120 train rows and 50 test rows."""
    root = tmp_path_factory.mktemp("lakes")
    lakes = {split: str(root / f"fashion-{split}") for split in IDX_FILES}
    for split, url in lakes.items():
        fashion_mnist(dest=url, raw_dir=str(tiny_raw_dir), split=split)
    return lakes


MakeLake = Callable[..., str]


def global_batches(url: str, global_batch: int, epoch: int = 0, drop_last: bool = True) -> list[list[int]]:
    """The rows of each global training batch of ``epoch`` as the data module orders them, by
    global position: what every world size and worker count must train on."""
    from fashion_lake import DeepLakeDataModule

    dm = DeepLakeDataModule(train_url=url, val_url=url, batch_size=global_batch, drop_last=drop_last)
    order = dm.train_dataloader().order_of(epoch)
    return [order.batch(step, range(order.partitions))[1].tolist() for step in range(order.steps)]


def write_small_lake(
    url: str,
    rows: int = 10,
    image_column: str = "images",
    labels: list[int] | None = None,
    class_names: list[str] | None = ("a", "b", "c"),
    dtype: str = "uint8",
) -> str:
    """A small lake of 4x4 grey images with chosen columns, labels, class names and pixel type."""
    import deeplake

    ds = deeplake.create(url)
    if dtype == "uint8":
        ds.add_column(image_column, deeplake.types.Image(dtype="uint8", sample_compression="null"))
    else:  # an array column: what a user writes from floats with plain deeplake
        ds.add_column(image_column, deeplake.types.Array(dtype, dimensions=3))
    ds.add_column("labels", deeplake.types.ClassLabel("int32"))
    if class_names is not None:
        ds["labels"].metadata["class_names"] = list(class_names)
    if rows:
        labels = labels if labels is not None else [i % 3 for i in range(rows)]
        images = np.full((rows, 4, 4, 1), 0.5 if dtype != "uint8" else 128, dtype)
        ds.append({image_column: images, "labels": np.array(labels, np.int32)})
    ds.commit()
    return url


@pytest.fixture
def make_lake(tmp_path: Path) -> MakeLake:
    """Write a small lake (``write_small_lake``) under tmp_path; return its path."""

    def make(**options: object) -> str:
        return write_small_lake(str(tmp_path / f"lake-{len(list(tmp_path.iterdir()))}"), **options)

    return make


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    """A test overlay: logs under tmp_path, no progress bar."""
    path = tmp_path / "test.yaml"
    path.write_text(
        f"""trainer:
  default_root_dir: {tmp_path}/runs
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  logger:
    - class_path: pytorch_lightning.loggers.TensorBoardLogger
      init_args: {{save_dir: {tmp_path}/runs, name: test}}
"""
    )
    return path


@pytest.fixture
def cli_args(tiny_lakes: dict[str, str], run_config: Path) -> list[str]:
    """The shipped config plus the test overlay, on the tiny lakes, one short epoch."""
    return [
        "--config", str(CONFIGS / "fashion.yaml"),
        "--config", str(run_config),
        "--data.train_url", tiny_lakes["train"],
        "--data.val_url", tiny_lakes["test"],
        "--data.batch_size", "16",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
    ]  # fmt: skip


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: a real refused connection, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI(args=...) warns when sys.argv also holds arguments (pytest's own)."""
    monkeypatch.setattr("sys.argv", ["fashion_lake"])


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m fashion_lake ARGS`` (or another module) as a subprocess in ``cwd``.

    ``tests/`` (so that configs can name the callbacks in ``recorder.py``) and this checkout are on its
    PYTHONPATH; the exit status must be ``returncode`` (output shown otherwise).
    """

    def run(args: list[str], cwd: Path, returncode: int = 0, module: str = "fashion_lake",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        # this checkout's fashion_lake, also where another copy is installed (e.g. editable, elsewhere)
        path = os.pathsep.join([str(TESTS), str(REPO)])
        full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        cmd = [sys.executable, "-m", module, *args]
        proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == returncode, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        return proc

    return run


@pytest.fixture(scope="session")
def codec_lakes(real_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """png and jpeg lakes written with plain deeplake from the first real IDX rows: codec -> split -> URL."""
    from fashion_lake.ingest.write import FASHION_MNIST_CLASSES, load_fashion_mnist
    from fashion_lake.tools.plain import write_plain_lake

    root = tmp_path_factory.mktemp("codec-lakes")
    lakes: dict[str, dict[str, str]] = {}
    for split, rows in TINY_ROWS.items():
        images, labels, _ = load_fashion_mnist(real_raw_dir, split)
        for codec in ("png", "jpeg"):
            url = str(root / f"{codec}-{split}")
            labels_ = labels[:rows].astype(np.uint32)
            write_plain_lake(url, images[:rows], labels_, codec, FASHION_MNIST_CLASSES)
            lakes.setdefault(codec, {})[split] = url
    return lakes


# An ImageFolder tree of tiny photos: class -> (file, PIL mode, (width, height)), each class's
# files in sorted order (ImageFolder's). Five sizes, a portrait one among them, and most of what
# a real folder mixes: RGB jpegs (the majority), RGB, L, RGBA and palette pngs, a grey jpeg
# among the colour ones, and a file in a nested folder.
PHOTO_LAYOUT: dict[str, list[tuple[str, str, tuple[int, int]]]] = {
    "bag": [("a.png", "L", (64, 48)), ("b.jpg", "RGB", (32, 24)), ("nested/c.jpg", "RGB", (40, 30))],
    "coat": [("a.jpg", "RGB", (64, 48)), ("b.jpg", "RGB", (20, 15)), ("c.png", "RGBA", (32, 24)),
             ("grey.jpg", "L", (24, 32))],
    "shoe": [("a.jpg", "RGB", (48, 36)), ("b.png", "RGB", (40, 30)), ("c.png", "P", (20, 15)),
             ("d.jpeg", "RGB", (24, 32))],
}  # fmt: skip


@dataclass
class PhotoFolder:
    """An ImageFolder tree written by ``add``: ``files`` in the order added, and their labels."""

    root: Path
    seed: int = 0
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @property
    def classes(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    @property
    def labels(self) -> list[int]:
        return [self.classes.index(f.relative_to(self.root).parts[0]) for f in self.files]

    def add(self, cls: str, name: str, mode: str, size: tuple[int, int], orientation: int = 1) -> Path:
        """Write root/cls/name: smooth random content (photo-like, so that jpeg is close to its
        source) plus a little noise (so that every file encodes differently), in PIL ``mode``
        ("P" a colour palette, "P-grey" a grey one), with an EXIF ``orientation`` if not 1."""
        width, height = size
        coarse = self.rng.integers(0, 256, (height // 12 + 2, width // 12 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
        pixels = np.clip(smooth + self.rng.integers(-2, 3, smooth.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        if mode == "P":
            img = img.quantize(16)
        elif mode == "P-grey":
            img = img.convert("L").convert("RGB").quantize(16)
        elif mode == "RGBA":
            img.putalpha(Image.fromarray(self.rng.integers(0, 256, (height, width), dtype=np.uint8)))
        else:
            img = img.convert(mode)
        path = self.root / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        options: dict = {"quality": 90} if path.suffix in (".jpg", ".jpeg") else {}
        if orientation != 1:
            options["exif"] = Image.Exif()
            options["exif"][0x0112] = orientation  # the EXIF Orientation tag
        img.save(path, **options)
        self.files.append(path)
        return path

    def add_corrupt(self, cls: str, kind: str) -> Path:
        """A file named as a jpeg that does not decode, not listed in ``files``: "truncated" (the
        first half of this folder's largest jpeg: its header reads, its pixels do not) or
        "text" (not an image at all)."""
        if kind == "truncated":
            largest = max((f for f in self.files if f.suffix == ".jpg"), key=lambda f: f.stat().st_size)
            data = largest.read_bytes()[: largest.stat().st_size // 2]
        elif kind == "text":
            data = b"not an image\n"
        else:
            raise ValueError(f"kind must be 'truncated' or 'text', not {kind!r}")
        path = self.root / cls / f"{kind}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


@pytest.fixture
def make_photo_folder(tmp_path: Path) -> Callable[..., PhotoFolder]:
    """A factory of ``PhotoFolder``s under tmp_path, from a layout like ``PHOTO_LAYOUT``."""

    def make(layout: dict[str, list[tuple[str, str, tuple[int, int]]]], name: str = "photos") -> PhotoFolder:
        folder = PhotoFolder(tmp_path / name)
        for cls, files in layout.items():
            for file, mode, size in files:
                folder.add(cls, file, mode, size)
        return folder

    return make


@pytest.fixture
def photo_folder(make_photo_folder: Callable[..., PhotoFolder]) -> PhotoFolder:
    """``PHOTO_LAYOUT`` under tmp_path/photos: 11 photos in 3 classes, 6 of them RGB jpegs."""
    return make_photo_folder(PHOTO_LAYOUT)


@pytest.fixture
def corrupt_jpeg_lake(codec_lakes: dict, tmp_path: Path) -> str:
    """A copy of the jpeg test lake whose row 5 holds truncated bytes."""
    import deeplake

    source = deeplake.open_read_only(codec_lakes["jpeg"]["test"])
    encoded = source["images"].get_bytes(slice(0, 12))
    url = str(tmp_path / "corrupt-jpeg")
    ds = deeplake.create(url)
    ds.add_column("images", deeplake.types.Image(sample_compression="jpeg"))
    ds.add_column("labels", deeplake.types.ClassLabel("uint32"))
    ds["labels"].metadata["class_names"] = list(source["labels"].metadata["class_names"])
    ds.append({"images": [b if i != 5 else b[:40] for i, b in enumerate(encoded)],
               "labels": np.asarray(source["labels"][0:12]).astype(np.uint32)})  # fmt: skip
    ds.commit()
    return url


@pytest.fixture
def fitted_checkpoint(cli_args: list[str]) -> str:
    """``last.ckpt`` of a 2-step ``fit`` with ``cli_args``."""
    from fashion_lake.cli import cli_main

    return cli_main(["fit", *cli_args]).trainer.checkpoint_callback.last_model_path
