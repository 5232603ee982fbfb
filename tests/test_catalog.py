"""The data module's plain collaborators, without Lightning: the catalog of datasets and the
loader's sizing (``data/catalog.py``, ``data/plan.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import MakeLake

from fashion_lake.data import plan
from fashion_lake.data.catalog import Catalog
from fashion_lake.errors import ConfigError, DatasetError
from fashion_lake.ingest.write import FASHION_MNIST_CLASSES


def _catalog(train: str, val: str, **options: object) -> Catalog:
    urls = {"train": train, "val": val, "test": val, "predict": val}
    return Catalog(urls, say=lambda line: None, **options)  # type: ignore[arg-type]


def test_a_catalog_checks_each_dataset_once_and_knows_its_units(tiny_lakes: dict[str, str]) -> None:
    catalog = _catalog(tiny_lakes["train"], tiny_lakes["test"])
    info = catalog.info("train")
    assert (info.rows, info.sample_shape, info.codec) == (120, (28, 28, 1), None)
    assert catalog.info("train") is info  # cached
    assert catalog.class_names == FASHION_MNIST_CLASSES and catalog.reference_split == "train"
    units, kind = catalog.units("train")
    assert kind == "Deep Lake chunks" and units[0] == 0 and units[-1] == 120 and np.all(np.diff(units) > 0)
    assert catalog.source("val").url == tiny_lakes["test"] and catalog.source("val").version is None
    catalog.pinned = {tiny_lakes["test"]: "v1"}
    assert catalog.source("test").version == "v1"


def test_a_catalog_refuses_other_classes_and_a_typo(make_lake: MakeLake, tmp_path: Path) -> None:
    train, other = make_lake(), make_lake(class_names=["x", "y", "z"])
    with pytest.raises(DatasetError, match="the model is built for"):
        _catalog(train, other).info("val")
    typo = _catalog(train, str(tmp_path / "no-such-lake"))
    with pytest.raises(DatasetError, match="Fashion-MNIST is built only when neither"):
        typo.build_missing()
    assert not (tmp_path / "no-such-lake").exists()


def test_a_catalog_builds_fashion_mnist_where_no_dataset_exists(tiny_raw_dir: Path, tmp_path: Path) -> None:
    catalog = _catalog(str(tmp_path / "train"), str(tmp_path / "val"), raw_dir=str(tiny_raw_dir))
    assert catalog.reference_split is None and catalog.class_names == FASHION_MNIST_CLASSES
    catalog.build_missing()
    assert catalog.reference_split == "train" and catalog.info("val").rows == 50


def test_plan_sizes_shuffle_groups_by_the_budget() -> None:
    mib = 2**20
    assert plan.group_units_for(64 * mib, 1 * mib, partitions=8, in_flight=0) == 4  # 64 / (2 * 8)
    assert plan.group_units_for(10 * 2**30, 1 * mib, partitions=8, in_flight=0) == plan.MAX_GROUP_UNITS
    with pytest.raises(ConfigError, match="cannot hold one batch"):
        plan.group_units_for(16 * mib, 1 * mib, partitions=8, in_flight=8 * mib)
    assert plan.parse_bytes("2GiB") == 2 * 2**30 and plan.parse_bytes("512MB") == 512 * 10**6
    assert plan.budget_for(123, devices=4) == 123
    with pytest.raises(ConfigError, match="memory_budget"):
        plan.parse_bytes("lots")


def test_the_live_path_is_said_once_per_training_loader(
    tiny_lakes: dict[str, str], codec_lakes: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """One line says which data path is live: format, decoder, workers, read units, budget."""
    from fashion_lake import DeepLakeDataModule

    def said(url: str, **options: object) -> list[str]:
        caplog.clear()
        dm = DeepLakeDataModule(train_url=url, val_url=url, batch_size=16, drop_last=False, **options)
        with caplog.at_level(logging.INFO):
            dm.train_dataloader()
            dm.val_dataloader()
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Training data:")]

    (raw,) = said(tiny_lakes["train"], memory_budget="1GiB")
    assert "raw pixels; 0 worker processes" in raw and "(Deep Lake chunks" in raw
    assert raw.endswith("memory budget 1.00 GiB per device.")
    (jpeg,) = said(codec_lakes["jpeg"]["train"], num_workers=2)
    assert "jpeg decoded on the host (simplejpeg); 2 worker processes per device" in jpeg
    assert "each reads its run of every unit; batches cross shared-memory slots" in jpeg
