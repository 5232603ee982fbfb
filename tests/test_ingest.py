from __future__ import annotations

import shutil
from pathlib import Path

import deeplake
import numpy as np
import pytest
from PIL import Image

from fashion_lake import ingest
from fashion_lake.ingest import FASHION_MNIST_CLASSES, IngestError, fashion_mnist, image_folder, read_idx
from fashion_lake.lake import LakeError, open_lake


def test_idx_ingest_matches_source(tiny_raw_dir: Path, tmp_path: Path) -> None:
    dest = str(tmp_path / "train")
    version = fashion_mnist(dest=dest, raw_dir=str(tiny_raw_dir), split="train")
    ds = deeplake.open_read_only(dest)
    assert ds.version == version
    assert [c.name for c in ds.schema.columns] == ["images", "labels"]
    assert ds["labels"].metadata["class_names"] == FASHION_MNIST_CLASSES
    images = read_idx(tiny_raw_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(tiny_raw_dir / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(ds["images"][0 : len(ds)], images[..., None])
    np.testing.assert_array_equal(ds["labels"][0 : len(ds)], labels)
    source = ds.metadata["source"]
    assert source["rows"] == len(labels) == 120
    assert set(source["files"]) == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"}
    assert ds.metadata["fashion_lake.ingest"] == "complete"


def test_real_files_pass_checksums(real_raw_dir: Path) -> None:
    images, labels, source = ingest.load_fashion_mnist(real_raw_dir, "test")
    assert images.shape == (10000, 28, 28, 1) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_image_folder_ingest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, count in [("cat", 3), ("dog", 2), ("ant", 4)]:
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                tmp_path / "src" / name / f"{i}.png"
            )
    dest = str(tmp_path / "lake")
    image_folder(root=str(tmp_path / "src"), dest=dest)
    ds = deeplake.open_read_only(dest)
    assert ds["labels"].metadata["class_names"] == ["ant", "cat", "dog"]
    assert ds["labels"][0 : len(ds)].tolist() == [0] * 4 + [1] * 3 + [2] * 2
    first = np.asarray(Image.open(tmp_path / "src" / "ant" / "0.png"))
    np.testing.assert_array_equal(ds["images"][0], first[..., None])


def test_image_folder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    (tmp_path / "src" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "src" / "a" / "0.png")
    Image.new("L", (9, 7)).save(tmp_path / "src" / "a" / "1.png")
    with pytest.raises(IngestError, match="--image_size"):
        image_folder(root=str(tmp_path / "src"), dest=str(tmp_path / "lake"))
    assert not (tmp_path / "lake").exists()
    image_folder(root=str(tmp_path / "src"), dest=str(tmp_path / "lake"), image_size=6)
    ds = deeplake.open_read_only(str(tmp_path / "lake"))
    assert ds["images"][0].shape == (6, 6, 1)


class _FailingBar:
    """tqdm stand-in that interrupts the ingest after its first appended chunk."""

    def __init__(self, *args, **kwargs) -> None:
        self.calls = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        self.calls += 1
        raise KeyboardInterrupt("injected mid-ingest")


@pytest.mark.parametrize("scheme", ["local", "mem"])
def test_interrupted_ingest_leaves_nothing_openable(
    tiny_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    dest = str(tmp_path / "lake") if scheme == "local" else f"mem://interrupted-{tmp_path.name}"
    monkeypatch.setattr(ingest, "APPEND_ROWS", 32)
    monkeypatch.setattr(ingest, "tqdm", _FailingBar)
    with pytest.raises(KeyboardInterrupt):
        fashion_mnist(dest=dest, raw_dir=str(tiny_raw_dir), split="train")
    if scheme == "local":
        assert list(tmp_path.iterdir()) == []  # neither the lake nor a partial copy
        with pytest.raises(LakeError, match="cannot open"):
            open_lake(dest)
    else:  # remote-style: the data is there, but marked unfinished and refused
        assert deeplake.exists(dest)
        with pytest.raises(LakeError, match="did not finish"):
            open_lake(dest)
    monkeypatch.undo()
    fashion_mnist(dest=dest, raw_dir=str(tiny_raw_dir), split="train")
    assert len(open_lake(dest)) == 120


def test_existing_lake_is_not_overwritten_by_default(tiny_raw_dir: Path, tmp_path: Path) -> None:
    dest = str(tmp_path / "lake")
    first = fashion_mnist(dest=dest, raw_dir=str(tiny_raw_dir), split="test")
    with pytest.raises(IngestError, match="--overwrite"):
        fashion_mnist(dest=dest, raw_dir=str(tiny_raw_dir), split="train")
    assert deeplake.open_read_only(dest).version == first and len(open_lake(dest)) == 50
    fashion_mnist(dest=dest, raw_dir=str(tiny_raw_dir), split="train", overwrite=True)
    assert len(open_lake(dest)) == 120


def test_checksum_mismatch_is_refused(tiny_raw_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw)
    path = raw / "train-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IngestError, match="checksum mismatch for .*train-labels"):
        fashion_mnist(dest=str(tmp_path / "lake"), raw_dir=str(raw), split="train")
    assert not (tmp_path / "lake").exists()


def test_missing_raw_file_is_named(tiny_raw_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw)
    (raw / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(IngestError, match="t10k-images-idx3-ubyte.gz is missing"):
        fashion_mnist(dest=str(tmp_path / "lake"), raw_dir=str(raw), split="test")


def test_official_checksums_without_sums_file(tiny_raw_dir: Path, tmp_path: Path) -> None:
    """Without SHA256SUMS the official MD5s apply; tiny files are not the official release."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw)
    (raw / "SHA256SUMS").unlink()
    with pytest.raises(IngestError, match="md5 is .* expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        fashion_mnist(dest=str(tmp_path / "lake"), raw_dir=str(raw), split="train")


def test_download_offline_says_pass_raw_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setattr(ingest, "FASHION_MNIST_MIRRORS", [f"http://127.0.0.1:{closed_port}/"])
    with pytest.raises(IngestError, match="could not download .*--data.raw_dir"):
        fashion_mnist(dest=str(tmp_path / "lake"), raw_dir=str(tmp_path / "raw"), download=True)
    assert not (tmp_path / "lake").exists()


def test_cli_entry_point_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest.main(["fashion_mnist", str(tmp_path / "lake"), "--raw_dir", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fashion_lake.ingest: error: raw_dir") and "Traceback" not in err
