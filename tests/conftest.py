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
from pathlib import Path

import numpy as np
import pytest

from fashion_lake.ingest import IDX_FILES, fashion_mnist, read_idx

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

    ``tests/`` is on its PYTHONPATH so configs can name the callbacks in ``recorder.py``; the
    exit status must be ``returncode`` (output shown otherwise).
    """

    def run(args: list[str], cwd: Path, returncode: int = 0, module: str = "fashion_lake",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
        cmd = [sys.executable, "-m", module, *args]
        proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == returncode, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        return proc

    return run


@pytest.fixture(scope="session")
def codec_lakes(real_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """png and jpeg lakes written with plain deeplake from the first real IDX rows: codec -> split -> URL."""
    from fashion_lake.bench import write_plain_lake
    from fashion_lake.ingest import FASHION_MNIST_CLASSES, load_fashion_mnist

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
