from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import deeplake
import numpy as np
import pytest
import torch

from fashion_lake import DeepLakeDataModule
from fashion_lake.data.augment import SeedTransform
from fashion_lake.data.order import DistContext, TrainOrder
from fashion_lake.errors import ConfigError, DatasetError
from fashion_lake.ingest.write import FASHION_MNIST_CLASSES

if TYPE_CHECKING:
    from conftest import MakeLake


def test_standalone_notebook_flow(tiny_lakes: dict[str, str]) -> None:
    dm = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (16, 1, 28, 28) and batch["images"].dtype == torch.uint8
    assert batch["labels"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    assert batch["labels"].min() >= 0 and batch["labels"].max() < 10
    assert dm.class_names == FASHION_MNIST_CLASSES and dm.num_classes == 10 and dm.num_channels == 1
    ready = dm.prepare_batch(batch, train=True)
    assert ready["images"].dtype == torch.float32
    assert ready["images"].min() >= 0.0 and ready["images"].max() <= 1.0
    # the loader returns exactly the stored rows
    ds = deeplake.open_read_only(tiny_lakes["train"])
    rows = batch["index"].tolist()
    stored = np.stack([ds["images"][i] for i in rows])
    np.testing.assert_array_equal(batch["images"].permute(0, 2, 3, 1).numpy(), stored)
    assert batch["labels"].tolist() == [int(ds["labels"][i]) for i in rows]


def test_eval_batches_are_scaled_without_rotation(tiny_lakes: dict[str, str]) -> None:
    dm = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=16)
    batch = next(iter(dm.val_dataloader()))
    ready = dm.prepare_batch(batch, train=False)
    expected = batch["images"].float() / 255  # normalising is the model's
    torch.testing.assert_close(ready["images"], expected)
    assert batch["index"].tolist() == list(range(16))  # storage order


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_reads_every_row_once(tiny_lakes: dict[str, str], num_workers: int) -> None:
    dm = DeepLakeDataModule(
        train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=16,
        num_workers=num_workers, drop_last=False,
    )  # fmt: skip
    seen = [batch["index"] for batch in dm.train_dataloader()]
    rows = torch.cat(seen).tolist()
    assert sorted(rows) == list(range(120)) and rows != list(range(120))
    val = torch.cat([b["index"] for b in dm.val_dataloader()]).tolist()
    # storage order: in one process all of it, with workers each worker's contiguous share
    shares = [list(range(50))] if not num_workers else [list(range(25)), list(range(25, 50))]
    assert sorted(val) == list(range(50))
    for share in shares:
        assert [row for row in val if row in share] == share


def test_injected_ranks_shard_the_loader(tiny_lakes: dict[str, str]) -> None:
    consumed = []
    for rank in range(2):
        dm = DeepLakeDataModule(
            train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], global_batch_size=20
        )
        dm.dist = DistContext(rank, 2)
        batches = [b["index"] for b in dm.train_dataloader()]
        assert all(len(b) == 10 for b in batches)
        consumed.append(torch.cat(batches))
    assert sorted(torch.cat(consumed).tolist()) == list(range(120))


def test_seed_transform_path_goes_through_ds_pytorch(tiny_lakes: dict[str, str]) -> None:
    dm = DeepLakeDataModule(
        train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=8,
        train_transform={"images": SeedTransform(train=True)},
        eval_transform={"images": SeedTransform(train=False)},
    )  # fmt: skip
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].shape == (8, 1, 28, 28) and batch["images"].dtype == torch.float32
    fast = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=8)
    expected = fast.prepare_batch(next(iter(fast.val_dataloader())), train=False)
    torch.testing.assert_close(batch["images"], expected["images"])
    assert torch.equal(
        dm.prepare_batch(batch, train=True)["images"], batch["images"]
    )  # float: passes through
    train = next(iter(dm.train_dataloader()))
    assert train["images"].dtype == torch.float32 and len(train["labels"]) == 8


def test_missing_lake_without_raw_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASHION_LAKE_RAW_DIR", raising=False)
    dm = DeepLakeDataModule(train_url=str(tmp_path / "nope-train"), val_url=str(tmp_path / "nope-val"))
    with pytest.raises(DatasetError, match="no Deep Lake dataset at .*nope-train.*--data.raw_dir"):
        dm.prepare_data()
    assert not (tmp_path / "nope-train").exists()


def test_prepare_data_builds_missing_lakes_from_raw_dir(tiny_raw_dir: Path, tmp_path: Path) -> None:
    dm = DeepLakeDataModule(
        train_url=str(tmp_path / "train"), val_url=str(tmp_path / "val"), raw_dir=str(tiny_raw_dir)
    )
    assert dm.num_classes == 10  # known before the build, for the model link
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 120 and len(dm.datasets["val"]) == 50


