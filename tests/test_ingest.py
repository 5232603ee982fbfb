from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import deeplake
import numpy as np
import pytest
from PIL import Image, ImageOps

from fashion_lake.errors import DatasetError
from fashion_lake.ingest import write as ingest
from fashion_lake.ingest.folder import Header, Plan, encode, probe
from fashion_lake.ingest.write import (
    FASHION_MNIST_CLASSES,
    IngestError,
    fashion_mnist,
    image_folder,
    read_idx,
)
from fashion_lake.lake import open_lake

if TYPE_CHECKING:
    from conftest import PhotoFolder


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


class _FailingBar:
    """tqdm stand-in that interrupts the ingest after its first appended chunk (the writer's bar:
    the one whose description starts with "writing")."""

    def __init__(self, *args, desc: str = "", **kwargs) -> None:
        self.writing = desc.startswith("writing")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        if self.writing:
            raise KeyboardInterrupt("injected mid-ingest")


@pytest.mark.parametrize("scheme", ["local", "mem"])
@pytest.mark.parametrize("source", ["idx", "folder"])
def test_interrupted_ingest_leaves_nothing_openable(
    tiny_raw_dir: Path,
    photo_folder: PhotoFolder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
    source: str,
) -> None:
    """Both sources, the folder's with its worker pool, stopped after the first of several appends."""
    dest = str(tmp_path / "out" / "lake") if scheme == "local" else f"mem://interrupted-{tmp_path.name}"

    def run() -> int:
        if source == "idx":
            fashion_mnist(dest=dest, raw_dir=str(tiny_raw_dir), split="train")
            return 120
        image_folder(root=str(photo_folder.root), dest=dest, workers=2)
        return len(photo_folder.files)

    monkeypatch.setattr(ingest, "APPEND_ROWS", 32 if source == "idx" else 3)
    monkeypatch.setattr(ingest, "ENCODE_FILES", 2)
    monkeypatch.setattr(ingest, "tqdm", _FailingBar)
    with pytest.raises(KeyboardInterrupt):
        run()
    if scheme == "local":
        assert list((tmp_path / "out").iterdir()) == []  # neither the lake nor a partial copy
        with pytest.raises(DatasetError, match="cannot open"):
            open_lake(dest)
    else:  # remote-style: the data is there, but marked unfinished and refused
        assert deeplake.exists(dest)
        with pytest.raises(DatasetError, match="did not finish"):
            open_lake(dest)
    monkeypatch.undo()
    rows = run()
    assert len(open_lake(dest)) == rows


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


# ----------------------------------------------------------------------------- image folders
def _ingest(folder: PhotoFolder, dest: Path, **options) -> deeplake.ReadOnlyDataset:
    """The folder ingested in this process unless told otherwise (the pool has its own tests)."""
    image_folder(root=str(folder.root), dest=str(dest), **{"workers": 0, **options})
    return deeplake.open_read_only(str(dest))


def _pixels(path: Path, mode: str) -> np.ndarray:
    """What PIL makes of the file in ``mode``, as H x W x C."""
    with Image.open(path) as img:
        return np.asarray(img.convert(mode)).reshape(img.height, img.width, -1)


def _jpeg_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 10) -> bool:
    """Within jpeg's loss at quality 95 (mean absolute error; up to ~9 for the palette png, whose
    hard edges on a tiny image jpeg handles worst); a wrong channel order or conversion is off by
    tens."""
    return actual.shape == expected.shape and np.abs(actual.astype(int) - expected).mean() < tolerance


