"""The tutorial's own datasets: Deep Lake 3 Fashion-MNIST, read through a query or converted."""

from __future__ import annotations

import csv
from pathlib import Path

import deeplake
import numpy as np
import pytest
import torch

from fashion_lake import DeepLakeDataModule
from fashion_lake.cli import cli_main, main
from fashion_lake.errors import DatasetError
from fashion_lake.ingest import write as ingest
from fashion_lake.ingest.write import FASHION_MNIST_CLASSES, convert, fashion_mnist, read_idx
from fashion_lake.lake import lake_format, open_lake

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="session")
def converted(v3_lakes: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("converted")
    lakes = {split: str(root / split) for split in v3_lakes}
    for split, url in lakes.items():
        convert(v3_lakes[split], url)
    return lakes


@pytest.fixture
def lake_args(cli_args: list[str]) -> list[str]:
    """The shipped config and test overlay on a given pair of lakes: 2 training and 2 eval batches."""
    return [*cli_args, "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
            "--trainer.limit_predict_batches", "2"]  # fmt: skip


def _urls(lakes: dict[str, str]) -> list[str]:
    return ["--data.train_url", lakes["train"], "--data.val_url", lakes["test"]]


def test_formats_are_told_apart(v3_lakes: dict[str, str], converted: dict[str, str], tmp_path: Path) -> None:
    assert lake_format(v3_lakes["test"]) == "v3" and lake_format(converted["test"]) == "v4"
    assert lake_format(str(tmp_path / "nothing")) is None
    assert lake_format("hub://activeloop/fashion-mnist-test") == "v3"  # not contacted


@pytest.mark.parametrize("source", ["v3", "converted"])
def test_batches_equal_the_idx_data(
    source: str, v3_lakes: dict[str, str], converted: dict[str, str], real_raw_dir: Path
) -> None:
    lakes = v3_lakes if source == "v3" else converted
    dm = DeepLakeDataModule(train_url=lakes["train"], val_url=lakes["test"], batch_size=64)
    assert dm.class_names == FASHION_MNIST_CLASSES  # from the class_label metadata
    batch = next(iter(dm.val_dataloader()))
    images = read_idx(real_raw_dir / "t10k-images-idx3-ubyte.gz")[:64]
    labels = read_idx(real_raw_dir / "t10k-labels-idx1-ubyte.gz")[:64]
    assert batch["index"].tolist() == list(range(64)) and batch["labels"].dtype == torch.int64
    np.testing.assert_array_equal(batch["labels"].numpy(), labels)
    np.testing.assert_array_equal(batch["images"][:, 0].numpy(), images)
    row = dm.datasets["val"][3]  # the per-row path squeezes the (1,) label too
    assert row["labels"] == int(labels[3]) and torch.equal(row["images"][0], torch.from_numpy(images[3]))


@pytest.mark.parametrize("source", ["v3", "converted"])
def test_fit_validate_test_predict(
    source: str, v3_lakes: dict[str, str], converted: dict[str, str], lake_args: list[str], tmp_path: Path
) -> None:
    # a constant schedule, so that the resumed fit can extend the run (one-cycle's length is fixed)
    args = [*lake_args, *_urls(v3_lakes if source == "v3" else converted), "--model.lr_schedule", "constant"]
    fit = cli_main(["fit", *args])
    assert fit.model.class_names == FASHION_MNIST_CLASSES and fit.trainer.global_step == 2
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    validate = cli_main(["validate", *args, "--ckpt_path", ckpt])
    test = cli_main(["test", *args, "--ckpt_path", ckpt])
    assert float(test.trainer.callback_metrics["test_acc"]) == pytest.approx(
        float(validate.trainer.callback_metrics["val_acc"])
    )
    cli_main(["predict", *args, "--ckpt_path", ckpt])
    with next((tmp_path / "runs").rglob("predictions.csv")).open() as f:
        rows = list(csv.DictReader(f))
    index = [int(r["index"]) for r in rows]  # 2 batches: the first of each worker's share, or 0..31
    assert len(set(index)) == 32 and index[:16] == list(range(16))
    assert rows[0]["class_name"] in FASHION_MNIST_CLASSES
    resumed = cli_main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", ckpt])
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2


def test_hub_overlay_runs_as_shipped(v3_lakes: dict[str, str], lake_args: list[str]) -> None:
    """configs/fashion-hub.yaml with its hub:// URLs swapped for the same datasets on disk."""
    cli = cli_main(["fit", *lake_args, "--config", str(CONFIGS / "fashion-hub.yaml"), *_urls(v3_lakes)])
    assert cli.trainer.global_step == 2 and cli.model.class_names == FASHION_MNIST_CLASSES


def test_every_route_serves_and_evaluates_the_same(
    v3_lakes: dict[str, str],
    converted: dict[str, str],
    real_raw_dir: Path,
    tmp_path: Path,
    lake_args: list[str],
) -> None:
    """Same pixels and labels by row: v3 via query, the converted copy and our own IDX ingest
    serve identical training rows and evaluate one checkpoint to identical accuracy. (The
    training order follows each copy's storage chunks, docs/data-path.md.)"""
    own = {"train": str(tmp_path / "own-train"), "test": str(tmp_path / "own-test")}
    for split, url in own.items():
        fashion_mnist(dest=url, raw_dir=str(real_raw_dir), split=split)
    fit = cli_main(["fit", *lake_args, *_urls(own), "--trainer.limit_train_batches", "3"])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    images = read_idx(real_raw_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(real_raw_dir / "train-labels-idx1-ubyte.gz")
    accuracies = []
    for lakes in (v3_lakes, converted, own):
        validate = cli_main(["validate", *lake_args, *_urls(lakes), "--ckpt_path", ckpt])
        accuracies.append(float(validate.trainer.callback_metrics["val_acc"]))
        dm = DeepLakeDataModule(train_url=lakes["train"], val_url=lakes["test"], batch_size=500)
        batch = next(iter(dm.train_dataloader()))
        rows = batch["index"].numpy()
        np.testing.assert_array_equal(batch["images"][:, 0].numpy(), images[rows])
        np.testing.assert_array_equal(batch["labels"].numpy(), labels[rows])
    assert accuracies[1:] == accuracies[:1] * 2


def test_prepare_data_never_writes_into_a_v3_dataset(v3_lakes: dict[str, str], tmp_path: Path) -> None:
    def files() -> list[tuple[Path, int]]:
        return sorted((p, p.stat().st_mtime_ns) for p in Path(v3_lakes["test"]).rglob("*"))

    before = files()
    url = v3_lakes["test"]
    dm = DeepLakeDataModule(train_url=url, val_url=url, raw_dir=str(tmp_path / "none"))
    dm.prepare_data()  # recognised: no build attempted (raw_dir does not even exist)
    dm.setup("validate")
    next(iter(dm.val_dataloader()))
    assert files() == before


def test_a_folder_that_is_no_dataset_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("not a lake")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / "fashion.yaml"), "--data.train_url", str(folder),
              "--data.val_url", str(folder), "--data.raw_dir", str(tmp_path)])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    named = f"fashion_lake: error: {str(folder)!r} (data.train_url) exists but is not a Deep Lake dataset"
    assert err.startswith(named), err
    assert [p.name for p in folder.iterdir()] == ["a.txt"]