def test_a_missing_lake_beside_existing_ones_is_a_typo_not_a_build(
    tiny_lakes: dict[str, str], tiny_raw_dir: Path, tmp_path: Path
) -> None:
    typo = tmp_path / "fashion-tset"
    dm = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=str(typo), raw_dir=str(tiny_raw_dir))
    with pytest.raises(DatasetError, match=r"at .*fashion-tset' \(data.val_url\); check the URL"):
        dm.prepare_data()
    assert not typo.exists()


def test_missing_columns_are_listed(make_lake: MakeLake) -> None:
    url = make_lake(image_column="pixels")
    dm = DeepLakeDataModule(train_url=url, val_url=url)
    with pytest.raises(DatasetError, match=r"no column 'images'; it has \['pixels', 'labels'\]"):
        dm.setup("fit")


def test_labels_outside_class_range(make_lake: MakeLake) -> None:
    url = make_lake(rows=4, labels=[0, 1, 5, 2])
    with pytest.raises(DatasetError, match="row 2 .* has label 5, outside 0..2"):
        DeepLakeDataModule(train_url=url, val_url=url).setup("validate")


def test_no_class_names(make_lake: MakeLake) -> None:
    url = make_lake(class_names=None)
    with pytest.raises(DatasetError, match="no class names .* --data.class_names"):
        DeepLakeDataModule(train_url=url, val_url=url).setup("validate")
    dm = DeepLakeDataModule(train_url=url, val_url=url, class_names=["x", "y", "z"])
    dm.setup("validate")
    assert dm.class_names == ["x", "y", "z"]


def test_empty_dataset(make_lake: MakeLake) -> None:
    url = make_lake(rows=0)
    with pytest.raises(DatasetError, match="is empty"):
        DeepLakeDataModule(train_url=url, val_url=url).setup("fit")


def test_val_classes_must_match_train(make_lake: MakeLake, tiny_lakes: dict[str, str]) -> None:
    dm = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=make_lake())
    with pytest.raises(DatasetError, match="has classes"):
        dm.setup("fit")


def test_bad_batch_settings() -> None:
    with pytest.raises(ConfigError, match=r"data.batch_size must be 1 or more \(rows per step"):
        DeepLakeDataModule(batch_size=0)
    dm = DeepLakeDataModule(global_batch_size=10)
    dm.dist = DistContext(0, 3)
    with pytest.raises(ConfigError, match="does not divide evenly"):
        _ = dm.per_device_batch_size


def test_queries_select_rows_and_keep_class_names(tiny_lakes: dict[str, str]) -> None:
    dm = DeepLakeDataModule(
        train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=8, drop_last=False,
        train_query="SELECT * WHERE labels IN (0, 6)", val_query="SELECT * WHERE labels = 9",
    )  # fmt: skip
    dm.setup("fit")
    ds = deeplake.open_read_only(tiny_lakes["train"])
    all_labels = np.asarray(ds["labels"][0 : len(ds)])
    assert len(dm.datasets["train"]) == int(np.isin(all_labels, [0, 6]).sum())
    labels = torch.cat([b["labels"] for b in dm.train_dataloader()])
    assert set(labels.tolist()) == {0, 6} and len(labels) == len(dm.datasets["train"])
    rows = torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()
    assert sorted(rows) == np.flatnonzero(np.isin(all_labels, [0, 6])).tolist()  # dataset row ids
    assert set(torch.cat([b["labels"] for b in dm.val_dataloader()]).tolist()) == {9}
    assert dm.class_names == FASHION_MNIST_CLASSES and dm.num_classes == 10


def test_bad_query_is_reported(tiny_lakes: dict[str, str]) -> None:
    dm = DeepLakeDataModule(
        train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], train_query="SELEKT nothing"
    )
    with pytest.raises(DatasetError, match="query 'SELEKT nothing' on .* failed"):
        dm.setup("fit")
    empty = DeepLakeDataModule(
        train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], train_query="SELECT * WHERE labels > 100"
    )
    with pytest.raises(DatasetError, match="is empty .* widen the query"):
        empty.setup("fit")