def test_image_folder_keeps_bytes_and_sizes(photo_folder: PhotoFolder, tmp_path: Path) -> None:
    """The defaults: colour present so RGB, jpeg the commonest format so jpeg; the RGB jpegs keep
    their bytes, the rest (the grey jpeg too) become RGB jpegs; every file keeps its size."""
    ds = _ingest(photo_folder, tmp_path / "lake")
    source = ds.metadata["source"]
    assert (source["mode"], source["compression"], source["image_size"]) == ("RGB", "jpeg", "original")
    assert ds["labels"].metadata["class_names"] == ["bag", "coat", "shoe"]
    assert ds["labels"][0 : len(ds)].tolist() == photo_folder.labels == [0] * 3 + [1] * 4 + [2] * 4
    kept = []
    for row, path in enumerate(photo_folder.files):
        with Image.open(path) as img:
            kept.append((img.format, img.mode) == ("JPEG", "RGB"))
        assert (ds["images"].get_bytes(row) == path.read_bytes()) == kept[-1], path
        assert _jpeg_close(np.asarray(ds["images"][row]), _pixels(path, "RGB")), path
    grey = np.asarray(ds["images"][photo_folder.files.index(photo_folder.root / "coat" / "grey.jpg")])
    assert _jpeg_close(grey, _pixels(photo_folder.root / "coat" / "grey.jpg", "RGB"), tolerance=1)
    assert (source["rows"], source["kept"], source["reencoded"], sum(kept)) == (11, 6, 5, 6)
    assert (source["skipped"], source["skipped_files"]) == (0, [])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_png_rows_are_pil_conversions(photo_folder: PhotoFolder, tmp_path: Path, mode: str) -> None:
    """Lossless: every row is exactly PIL's conversion of its file (palette, alpha, grey, jpeg
    alike), and the pngs already in the mode keep their bytes."""
    ds = _ingest(photo_folder, tmp_path / "lake", mode=mode, compression="png")
    kept = []
    for row, path in enumerate(photo_folder.files):
        with Image.open(path) as img:
            kept.append((img.format, img.mode) == ("PNG", mode))
        np.testing.assert_array_equal(ds["images"][row], _pixels(path, mode))
        assert (ds["images"].get_bytes(row) == path.read_bytes()) == kept[-1], path
    assert ds.metadata["source"]["kept"] == sum(kept) == 1


@pytest.mark.parametrize(
    ("layout", "mode", "compression"),
    [
        ({"a": [("x.png", "L", (20, 15)), ("y.png", "P-grey", (32, 24))], "b": [("z.jpg", "L", (24, 32))]},
         "L", "png"),
        ({"a": [("x.jpg", "L", (20, 15)), ("y.png", "P", (32, 24)), ("z.jpg", "L", (24, 32))]},
         "RGB", "jpeg"),
        ({"a": [("x.jpg", "RGB", (20, 15))], "b": [("y.png", "L", (32, 24))]}, "RGB", "png"),
        ({"a": [("x.bmp", "L", (20, 15)), ("y.tif", "L", (32, 24))]}, "L", "png"),
    ],
    ids=["all-grey-png-most", "colour-palette-jpeg-most", "tie", "neither-format"],
)  # fmt: skip
def test_auto_mode_and_compression(
    make_photo_folder: Callable[..., PhotoFolder], tmp_path: Path, layout: dict, mode: str, compression: str
) -> None:
    """Mode L only if every image is grey (a grey palette counts, a colour one does not); the
    format most files have, png on a tie or when they are neither."""
    ds = _ingest(make_photo_folder(layout), tmp_path / "lake")
    assert (ds.metadata["source"]["mode"], ds.metadata["source"]["compression"]) == (mode, compression)
    assert ds["images"][0].shape[-1] == len(mode)


@pytest.mark.parametrize("image_size", [12, [8, 6]])
def test_image_size_resizes_as_torchvision(
    photo_folder: PhotoFolder, tmp_path: Path, image_size: int | list[int]
) -> None:
    """N: shorter side N, aspect kept; [H, W]: exactly. Pixels as torchvision's Resize (PIL
    bilinear, antialiased) makes them, so a model sees the same as with an ImageFolder pipeline."""
    from torchvision.transforms import Resize

    ds = _ingest(photo_folder, tmp_path / "lake", image_size=image_size, compression="png")
    for row, path in enumerate(photo_folder.files):
        with Image.open(path) as img:
            expected = np.asarray(Resize(image_size)(img.convert("RGB")))
        np.testing.assert_array_equal(ds["images"][row], expected)
    source = ds.metadata["source"]
    assert (source["image_size"], source["kept"], source["reencoded"]) == (image_size, 0, 11)
    assert ds["images"][10].shape == ((16, 12, 3) if image_size == 12 else (8, 6, 3))  # d.jpeg: 24 x 32


