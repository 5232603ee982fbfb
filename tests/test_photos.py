"""Photos of any size and colour: ``data.image_size`` crops, ``data.channels``, per-channel ``normalize``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import deeplake
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from fashion_lake import DeepLakeDataModule, FashionMnistModule
from fashion_lake.cli import cli_main
from fashion_lake.data.crops import EVAL_CROP, Crops
from fashion_lake.data.loader import LakeLoader
from fashion_lake.data.module import IMAGENET_STATS
from fashion_lake.data.order import DistContext
from fashion_lake.errors import ConfigError, DatasetError
from fashion_lake.host import memory_limit

SIZES = [(120, 160), (192, 144), (256, 200), (84, 108), (160, 160)]  # (H, W)
CLASSES = ["beach", "forest", "city"]


def photo(height: int, width: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth, position-dependent picture (a wrong crop shows), different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    channels = [
        127 + 120 * np.sin(x / width * 3 + phase[0]) * np.cos(y / height * 2 + phase[c]) for c in range(3)
    ]
    pixels = np.stack(channels, -1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def plain_lake(url: str, codec: str, encoded: list[bytes], labels: list[int]) -> str:
    """A lake as a user writes one with plain deeplake: encoded images and ClassLabel labels."""
    ds = deeplake.create(url)
    ds.add_column("images", deeplake.types.Image(sample_compression=codec))
    ds.add_column("labels", deeplake.types.ClassLabel("uint32"))
    ds["labels"].metadata["class_names"] = CLASSES
    ds.append({"images": encoded, "labels": labels})
    ds.commit()
    return url


@pytest.fixture(scope="module")
def photo_lakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """jpeg and png lakes of 15 photos in 5 sizes (row 4: a grey jpeg among RGB ones), written with
    plain deeplake from the encoded files: codec -> URL."""
    root = tmp_path_factory.mktemp("photos")
    photos = [photo(*SIZES[row % len(SIZES)], row, "L" if row == 4 else "RGB") for row in range(15)]
    labels = [row % 3 for row in range(15)]
    lakes = {}
    for codec in ("jpeg", "png"):
        encoded = [encode(image, codec.upper()) for image in photos]
        lakes[codec] = plain_lake(str(root / codec), codec, encoded, labels)
    return lakes


def source(url: str, row: int) -> Image.Image:
    """A row as Pillow decodes its stored bytes, in RGB."""
    ds = deeplake.open_read_only(url)
    return Image.open(io.BytesIO(ds["images"].get_bytes(row))).convert("RGB")


def module(url: str, **kwargs) -> DeepLakeDataModule:
    kwargs.setdefault("num_workers", 0)
    return DeepLakeDataModule(train_url=url, val_url=url, **kwargs)


def train_pixels(dm: DeepLakeDataModule, epoch: int) -> dict[int, torch.Tensor]:
    """Every training row's cropped pixels in ``epoch``, by row."""
    loader = dm.train_dataloader()
    loader.set_epoch(epoch)
    out = {}
    for batch in loader:
        out.update(zip(batch["index"].tolist(), batch["images"], strict=True))
    return out