def test_download_offline_in_prepare_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    from fashion_lake.ingest import write as ingest

    monkeypatch.delenv("FASHION_LAKE_RAW_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ingest, "FASHION_MNIST_MIRRORS", [f"http://127.0.0.1:{closed_port}/"])
    dm = DeepLakeDataModule(train_url=str(tmp_path / "train"), val_url=str(tmp_path / "val"), download=True)
    with pytest.raises(DatasetError, match="could not download train-images-idx3-ubyte.gz .* --data.raw_dir"):
        dm.prepare_data()
    assert not (tmp_path / "train").exists()


def test_fewer_rows_than_a_batch(tiny_lakes: dict[str, str]) -> None:
    dm = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=128)
    with pytest.raises(DatasetError, match="120 training rows, fewer than one global batch of 128"):
        dm.train_dataloader()
    dm = DeepLakeDataModule(
        train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=128, drop_last=False
    )
    assert [len(b["labels"]) for b in dm.train_dataloader()] == [120]


@pytest.fixture
def make_corrupt_lake(make_lake: MakeLake) -> Callable[[tuple[int, ...]], str]:
    """12 PNG-compressed rows with int64 labels; the ``bad`` rows hold bytes that are not a PNG."""

    def make(bad: tuple[int, ...]) -> str:
        import io

        from PIL import Image

        url = make_lake(rows=0)
        ds = deeplake.open(url)
        ds.remove_column("images")
        ds.add_column("images", deeplake.types.Image(dtype="uint8", sample_compression="png"))
        ds.remove_column("labels")  # int64 labels come back from Deep Lake as read-only arrays
        ds.add_column("labels", deeplake.types.ClassLabel("int64"))
        ds["labels"].metadata["class_names"] = ["a", "b", "c"]
        buffer = io.BytesIO()
        Image.fromarray(np.full((4, 4), 7, np.uint8)).save(buffer, format="PNG")
        good = buffer.getvalue()
        images = [good[:16] + b"\x00not a png" * 4 if row in bad else good for row in range(12)]
        ds.append({"images": images, "labels": np.array([row % 3 for row in range(12)], np.int64)})
        ds.commit()
        return url

    return make


@pytest.fixture
def corrupt_lake(make_corrupt_lake: Callable[[tuple[int, ...]], str]) -> str:
    return make_corrupt_lake((3, 9))


def test_corrupt_image_bytes_name_the_row(corrupt_lake: str) -> None:
    dm = DeepLakeDataModule(train_url=corrupt_lake, val_url=corrupt_lake, batch_size=4)
    dm.setup("validate")
    with pytest.raises(
        DatasetError, match=r"row 3 of .* holds corrupt image bytes .*\[3, 9\].*--data.skip_corrupt"
    ):
        next(iter(dm.val_dataloader()))


def test_skip_corrupt_drops_and_counts_rows(corrupt_lake: str) -> None:
    dm = DeepLakeDataModule(train_url=corrupt_lake, val_url=corrupt_lake, batch_size=4, skip_corrupt=True)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert sorted(i for b in batches for i in b["index"].tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11]
    assert sum(int(b["skipped"]) for b in batches) == 2 and all(len(b["index"]) <= 4 for b in batches)
    assert all(b["images"].shape[1:] == (1, 4, 4) and (b["images"] == 7).all() for b in batches)