def test_exif_orientation_is_applied(make_photo_folder: Callable[..., PhotoFolder], tmp_path: Path) -> None:
    """A camera jpeg marked "rotated" is stored upright (re-encoded), like ImageOps.exif_transpose."""
    folder = make_photo_folder({"a": [("x.jpg", "RGB", (32, 24))]})
    turned = folder.add("a", "y.jpg", "RGB", (32, 24), orientation=6)
    ds = _ingest(folder, tmp_path / "lake")
    with Image.open(turned) as img:
        upright = np.asarray(ImageOps.exif_transpose(img))
    assert upright.shape == (32, 24, 3) and _jpeg_close(np.asarray(ds["images"][1]), upright)
    assert ds["images"].get_bytes(0) == folder.files[0].read_bytes() and ds.metadata["source"]["kept"] == 1


def test_16_bit_png_is_reencoded(make_photo_folder: Callable[..., PhotoFolder], tmp_path: Path) -> None:
    """PIL opens a 16-bit RGB png as "RGB", but a uint8 column must not get its bytes."""
    folder = make_photo_folder({"a": [("x.png", "RGB", (4, 3))]})
    deep = (np.arange(36).reshape(3, 4, 3) * 1800).astype(">u2")  # 16-bit samples, big-endian as in png

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + row.tobytes() for row in deep)  # filter byte 0, then the row's samples
    header = struct.pack(">IIBBBBB", 4, 3, 16, 2, 0, 0, 0)  # 4 x 3, 16 bits, RGB
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    (folder.root / "a" / "y.png").write_bytes(png)
    assert probe(str(folder.root / "a" / "y.png")) == Header("PNG", "RGB", False)
    ds = _ingest(folder, tmp_path / "lake")
    assert ds["images"].get_bytes(0) == folder.files[0].read_bytes() and ds.metadata["source"]["kept"] == 1
    np.testing.assert_array_equal(ds["images"][1], (deep >> 8).astype(np.uint8))


def test_16_bit_grey_png_keeps_its_high_byte(
    make_photo_folder: Callable[..., PhotoFolder], tmp_path: Path
) -> None:
    """Pillow opens it as "I;16" and its convert("L") clips every value above 255 to white."""
    folder = make_photo_folder({"a": [("x.png", "L", (8, 4))]})
    deep = (np.arange(32).reshape(4, 8) * 2000).astype(np.uint16)
    Image.fromarray(deep).save(folder.root / "a" / "y.png")
    ds = _ingest(folder, tmp_path / "lake")
    assert ds.metadata["source"]["mode"] == "L"
    np.testing.assert_array_equal(np.asarray(ds["images"][1])[..., 0], (deep >> 8).astype(np.uint8))


def test_hidden_folders_are_not_classes_and_empty_ones_are_refused(
    photo_folder: PhotoFolder, tmp_path: Path
) -> None:
    (photo_folder.root / ".ipynb_checkpoints").mkdir()
    ds = _ingest(photo_folder, tmp_path / "lake")
    assert ds["labels"].metadata["class_names"] == ["bag", "coat", "shoe"]
    (photo_folder.root / "dress").mkdir()
    with pytest.raises(IngestError, match=r"class folder\(s\) 'dress' in .* hold no image files"):
        image_folder(root=str(photo_folder.root), dest=str(tmp_path / "other"), workers=0)