def test_differing_sizes_without_image_size_name_the_option(photo_lakes: dict[str, str]) -> None:
    with pytest.raises(DatasetError, match=r"differing sizes; set --data.image_size N"):
        next(iter(module(photo_lakes["jpeg"], batch_size=8).val_dataloader()))


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_eval_is_resize_shorter_side_and_centre_crop(photo_lakes: dict[str, str], codec: str) -> None:
    dm = module(photo_lakes[codec], batch_size=15, image_size=32, drop_last=False)
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].shape == (15, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert dm.num_channels == 3  # row 0 is RGB; the grey row 4 is converted
    for row in range(15):
        image = source(photo_lakes[codec], row)
        side = min(image.size) * EVAL_CROP  # the centred square of 0.875 of the shorter side
        box = (
            (image.width - side) / 2,
            (image.height - side) / 2,
            (image.width + side) / 2,
            (image.height + side) / 2,
        )
        exact = np.array(image.resize((32, 32), Image.BILINEAR, box=box))
        got = batch["images"][row].permute(1, 2, 0).numpy().astype(int)
        # the box rounded to whole pixels; jpeg rows decoded at a reduced DCT scale (crops.py)
        assert np.abs(got - exact).mean() < (1 if codec == "png" else 2.5), row
        # torchvision's two steps (resize to 37, crop 32) round the crop to whole pixels of the resized image
        two_step = TF.center_crop(TF.resize(image, round(32 / EVAL_CROP)), [32, 32])
        assert np.abs(got - np.array(two_step)).mean() < 6, row
    again = next(iter(module(photo_lakes[codec], batch_size=5, image_size=32).val_dataloader()))
    torch.testing.assert_close(again["images"], batch["images"][:5])  # deterministic


def test_train_crops_depend_on_seed_epoch_and_row_only(photo_lakes: dict[str, str]) -> None:
    base = {"image_size": [12, 20], "drop_last": False}
    first = train_pixels(module(photo_lakes["jpeg"], batch_size=5, **base), epoch=0)
    assert len(first) == 15 and first[0].shape == (3, 12, 20)
    other_batching = train_pixels(module(photo_lakes["jpeg"], batch_size=3, num_workers=2, **base), epoch=0)
    assert all(torch.equal(first[row], other_batching[row]) for row in range(15))
    next_epoch = train_pixels(module(photo_lakes["jpeg"], batch_size=5, **base), epoch=1)
    other_seed = train_pixels(module(photo_lakes["jpeg"], batch_size=5, seed=1, **base), epoch=0)
    assert sum(not torch.equal(first[row], next_epoch[row]) for row in range(15)) >= 13
    assert sum(not torch.equal(first[row], other_seed[row]) for row in range(15)) >= 13


def test_train_crops_resume_exactly_mid_epoch(photo_lakes: dict[str, str]) -> None:
    def loader(workers: int) -> LakeLoader:
        dm = module(photo_lakes["png"], batch_size=3, num_workers=workers, image_size=10, drop_last=False)
        dm.dist = DistContext(0, 1)
        return dm.train_dataloader()

    full = list(loader(0))
    interrupted = loader(2)
    it = iter(interrupted)
    next(it), next(it)
    state = interrupted.state_dict()
    resumed = loader(0)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 2
    for got, want in zip(rest, full[2:], strict=True):
        assert torch.equal(got["index"], want["index"]) and torch.equal(got["images"], want["images"])


def test_crop_boxes_follow_random_resized_crop() -> None:
    crops = Crops.of(32, (0.25, 0.5), seed=3)
    boxes = [crops.box(300, 400, train=True, epoch=0, row=row) for row in range(200)]
    areas = np.array([h * w / (300 * 400) for _, _, h, w in boxes])
    aspects = np.array([w / h for _, _, h, w in boxes])
    assert areas.min() > 0.24 and areas.max() < 0.51 and areas.std() > 0.05
    assert aspects.min() > 3 / 4 - 0.02 and aspects.max() < 4 / 3 + 0.02
    assert all(top >= 0 and left >= 0 and top + h <= 300 and left + w <= 400 for top, left, h, w in boxes)
    assert crops.box(300, 400, True, 0, 7) == boxes[7] != crops.box(300, 400, True, 1, 7)
    # the centre crop covers the shorter side's middle EVAL_CROP share, in the output's aspect
    assert crops.box(300, 400, train=False) == pytest.approx((18.75, 68.75, 262.5, 262.5))
    with pytest.raises(ConfigError, match="image_size"):
        module("unused", image_size=0)


def test_large_jpeg_decodes_scaled_like_a_full_decode() -> None:
    """A 1600x1200 jpeg cropped to 64x64 is decoded at a DCT scale near the crop's, with the same result."""
    data = encode(photo(1200, 1600, seed=9), "JPEG")
    crops = Crops.of(64)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for train, row in [(False, 0), (True, 1), (True, 2)]:
        scaled = crops.decode(data, "jpeg", 3, train, 0, row)
        exact = crops.pixels(full, 3, train, 0, row)
        assert scaled.shape == exact.shape == (64, 64, 3)
        assert np.abs(scaled.astype(int) - exact.astype(int)).mean() < 2


def test_channels_convert_grey_and_rgb(photo_lakes: dict[str, str], tiny_lakes: dict[str, str]) -> None:
    grey = next(iter(module(photo_lakes["png"], batch_size=15, image_size=16, channels=1).val_dataloader()))
    rgb = next(iter(module(photo_lakes["png"], batch_size=15, image_size=16).val_dataloader()))
    luma = (rgb["images"].double() * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
    # converted before the resize, rounded twice: within 2 levels of the luma of the RGB crop
    assert grey["images"].shape == (15, 1, 16, 16) and (grey["images"] - luma).abs().max() <= 2
    raw = module(tiny_lakes["test"], batch_size=10, channels=3)
    batch = next(iter(raw.val_dataloader()))
    assert raw.num_channels == 3 and batch["images"].shape == (10, 3, 28, 28)
    assert torch.equal(batch["images"][:, 0], batch["images"][:, 2])


def test_grey_jpeg_lake_has_one_channel(codec_lakes: dict) -> None:
    """Deep Lake decodes grey jpeg as RGB; the bytes say the image is grey, and so does the model's input."""
    dm = module(codec_lakes["jpeg"]["test"], batch_size=10)
    assert dm.num_channels == 1 and next(iter(dm.val_dataloader()))["images"].shape == (10, 1, 28, 28)


def test_normalize_per_channel(photo_lakes: dict[str, str]) -> None:
    dm = module(photo_lakes["png"], batch_size=15, image_size=8, normalize="imagenet")
    batch = next(iter(dm.val_dataloader()))
    model = FashionMnistModule(num_classes=len(CLASSES), in_channels=3, normalize=dm.normalize)
    out = model.normalize(dm.prepare_batch(batch, train=False)["images"])  # the model normalises
    mean, std = (torch.tensor(v)[:, None, None] for v in IMAGENET_STATS)
    torch.testing.assert_close(out, (batch["images"].float() / 255 - mean) / std)
    with pytest.raises(ConfigError, match="normalize mean has 2 values, but the images have 3 channel"):
        module(photo_lakes["png"], image_size=8, normalize=([0.5, 0.5], 0.5)).setup("validate")


def test_device_decode_refused_with_image_size(photo_lakes: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="data.decode device decodes whole batches of one size"):
        module(photo_lakes["jpeg"], image_size=8, decode="device").setup("validate")


def test_cli_fits_and_validates_photos(photo_lakes: dict[str, str], run_config: Path) -> None:
    """The shipped photos overlay, on one lake split by query (the README's one-folder route)."""
    configs = Path(__file__).parents[1] / "configs"
    args = [
        "--config", str(configs / "fashion.yaml"), "--config", str(configs / "photos.yaml"),
        "--config", str(run_config), "--model.pretrained", "false",
        "--data.train_url", photo_lakes["jpeg"], "--data.val_url", photo_lakes["jpeg"],
        "--data.train_query", "SELECT * WHERE ROW_NUMBER() % 5 != 0",
        "--data.val_query", "SELECT * WHERE ROW_NUMBER() % 5 == 0",
        "--data.image_size", "24", "--data.batch_size", "4", "--data.num_workers", "0",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
    ]  # fmt: skip
    fit = cli_main(["fit", *args])
    assert fit.model.net.conv1.in_channels == 3 and fit.model.class_names == CLASSES
    assert fit.trainer.global_step == 2 and len(fit.datamodule.datasets["val"]) == 3
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    again = cli_main(["validate", *args, "--ckpt_path", ckpt])
    assert 0.0 <= float(again.trainer.callback_metrics["val_acc"]) <= 1.0
    grey = [*args, "--data.val_url", photo_lakes["png"], "--data.channels", "1"]
    grey += ["--data.normalize", "[0.5, 0.5]"]
    fresh = cli_main(["validate", *grey])
    assert fresh.model.net.conv1.in_channels == 1 and "val_acc" in fresh.trainer.callback_metrics


def test_the_memory_budget_follows_the_machine_and_is_refused_when_too_small(
    photo_lakes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget is bytes, whatever the row size: a quarter of the memory this process may use."""
    dm = module(photo_lakes["jpeg"], batch_size=4, image_size=8)
    dm.train_dataloader()
    assert dm.budget() == memory_limit() // 4
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_PHYS_PAGES" else real(name))
    assert memory_limit() == 4096  # a 4 KiB machine now
    with pytest.raises(ConfigError, match=r"data.memory_budget of 0 MiB cannot hold one batch"):
        module(photo_lakes["jpeg"], batch_size=4, image_size=8).train_dataloader()


def test_corrupt_photo_is_named_or_skipped_with_crops(tmp_path: Path) -> None:
    encoded = [encode(photo(60 + row, 80, row), "JPEG") for row in range(10)]
    encoded[3] = encoded[3][: len(encoded[3]) // 2]
    url = plain_lake(str(tmp_path / "corrupt"), "jpeg", encoded, [row % 2 for row in range(10)])
    with pytest.raises(DatasetError, match=r"row 3 of .* holds corrupt image bytes"):
        next(iter(module(url, batch_size=10, image_size=16).val_dataloader()))
    batch = next(iter(module(url, batch_size=10, image_size=16, skip_corrupt=True).val_dataloader()))
    assert batch["index"].tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9] and int(batch["skipped"]) == 1
    assert batch["images"].shape == (9, 3, 16, 16)


def test_channels_default_to_colour_if_any_sampled_row_is(tmp_path: Path) -> None:
    """Row 0 grey, the rest colour: the model gets 3 channels, not row 0's 1."""
    encoded = [encode(photo(40, 50, row, "L" if row == 0 else "RGB"), "PNG") for row in range(4)]
    url = plain_lake(str(tmp_path / "mixed"), "png", encoded, [row % 2 for row in range(4)])
    dm = module(url, batch_size=4, image_size=8)
    assert dm.num_channels == 3 and next(iter(dm.val_dataloader()))["images"].shape == (4, 3, 8, 8)


def test_16_bit_grey_png_rows_read_as_8_bit(tmp_path: Path) -> None:
    deep = (np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, "PNG")
    url = plain_lake(str(tmp_path / "deep"), "png", [buffer.getvalue()] * 2, [0, 1])
    batch = next(iter(module(url, batch_size=2).val_dataloader()))
    assert batch["images"].dtype == torch.uint8
    np.testing.assert_array_equal(batch["images"][0, 0].numpy(), (deep >> 8).astype(np.uint8))
