"""``DeepLakeDataModule``: Deep Lake datasets in, sharded train/val/test/predict loaders out.

A thin Lightning adapter: the hooks, the checkpointed state and the config (its constructor is
the ``data`` section of the YAML) over plain objects tested without Lightning: ``Catalog``
(the datasets by split), ``plan`` (workers, memory budget, shuffle groups), ``LakeLoader`` and
``LakeDataset`` (the batches), ``BatchTransform`` (whole-batch augmentation).

The module owns distribution (see ``order.py``): it takes rank and world size from the
Trainer, or from ``dm.dist`` when set by hand, so the Trainer runs with
``use_distributed_sampler=False``. Batches leave the loader as uint8 and become augmented float
tensors in [0, 1] in ``on_after_batch_transfer``, on the accelerator when there is one; the
model normalises them (``data.normalize`` is linked to ``model.normalize``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, SequentialSampler

from fashion_lake.data.augment import IMAGENET_STATS, BatchTransform, ColumnTransform, per_channel
from fashion_lake.data.catalog import Catalog
from fashion_lake.data.crops import Crops
from fashion_lake.data.decode import DEVICE_CODECS
from fashion_lake.data.files import ImageFiles, collate, image_files
from fashion_lake.data.info import LakeInfo
from fashion_lake.data.loader import LakeLoader
from fashion_lake.data.order import DistContext, EvalBatches, OrderSpec, per_device_batch
from fashion_lake.data.plan import (
    budget_for,
    forked,
    group_units_for,
    live_path,
    parse_bytes,
    tasks_for,
    workers_for,
)
from fashion_lake.data.reader import LakeDataset
from fashion_lake.errors import ConfigError, DatasetError
from fashion_lake.lake import Creds, check_secrets

ColumnTransforms = dict[str, Callable[[Any], Any]]
Stats = float | list[float]
# Lightning stage -> the split whose loader feeds it
STAGE_SPLITS = {
    "train": "train", "sanity_check": "val", "validate": "val", "test": "test", "predict": "predict"
}  # fmt: skip
PARTITIONS = 8  # canonical partitions by default (see the constructor)


def _passthrough(batch: dict) -> dict:
    """``LakeDataset`` already yields collated parts; the loader joins them."""
    return batch


# option -> (lowest, highest, what it means): the ranges every data option must keep
RANGES: dict[str, tuple[float, float | None, str]] = {
    "batch_size": (1, None, "rows per step on each device"),
    "global_batch_size": (1, None, "rows per step over all devices"),
    "num_workers": (0, None, "loader processes; 0 reads in the training process"),
    "rotation": (0, 180, "the largest rotation in degrees, either way; 0 turns it off"),
    "crop_padding": (0, None, "pixels of padding per side; 0 turns it off"),
    "erasing": (0, 1, "a probability; 0 turns it off"),
    "partitions": (1, None, "canonical partitions of each epoch; the world size must divide it"),
    "memory_budget": (1, None, "bytes a rank's loader may hold"),
}


def _check_ranges(**values: float | None) -> None:
    """Refuse a value outside its range, naming the option, its range and what it means."""
    for name, value in values.items():
        low, high, meaning = RANGES[name]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"data.{name} must be a number ({meaning}), not {value!r}.")
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise ConfigError(f"data.{name} must be {allowed} ({meaning}), not {value}.")


class DeepLakeDataModule(pl.LightningDataModule):
    """Train, val, test and predict loaders over Deep Lake datasets named by URL.

    Args:
        train_url: Training dataset: a local path, ``file://``, ``mem://``, ``s3://``, ``gcs://``,
            ``azure://``, ``al://`` or ``hub://`` URL.
        val_url: Validation dataset.
        test_url: Test dataset (default: ``val_url``).
        predict_url: Dataset to predict on (default: the test dataset), or image files read in
            place: a folder of them (searched recursively) or one file; ``predictions.csv`` then
            names each file. They are brought to the model's channels and to ``image_size`` (a
            centre crop) or else to the size the checkpoint was trained on.
        raw_dir: Folder with the Fashion-MNIST IDX files, used to build a missing local lake
            (default: ``$FASHION_LAKE_RAW_DIR``).
        download: Download the IDX files (the release's mirror) to build a missing local lake
            when no ``raw_dir`` is given.
        batch_size: Rows per step on each device.
        global_batch_size: Rows per step over all devices; overrides ``batch_size`` and keeps
            the training order identical for any number of devices.
        num_workers: DataLoader worker processes per device; ``null`` (default) picks by storage:
            0 for raw image columns (reads are memory copies, fastest in-process), else one per
            CPU core available to each device, up to 8, since png/jpeg decoding (and cropping,
            with ``image_size``) is CPU-bound and scales over processes.
        seed: Seeds each epoch's shuffle as ``(seed, epoch)``.
        drop_last: Drop the last incomplete global training batch.
        image_column: Column holding HxWxC uint8 images.
        label_column: ClassLabel column holding class ids.
        class_names: Class names, for datasets whose label column has none in its metadata.
        train_transform: Per-column, per-sample transforms for training rows, e.g.
            ``{'images': SeedTransform()}`` (columns not named pass through), giving float images
            in [0, 1] (``ToTensor``; the model normalises); the default (``None``) is the fast
            whole-batch pipeline configured by ``rotation``, ``flip``, ``crop_padding``, ``erasing``.
        eval_transform: Per-column, per-sample transforms for val/test/predict rows.
        rotation: Whole-batch pipeline: random rotation range in degrees for training (0: off).
        normalize: ``(mean, std)`` the model applies after scaling images to [0, 1] (linked to
            ``model.normalize``), each a number or one per channel
            (``[[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]``), or ``imagenet`` for exactly
            those: the choice with ``model.pretrained`` on RGB images.
        image_size: Crop and resize every image to ``N`` x ``N`` (or ``[H, W]``), so datasets
            of photos in many sizes train in batches: a random-resized crop for training (scale
            ``crop_scale`` of the area, aspect 3/4..4/3) and, for evaluation, the shorter side
            resized to ``N / 0.875`` and the centre crop, as torchvision's ImageNet recipe.
            Training crops are seeded by ``(seed, epoch, row)``, so resuming stays exact.
            Unset (default): images are used as they are, and must share one size.
        crop_scale: With ``image_size``: the range of the image's area a training crop covers.
        channels: Image channels the model sees, 1 (grey) or 3 (RGB), converting images that
            differ (RGB to grey as Pillow's ``convert("L")``); default: the dataset's own (png/jpeg:
            colour if any of the first 256 rows is).
        flip: Whole-batch pipeline: mirror each training image left-right with probability 0.5.
        crop_padding: Whole-batch pipeline: pad each training image with this many zero pixels
            per side and crop it back at a random offset, as ``RandomCrop(28, padding)`` (0: off).
        erasing: Whole-batch pipeline: probability that a training image gets a random rectangle
            set to the normalisation mean (0 once normalised), as ``RandomErasing`` with its
            default sizes (0: off).
        partitions: Canonical partitions of each training epoch (``docs/data-path.md``): every
            global batch takes its rows evenly from all of them, and each rank reads its own
            ``partitions / world_size`` of them, so the world size must divide it. The global
            batches depend on it, never on the world size or the workers. Default: 8, or the
            smallest multiple of the world size above it (16 on 16 devices); a mid-epoch resume
            keeps the checkpoint's.
        memory_budget: Bytes the training loader of one rank (its workers included) may hold,
            e.g. ``2GiB``; the read units held per shuffle group follow from it, whatever the
            row size. Default: a quarter of the memory this process may use (its cgroup limit
            where there is one, else physical memory), shared by the devices of the machine.
        train_query: Deep Lake TQL query selecting the training rows, e.g.
            ``SELECT * WHERE labels IN (0, 6)``; class ids and names keep their meaning.
        val_query: The same for validation, test and predict rows.
        use_latest_version: Read each dataset's latest version even when resuming or
            evaluating a checkpoint that recorded an older one (by default the recorded one).
        decode: Where png/jpeg images are decoded: ``host`` (in the loader's worker processes),
            ``device`` (jpeg only: whole batches with torchvision's ``decode_jpeg`` on the
            Trainer's device, nvjpeg on CUDA), or ``auto``: ``device`` for jpeg when training on
            CUDA, else ``host``.
        skip_corrupt: Skip rows whose image bytes do not decode, counting them in the logs as
            ``train_skipped_rows`` / ``val_skipped_rows``, instead of stopping with an error
            naming the row.
        creds: Storage credentials for Deep Lake, e.g. ``endpoint_url`` and ``aws_region``.
            Secrets only by reference, ``env:NAME`` naming an environment variable (e.g.
            ``aws_secret_access_key: env:AWS_SECRET_ACCESS_KEY``), so that no saved config,
            checkpoint or log holds them; left out, Deep Lake reads the standard variables.
            ``connect_timeout`` (seconds, default 10) bounds the wait for a remote storage
            endpoint to accept a connection before it is reported unreachable.
        token: Activeloop token for ``al://`` and ``hub://`` datasets, by reference
            (``env:ACTIVELOOP_TOKEN``).
    """

    def __init__(
        self,
        train_url: str = "lakes/fashion-mnist-train",
        val_url: str = "lakes/fashion-mnist-test",
        test_url: str | None = None,
        predict_url: str | None = None,
        raw_dir: str | None = None,
        download: bool = False,
        batch_size: int = 128,
        global_batch_size: int | None = None,
        num_workers: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        image_column: str = "images",
        label_column: str = "labels",
        class_names: list[str] | None = None,
        train_transform: ColumnTransforms | None = None,
        eval_transform: ColumnTransforms | None = None,
        rotation: float = 20.0,
        normalize: tuple[Stats, Stats] | Literal["imagenet"] = (0.5, 0.5),
        image_size: int | tuple[int, int] | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        channels: Literal[1, 3] | None = None,
        flip: bool = False,
        crop_padding: int = 0,
        erasing: float = 0.0,
        partitions: int | None = None,
        memory_budget: int | str | None = None,
        train_query: str | None = None,
        val_query: str | None = None,
        use_latest_version: bool = False,
        decode: Literal["auto", "host", "device"] = "auto",
        skip_corrupt: bool = False,
        creds: Creds | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__()
        _check_ranges(
            batch_size=batch_size,
            global_batch_size=global_batch_size,
            num_workers=num_workers,
            rotation=rotation,
            crop_padding=crop_padding,
            erasing=erasing,
            partitions=partitions,
            memory_budget=parse_bytes(memory_budget),
        )
        urls = {
            "train": train_url,
            "val": val_url,
            "test": test_url or val_url,
            "predict": predict_url or test_url or val_url,
        }
        # predict_url naming image files (a folder or one file): read in place (files.py), not a lake
        self.predict_files = image_files(predict_url)
        if self.predict_files is not None:
            urls["predict"] = urls["test"]  # the lake checked for classes in its stead
        self.batch_size, self.global_batch_size = batch_size, global_batch_size
        self.num_workers, self.seed, self.drop_last = num_workers, seed, drop_last
        self.transforms = {"train": train_transform, "eval": eval_transform}
        self.normalize = IMAGENET_STATS if normalize == "imagenet" else tuple(normalize)
        if not bool((per_channel(self.normalize[1]) > 0).all()):
            raise ConfigError(f"data.normalize: every std must be above 0, got {self.normalize[1]}.")
        # erased rectangles get the mean: 0 once the model has normalised (RandomErasing's value=0)
        self.batch_transform = BatchTransform(
            rotation, flip=flip, crop_padding=crop_padding, erasing=erasing, fill=self.normalize[0]
        )
        if channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), not {channels!r}.")
        self.channels = channels
        try:
            self.crops = Crops.of(image_size, crop_scale, seed) if image_size is not None else None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"data.image_size / data.crop_scale: {e}.") from None
        self.partitions, self.memory_budget = partitions, parse_bytes(memory_budget)
        if decode not in ("auto", "host", "device"):
            raise ConfigError(f"data.decode must be auto, host or device, not {decode!r}.")
        self.decode = decode
        self.skip_corrupt = skip_corrupt
        if (image_size is not None or channels is not None) and (
            train_transform is not None or eval_transform is not None
        ):
            raise ConfigError(
                "data.image_size and data.channels work on the whole-batch pipeline, which "
                "data.train_transform / data.eval_transform replace; drop one or the other."
            )
        if skip_corrupt and (train_transform is not None or eval_transform is not None):
            raise ConfigError(
                "data.skip_corrupt works on the whole-batch pipeline only; drop data.train_transform / "
                "data.eval_transform (use rotation and normalize) or data.skip_corrupt."
            )
        augments = {"flip": flip, "crop_padding": crop_padding, "erasing": erasing}
        if train_transform is not None and any(augments.values()):
            named = ", ".join(f"data.{name}" for name, on in augments.items() if on)
            raise ConfigError(
                f"{named} work on the whole-batch pipeline, which data.train_transform replaces; drop "
                "data.train_transform or put the augmentation in it."
            )
        check_secrets(creds, token)
        queries = {"train": train_query, "val": val_query, "test": val_query, "predict": val_query}
        self.catalog = Catalog(
            urls, image_column=image_column, label_column=label_column, class_names=class_names,
            queries=queries, use_latest_version=use_latest_version, raw_dir=raw_dir, download=download,
            creds=creds, token=token, say=rank_zero_info,
        )  # fmt: skip
        self._injected_dist: DistContext | None = None  # dm.dist = ..., in tests and tools
        self.datasets: dict[str, LakeDataset] = {}
        self._train_loader: LakeLoader | None = None
        self._train_position: dict | None = None  # from a checkpoint, for the next train loader
        self.unit_kinds: dict[str, str] = {}  # split -> where its read units come from

    # ------------------------------------------------------------------ distribution
    @property
    def dist(self) -> DistContext:
        """Rank and world size: injected, else the Trainer's, else a single process."""
        if self._injected_dist is not None:
            return self._injected_dist
        if self.trainer is not None:
            return DistContext(self.trainer.global_rank, self.trainer.world_size)
        return DistContext()

    @dist.setter
    def dist(self, value: DistContext) -> None:
        self._injected_dist = value

    @property
    def num_partitions(self) -> int:
        """``partitions``, or its default for this world size (see the constructor)."""
        if self.partitions is not None:
            return self.partitions
        world = self.dist.world_size
        return world * -(-PARTITIONS // world)

    @property
    def per_device_batch_size(self) -> int:
        try:
            return per_device_batch(self.batch_size, self.global_batch_size, self.dist.world_size)
        except ValueError as e:
            raise ConfigError(str(e)) from e

    # ------------------------------------------------------------------ what the model links to
    @property
    def urls(self) -> dict[str, str]:
        return self.catalog.urls

    def info(self, split: str) -> LakeInfo:
        """Checked facts about one split's dataset (``Catalog.info``)."""
        return self.catalog.info(split)

    @property
    def class_names(self) -> list[str]:
        """Class names from the dataset's ClassLabel metadata (linked to the model)."""
        return self.catalog.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        """Image channels the model sees (linked to its input channels)."""
        if self.channels is not None:
            return self.channels
        reference = self.catalog.reference
        return 1 if reference is None else reference.sample_shape[-1]

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Build missing local Fashion-MNIST lakes from the IDX files, once per node, on a fresh
        start only (``Catalog.build_missing``): a missing dataset beside existing ones is refused."""
        self.catalog.build_missing()

    def setup(self, stage: str) -> None:
        connector = getattr(self.trainer, "_accelerator_connector", None)
        if connector is not None and connector.use_distributed_sampler and connector.is_distributed:
            raise ConfigError(
                "the Trainer would wrap the data module's loaders in a DistributedSampler, which loses "
                "its shuffle, epoch and shards; pass use_distributed_sampler=False to the Trainer "
                "(--trainer.use_distributed_sampler false; DeepLakeDataModule shards the data itself)."
            )
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}[
            stage
        ]
        for split in splits:
            info = self.info(split)
            if info.class_names != self.class_names:
                raise DatasetError(
                    f"{self.urls[split]!r} has classes {info.class_names}, but the model is built for "
                    f"{self.class_names} (from {self.urls['train']!r}); use datasets with the same classes."
                )
            self._check_normalize()
            transforms = self.transforms["train" if split == "train" else "eval"]
            on_device = transforms is None and self._decode_on_device(split, info)
            units, self.unit_kinds[split] = self.catalog.units(split)
            self.datasets[split] = LakeDataset(
                self.catalog.source(split),
                info,
                units,
                self.catalog.image_column,
                self.catalog.label_column,
                ColumnTransform(transforms, (self.catalog.image_column, self.catalog.label_column))
                if transforms is not None
                else None,
                skip_corrupt=self.skip_corrupt,
                decode_on_device=on_device,
                crops=self.crops,
                channels=self.num_channels,
                train=split == "train",
                opened=self.catalog.opened(split),
            )

    def _check_normalize(self) -> None:
        channels = self.num_channels
        for name, stats in zip(("mean", "std"), self.normalize, strict=True):
            if isinstance(stats, list | tuple) and len(stats) not in (1, channels):
                allowed = "one number" if channels == 1 else f"one number or {channels}"
                raise ConfigError(
                    f"data.normalize {name} has {len(stats)} values, but the images have {channels} "
                    f"channel(s); give {allowed} (imagenet statistics are for RGB images)."
                )

    @property
    def device(self) -> torch.device:
        """Where batches go: the Trainer's root device, else the CPU."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _decode_on_device(self, split: str, info: LakeInfo) -> bool:
        if info.codec is None or self.decode == "host":
            return False
        if self.crops is not None:  # photos of many sizes: decoded, cropped and resized per row
            if self.decode == "device":
                raise ConfigError(
                    "data.decode device decodes whole batches of one size, and data.image_size crops each "
                    "image on the host; use data.decode host (or auto) with data.image_size."
                )
            return False
        if self.decode == "device":
            if info.codec not in DEVICE_CODECS:
                raise ConfigError(
                    f"data.decode device decodes jpeg only, and {self.urls[split]!r} holds {info.codec} "
                    "images; use data.decode host (or auto)."
                )
            return True
        return info.codec in DEVICE_CODECS and self.device.type == "cuda"

    @property
    def _devices(self) -> int:
        return self.trainer.num_devices if self.trainer is not None else 1

    def budget(self) -> int:
        """Bytes one rank's training loader may hold (``memory_budget``, or its default)."""
        return budget_for(self.memory_budget, self._devices)

    def _files_loader(self) -> DataLoader:
        """Batches of the image files ``predict_url`` names, at the size the model was trained on."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        shape = getattr(model, "input_shape", None)  # restored from the checkpoint before loaders exist
        size = (int(shape[1]), int(shape[2])) if shape else None
        dataset = ImageFiles(self.predict_files or [], self.num_channels, self.crops, size)
        batches = EvalBatches(SequentialSampler(dataset), self.per_device_batch_size, dist=self.dist)
        workers = self.num_workers or 0
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate)

    def _loader(self, split: str) -> DataLoader:
        if split == "predict" and self.predict_files is not None:
            return self._files_loader()
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        dataset = self.datasets[split]
        train = split == "train"
        batch = self.per_device_batch_size
        workers = workers_for(dataset, self.num_workers, self._devices)
        batch_bytes = batch * math.prod(dataset.sample_shape)
        tasks = tasks_for(dataset, workers, batch, batch_bytes)
        in_flight = tasks.in_flight(workers, batch_bytes)
        order = None
        if train:
            group_units = group_units_for(self.budget(), dataset.unit_bytes(), self.num_partitions, in_flight)
            order = self._train_order(dataset, group_units)
            if order.at(0).steps == 0:
                raise DatasetError(
                    f"{self.urls['train']!r} has {len(dataset)} training rows, fewer than one global "
                    f"batch of {batch * self.dist.world_size}; lower --data.batch_size or set "
                    "--data.drop_last false."
                )
            rank_zero_info(live_path(self.urls["train"], dataset, workers, self.unit_kinds["train"],
                                     order.partitions, group_units, self.budget()))  # fmt: skip
        loader = LakeLoader(
            dataset,
            batch_size=batch,
            dist=self.dist,
            order=order,
            # Lightning's overfit_batches promises the same batches every epoch; our shuffle is ours to fix
            frozen=train and self.trainer is not None and bool(self.trainer.overfit_batches),
            group=tasks.group,
            adopt=("group_units",) if self.partitions is not None else ("group_units", "partitions"),
            num_workers=workers,
            collate_fn=_passthrough,
            pin_memory=self.device.type == "cuda",
            # forked training workers find each epoch's plan in shared memory; others fork each epoch
            persistent_workers=workers > 0 and (split == "val" or (train and forked())),
            prefetch_factor=tasks.prefetch,
        )
        if train:
            self._train_loader = loader
            if self._train_position is not None:
                loader.load_state_dict(self._train_position)
                self._train_position = None
            loader.start()  # its workers open the lake during the sanity check
        return loader

    def _train_order(self, dataset: LakeDataset, group_units: int) -> OrderSpec:
        """This dataset's training order (see ``order.py``)."""
        world = self.dist.world_size
        partitions = self.num_partitions
        if partitions % world:
            raise ConfigError(
                f"data.partitions ({partitions}) must be a multiple of the world size ({world}): each "
                f"rank reads its own partitions. Set --data.partitions {world * -(-partitions // world)} "
                "(global batches then differ from runs with another partitions count)."
            )
        return OrderSpec(dataset.units, self.per_device_batch_size * world, seed=self.seed,
                         partitions=partitions, group_units=group_units, drop_last=self.drop_last,
                         world_size=world)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def prepare_batch(self, batch: dict, train: bool) -> dict:
        """uint8 images -> float in [0, 1] (augmented when ``train``); float batches pass.

        Normalising is the model's, so that it takes what the loaders yield, also without this hook.

        Rotation angles come from ``batch['aug_seed']`` when present (see
        ``on_before_batch_transfer``), else from torch's global generator.
        """
        batch = dict(batch)
        seed = batch.pop("aug_seed", None)
        if batch["images"].dtype == torch.uint8:
            images = batch["images"]
            generator = None
            if seed is not None:
                generator = torch.Generator(device=images.device).manual_seed(seed)
            batch["images"] = self.batch_transform(images, train=train, generator=generator)
        return batch

    def state_dict(self) -> dict:
        """Saved in checkpoints: each dataset's URL and Deep Lake version, and the training position."""
        state: dict[str, Any] = {
            "versions": {ds.source.url: ds.info.version for ds in self.datasets.values() if ds.info.version}
        }
        if self._train_loader is not None:
            state["train_position"] = self._train_loader.state_dict()
        elif self._train_position is not None:  # restored, not applied yet
            state["train_position"] = self._train_position
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Pin the recorded versions and the training position.

        Resumed fit, validate and test read what was trained on. The position is applied when
        the train loader is built, which Lightning may do before it restores its own loop state
        (``trainer.estimated_stepping_batches`` in ``configure_optimizers`` builds it early and
        Lightning then never hands it the saved state); when Lightning does apply its copy, the
        two are the same.
        """
        self.catalog.pinned = dict(state_dict.get("versions", {}))
        self._train_position = state_dict.get("train_position")
        loader = self._train_loader
        if self._train_position is not None and loader is not None and not loader.started:
            loader.load_state_dict(self._train_position)  # built already, e.g. restored after setup
            self._train_position = None
        self.datasets.clear()

    def teardown(self, stage: str) -> None:
        """After fit: the units that training read last, kept for a next epoch, are let go (those
        of forked workers go with the workers, which Lightning ends)."""
        if stage == "fit" and "train" in self.datasets:
            self.datasets["train"].forget()

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Decode a still-encoded jpeg batch on the device; seed its augmentation, on the host.

        The seed is (seed, epoch, the batch's first row): the angles then depend on nothing a
        resumed or re-sharded run could lose (not on global RNG state), which keeps mid-epoch
        resume exact.
        """
        if "encoded" in batch:  # decode_on_device (see setup)
            split = STAGE_SPLITS[self.trainer.state.stage.value] if self.trainer is not None else "train"
            batch = self.datasets[split].decode_batch(batch, self.device)
        if self.trainer is not None and self.trainer.training and len(batch["index"]):
            epoch, first = self.trainer.current_epoch, int(batch["index"][0])
            batch = {**batch, "aug_seed": ((self.seed * 1_000_003 + epoch) * 2_147_483_629 + first) % 2**63}
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        training = self.trainer is not None and self.trainer.training
        return self.prepare_batch(batch, train=training)