def test_truncated_jpeg_is_found_by_decoding(photo_folder: PhotoFolder) -> None:
    """Its header reads, so only the check that kept bytes decode finds it; a text file fails
    at the header. Neither raises: the error names the file."""
    truncated = str(photo_folder.add_corrupt("coat", "truncated"))
    assert probe(truncated) == Header("JPEG", "RGB", False)
    result = encode(truncated, Plan("RGB", "jpeg"))
    assert result.data is None
    assert result.error.startswith(f"{truncated} is not a readable image (image file is truncated")
    text = str(photo_folder.add_corrupt("coat", "text"))
    assert probe(text) == f"{text} is not a readable image (cannot identify image file {text!r})"


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_file_stops_the_ingest(photo_folder: PhotoFolder, tmp_path: Path, kind: str) -> None:
    """Found reading headers (text) or decoding (truncated): one error naming the file and the fix."""
    bad = photo_folder.add_corrupt("shoe", kind)
    with pytest.raises(
        IngestError, match=f"{re.escape(str(bad))} is not a readable image .*--skip_unreadable"
    ):
        _ingest(photo_folder, tmp_path / "lake")
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]  # neither the lake nor a partial copy


def test_worker_pool_matches_in_process_and_skips(
    photo_folder: PhotoFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers, many small tasks (more than are submitted ahead), one unreadable file found
    reading headers and one decoding: the same rows, in folder order, as in this process."""
    photo_folder.add_corrupt("bag", "text")
    photo_folder.add_corrupt("shoe", "truncated")
    monkeypatch.setattr(ingest, "PROBE_FILES", 3)
    monkeypatch.setattr(ingest, "ENCODE_FILES", 2)
    lakes = {}
    for workers in (0, 2):
        ds = _ingest(photo_folder, tmp_path / f"lake-{workers}", workers=workers, skip_unreadable=True)
        rows = [(ds["images"].get_bytes(i), int(ds["labels"][i])) for i in range(len(ds))]
        lakes[workers] = rows, ds.metadata["source"]
    assert lakes[0] == lakes[2]
    rows, source = lakes[2]
    assert [label for _, label in rows] == photo_folder.labels
    assert (source["rows"], source["skipped"]) == (11, 2)
    assert source["skipped_files"] == ["bag/text.jpg", "shoe/truncated.jpg"]


def test_cli_parses_image_size_list(
    photo_folder: PhotoFolder, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dest = tmp_path / "lake"
    ingest.main(
        ["image_folder", str(photo_folder.root), str(dest), "--image_size", "[8, 6]", "--workers", "0"]
    )
    assert capsys.readouterr().out.startswith("committed version ")
    ds = deeplake.open_read_only(str(dest))
    assert {ds["images"][i].shape for i in range(len(ds))} == {(8, 6, 3)}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_size": 0}, "image_size must be a positive N .* not 0"),
        ({"image_size": [8]}, r"image_size must be .* \[H, W\] .* not \[8\]"),
        ({"image_size": [8, 6, 2]}, r"not \[8, 6, 2\]"),
        ({"image_size": (8, -6)}, r"not \(8, -6\)"),
        ({"workers": -1}, "workers must be 0 .* not -1"),
        ({"mode": "CMYK"}, "mode must be .* not 'CMYK'"),
        ({"compression": "webp"}, "compression must be auto or one of .* not 'webp'"),
        ({"root": "nope"}, "image folder '.*nope' is not a directory"),
        ({"root": "empty"}, "empty has no class subfolders"),
        ({"root": "texts"}, r"texts holds no image files \(.jpg, "),
    ],
)
def test_bad_arguments_are_one_clear_error(
    photo_folder: PhotoFolder, tmp_path: Path, options: dict, message: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "notes.txt").write_text("not an image")
    root = str(tmp_path / options.pop("root", "photos"))
    with pytest.raises(IngestError, match=message):
        image_folder(root=root, dest=str(tmp_path / "lake"), **{"workers": 0, **options})
    assert not (tmp_path / "lake").exists()


def test_folder_module_imports_no_torch() -> None:
    """Spawned ingest workers import fashion_lake.ingest.folder: seconds and hundreds of MB saved each."""
    code = "import sys, fashion_lake.ingest.folder; print(*{name.split('.')[0] for name in sys.modules})"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"fashion_lake", "PIL", "numpy"} <= set(imported.stdout.split())
    assert not {"torch", "torchvision", "pytorch_lightning", "deeplake", "tqdm"} & set(
        imported.stdout.split()
    )


def test_a_killed_ingests_leftover_is_removed_by_the_next_success(tiny_raw_dir: Path, tmp_path: Path) -> None:
    """A SIGKILLed ingest cannot clean up: its partial copy stays until an ingest of the same
    destination succeeds. A partial whose writer still runs, or that another machine writes, stays."""
    dest = tmp_path / "lake"
    kill = (
        "import os, signal, deeplake; from pathlib import Path; "
        "from fashion_lake.ingest.write import _partial; "
        f"deeplake.create(_partial(Path({str(dest)!r}))).commit(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", kill], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    [leftover] = tmp_path.glob(".lake.partial-*")
    live = Path(ingest._partial(dest))  # this process's: alive
    live.mkdir()
    elsewhere = tmp_path / f".lake{ingest.PARTIAL}0123abcd-{killed.returncode + 10}-another-host"
    elsewhere.mkdir()
    fashion_mnist(dest=str(dest), raw_dir=str(tiny_raw_dir), split="test")
    assert not leftover.exists() and live.is_dir() and elsewhere.is_dir()
    assert len(open_lake(str(dest))) == 50


def test_files_of_other_types_are_counted_not_dropped_silently(
    photo_folder: PhotoFolder, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.new("P", (8, 8)).save(photo_folder.root / "bag" / "anim.gif")
    (photo_folder.root / "coat" / "notes.txt").write_text("shot in the garden\n")
    ds = _ingest(photo_folder, tmp_path / "lake")
    assert len(ds) == len(photo_folder.files)
    err = capsys.readouterr().err
    assert re.search(r"ingest: ignoring 2 file\(s\) whose type is not read \(.gif x1, .txt x1\)", err)
    source = ds.metadata["source"]
    assert source["ignored"] == 2 and sorted(source["ignored_files"]) == ["bag/anim.gif", "coat/notes.txt"]


def test_overwrite_replaces_a_dataset_but_never_its_source(photo_folder: PhotoFolder, tmp_path: Path) -> None:
    before = sorted(photo_folder.root.rglob("*"))
    with pytest.raises(IngestError, match="overlaps the source"):
        image_folder(root=str(photo_folder.root), dest=str(photo_folder.root), overwrite=True, workers=0)
    assert sorted(photo_folder.root.rglob("*")) == before
    dest = tmp_path / "lake"
    _ingest(photo_folder, dest)
    photo_folder.add("bag", "extra.png", "L", (8, 8))
    assert len(_ingest(photo_folder, dest, overwrite=True)) == len(photo_folder.files)


def test_a_download_with_a_wrong_checksum_leaves_nothing(
    real_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror serving other bytes: one line naming the file and the checksums; the raw dir gets
    no file under the real name and no partial file; the real files download and check."""
    import functools
    import http.server
    import threading

    served = tmp_path / "mirror"
    served.mkdir()
    for name in ingest.FASHION_MNIST_MD5:
        (served / name).write_bytes((real_raw_dir / name).read_bytes())
    (served / "train-images-idx3-ubyte.gz").write_bytes(b"not the release")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setattr(ingest, "FASHION_MNIST_MIRRORS", [mirror])
        monkeypatch.setattr(ingest, "FASHION_MNIST_MD5", {**ingest.FASHION_MNIST_MD5, **{
            name: ingest._digest(real_raw_dir / name, "md5") for name in ingest.FASHION_MNIST_MD5
        }})  # fmt: skip  # the shared copies' own checksums stand in for the release's
        raw = tmp_path / "raw"
        bad = r"could not download train-images-idx3-ubyte.gz .*md5 \w+, expected"
        with pytest.raises(IngestError, match=bad):
            ingest.download_fashion_mnist(raw)
        assert sorted(p.name for p in raw.iterdir()) == []
        name = "train-images-idx3-ubyte.gz"
        (served / name).write_bytes((real_raw_dir / name).read_bytes())
        fetched = ingest.download_fashion_mnist(raw)
        assert sorted(p.name for p in fetched.iterdir()) == sorted(ingest.FASHION_MNIST_MD5)
    finally:
        server.shutdown()
        server.server_close()