def test_more_than_one_id_per_row_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "multi")
    ds = deeplake.create(url)
    ds.add_column("images", deeplake.types.Image(dtype="uint8", sample_compression="null"))
    ds.add_column("labels", deeplake.types.Array("int32", shape=[2]))
    ds["labels"].metadata["class_names"] = ["a", "b"]
    ds.append({"images": np.zeros((4, 4, 4, 1), np.uint8), "labels": np.zeros((4, 2), np.int32)})
    ds.commit()
    dm = DeepLakeDataModule(train_url=url, val_url=url, batch_size=2)
    with pytest.raises(DatasetError, match=r"'labels' of .* holds \(2,\) arrays, not one class id per row"):
        dm.setup("validate")


@pytest.mark.parametrize(
    ("src", "message"),
    [("converted", "is not a Deep Lake 3 dataset (a Deep Lake 4 dataset: use it as it is)"),
     ("missing", "is not a Deep Lake 3 dataset (nothing Deep Lake can read)")],
)  # fmt: skip
def test_convert_refuses_what_is_not_v3(
    src: str, message: str, converted: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = converted["test"] if src == "converted" else str(tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_:
        ingest.main(["convert", source, str(tmp_path / "out")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_keeps_bytes_classes_and_records_its_source(
    v3_lakes: dict[str, str], converted: dict[str, str]
) -> None:
    v3, copy = open_lake(v3_lakes["test"]), open_lake(converted["test"])
    assert copy.metadata["source"] == {"kind": "deeplake3", "url": v3_lakes["test"], "rows": 10000}
    assert copy.metadata[ingest.INGEST_KEY] == "complete"
    assert copy["labels"].metadata["class_names"] == FASHION_MNIST_CLASSES
    assert copy["images"].get_bytes(slice(0, 50)) == v3["images"].get_bytes(slice(0, 50))
    with pytest.raises(ingest.IngestError, match="--overwrite"):
        convert(v3_lakes["test"], converted["test"])


@pytest.mark.parametrize("scheme", ["local", "mem"])
def test_interrupted_conversion_leaves_nothing_openable(
    scheme: str, v3_lakes: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = str(tmp_path / "out") if scheme == "local" else f"mem://converted-{tmp_path.name}"
    step = "convert" if scheme == "local" else "copy"  # remote: the copy to dest is cut short
    real = getattr(deeplake, step)

    def cut_short(*args, **kwargs) -> None:
        real(*args, **kwargs)
        raise KeyboardInterrupt(f"injected after deeplake.{step}")

    monkeypatch.setattr(deeplake, step, cut_short)
    with pytest.raises(KeyboardInterrupt):
        convert(v3_lakes["test"], dest)
    if scheme == "local":
        assert list(tmp_path.iterdir()) == []  # neither the dataset nor its staging folder
        with pytest.raises(DatasetError, match="cannot open"):
            open_lake(dest)
    else:
        with pytest.raises(DatasetError, match="did not finish"):
            open_lake(dest)
    monkeypatch.undo()
    convert(v3_lakes["test"], dest)  # re-running replaces the unfinished one
    assert len(open_lake(dest)) == 10000