def test_skipped_rows_are_logged(corrupt_lake: str, tmp_path: Path) -> None:
    from fashion_lake.cli import cli_main

    data = ["--data.train_url", corrupt_lake, "--data.val_url", corrupt_lake, "--data.batch_size", "4"]
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    cli = cli_main(["validate", *data, *quiet, "--data.skip_corrupt", "true",
                    "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert cli.trainer.callback_metrics["val_skipped_rows"] == 2


@pytest.mark.parametrize(
    ("creds", "token", "message"),
    [
        ({"aws_secret_access_key": "abc"}, None, r"--data.creds.aws_secret_access_key is given by value"),
        ({"sas_token": "abc"}, None, r"--data.creds.sas_token is given by value"),
        (
            {"azure_storage_connection_string": "abc"},
            None,
            r"azure_storage_connection_string is given by value",
        ),
        ({"private_key": "abc"}, None, r"--data.creds.private_key is given by value"),
        (None, "abc", r"--data.token is given by value.*env:NAME"),
    ],
)
def test_secrets_by_value_are_refused(creds: dict | None, token: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        DeepLakeDataModule(creds=creds, token=token)
    assert "abc" not in str(caught.value)


def test_secret_references_resolve_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from fashion_lake.lake import storage_args

    creds = {"endpoint_url": "http://127.0.0.1:9", "aws_secret_access_key": "env:FL_SECRET"}
    DeepLakeDataModule(creds=creds, token="env:FL_TOKEN")  # references are accepted as given
    monkeypatch.setenv("FL_SECRET", "s3cr3t")
    with pytest.raises(ConfigError, match="environment variable FL_TOKEN, which is not set"):
        storage_args(creds, "env:FL_TOKEN")
    monkeypatch.setenv("FL_TOKEN", "t0k3n")
    assert storage_args(creds, "env:FL_TOKEN") == {
        "creds": {"endpoint_url": "http://127.0.0.1:9", "aws_secret_access_key": "s3cr3t"},
        "token": "t0k3n",
    }


def test_corrupt_row_in_a_worker_is_one_line(
    corrupt_lake: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from fashion_lake.cli import main

    data = ["--data.train_url", corrupt_lake, "--data.val_url", corrupt_lake, "--data.batch_size", "4"]
    with pytest.raises(SystemExit) as exit_:
        main(["validate", *data, "--data.num_workers", "1", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"fashion_lake: error: row 3 of {corrupt_lake!r} holds corrupt image bytes"), last


@pytest.mark.parametrize("built_before_restore", [False, True])
def test_training_position_survives_a_checkpoint(
    tiny_lakes: dict[str, str], built_before_restore: bool
) -> None:
    """The position reaches the train loader whether it is built before or after the restore."""

    def make() -> DeepLakeDataModule:
        return DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=16)

    dm = make()
    batches = iter(dm.train_dataloader())
    seen = [next(batches)["index"].tolist() for _ in range(3)]
    state = dm.state_dict()
    rest = [b["index"].tolist() for b in batches]

    resumed = make()
    if built_before_restore:
        loader = resumed.train_dataloader()
        resumed.load_state_dict(state)
    else:
        resumed.load_state_dict(state)
        loader = resumed.train_dataloader()
    assert state["train_position"]["batches"] == 3 and len(seen) == 3
    assert [b["index"].tolist() for b in loader] == rest


def test_batch_augmentations_need_the_batch_pipeline() -> None:
    with pytest.raises(ConfigError, match="data.flip, data.erasing work on the whole-batch pipeline"):
        DeepLakeDataModule(flip=True, erasing=0.5, train_transform={"images": SeedTransform(train=True)})


def test_skip_corrupt_needs_the_batch_pipeline(corrupt_lake: str) -> None:
    with pytest.raises(ConfigError, match="skip_corrupt works on the whole-batch pipeline only"):
        DeepLakeDataModule(
            train_url=corrupt_lake, skip_corrupt=True, train_transform={"images": SeedTransform()}
        )


def test_training_on_a_batch_of_only_corrupt_rows(make_corrupt_lake, tmp_path: Path) -> None:
    """The rows of the first training batch are corrupt, and only they."""
    from fashion_lake.cli import cli_main

    first_batch = TrainOrder(np.array([0, 12]), 2).batch(0, range(8))[1]  # one unit of 12 rows
    url = make_corrupt_lake(tuple(first_batch.tolist()))
    data = ["--data.train_url", url, "--data.val_url", url, "--data.batch_size", "2"]  # fmt: skip
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    cli = cli_main(["fit", *data, *quiet, "--data.skip_corrupt", "true", "--trainer.max_epochs", "1",
                    "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert metrics["train_skipped_rows"] == 2 and metrics["val_skipped_rows"] == 2
    assert cli.trainer.global_step == 6
    assert all(torch.isfinite(t).all() for t in cli.model.state_dict().values())  # BatchNorm stats too


def test_a_trainer_that_would_add_a_distributed_sampler_is_refused(tiny_lakes: dict[str, str]) -> None:
    """Lightning would rebuild the loaders around a DistributedSampler: no shuffle, no epoch."""
    import pytorch_lightning as pl

    dm = DeepLakeDataModule(train_url=tiny_lakes["train"], val_url=tiny_lakes["test"], batch_size=8)
    dm.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(ConfigError, match="--trainer.use_distributed_sampler false"):
        dm.setup("fit")
    dm.trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, use_distributed_sampler=False
    )
    dm.setup("fit")


def test_a_bad_label_past_the_first_rows_is_named_when_read(make_lake: MakeLake) -> None:
    """Setup checks the first rows only (no scan of the whole column on every rank); the readers
    check every label they read."""
    labels = [i % 3 for i in range(300)]
    labels[280] = 7
    url = make_lake(rows=300, labels=labels)
    dm = DeepLakeDataModule(train_url=url, val_url=url, batch_size=10)
    dm.setup("fit")  # the first 256 rows are fine
    with pytest.raises(DatasetError, match=r"row 280 of .* has label 7, outside 0..2 \(3 class names\)"):
        list(dm.train_dataloader())
