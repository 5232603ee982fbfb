"""The whole-batch augmentations: what each does to pixels, and that the batch's seed fixes them."""

from __future__ import annotations

import pytest
import torch

from fashion_lake import DeepLakeDataModule
from fashion_lake.data.augment import BatchTransform, crop, erase, hflip, rotate


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def shapes() -> torch.Tensor:
    """64 uint8 images, each with a bar and a dot at its own place: no image is symmetric."""
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    for i in range(64):
        images[i, 0, 4 + i % 20, 2:12] = 255
        images[i, 0, 20, 14 + i % 12] = 128
    return images


def test_flip_mirrors_about_half_the_images(shapes: torch.Tensor) -> None:
    x = shapes.float()
    assert torch.equal(hflip(x, _gen(0), p=1.0), x.flip(-1))
    assert torch.equal(hflip(x, _gen(0), p=0.0), x)
    out = hflip(x, _gen(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)), "each image mirrored or kept"
    assert 16 < sum(flipped) < 48


def test_crop_shifts_content_within_the_padding() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0  # one lit pixel in the middle: its new place is the shift
    out = crop(x, 3, _gen(0))
    shifts = []
    for image in out:
        ((row, col),) = (image[0] == 1.0).nonzero().tolist()
        assert image.sum() == 1.0 and abs(row - 14) <= 3 and abs(col - 14) <= 3
        shifts.append((row - 14, col - 14))
    assert len(set(shifts)) > 20, "every image draws its own offset"
    assert {dx for _, dx in shifts} == set(range(-3, 4))
    # what leaves the frame is lost and zeros come in: a white image keeps (28-|dy|) x (28-|dx|) pixels
    white = crop(torch.ones(64, 1, 28, 28), 3, _gen(0))
    kept = [(28 - abs(dy)) * (28 - abs(dx)) for dy, dx in shifts]
    assert white.sum((1, 2, 3)).tolist() == kept and set(white.unique().tolist()) == {0.0, 1.0}


def test_erasing_zeroes_one_rectangle() -> None:
    x = torch.ones(64, 1, 28, 28)
    out = erase(x, 1.0, _gen(0))
    for image in out:
        zero = image[0] == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert len(rows) and len(cols), "p=1: every image gets a rectangle"
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w  # one solid block
        assert zero.sum() == h * w and (image[0][~zero] == 1).all()
        assert 0.015 <= h * w / 784 <= 0.36 and 0.2 <= h / w <= 4.5  # RandomErasing's scale and ratio
    assert torch.equal(erase(x, 0.0, _gen(0)), x)
    some = erase(x, 0.5, _gen(0))
    erased = (some == 0).flatten(1).any(1)
    assert 16 < int(erased.sum()) < 48


ALL_ON = {"flip": True, "crop_padding": 2, "erasing": 0.5}


def test_same_seed_same_pixels_other_seed_other_pixels(shapes: torch.Tensor) -> None:
    transform = BatchTransform(10.0, flip=True, crop_padding=2, erasing=0.5)
    a = transform(shapes, train=True, generator=_gen(5))
    assert torch.equal(a, transform(shapes, train=True, generator=_gen(5)))
    b = transform(shapes, train=True, generator=_gen(6))
    assert (a != b).flatten(1).any(1).sum() > 32, "most images differ under another seed"
    # evaluation: scaled to [0, 1] only
    plain = shapes.float() / 255
    torch.testing.assert_close(transform(shapes, train=False), plain)


def test_defaults_leave_the_pixels_as_before(shapes: torch.Tensor) -> None:
    """Off, the new augmentations draw no random numbers: the rotation's angles stay the same."""
    new = BatchTransform(20.0)(shapes, train=True, generator=_gen(3))
    before = rotate(shapes.float() / 255, 20.0, _gen(3))  # the old pipeline, by hand
    assert torch.equal(new, before)
    off = BatchTransform(20.0, flip=False, crop_padding=0, erasing=0.0)
    assert torch.equal(off(shapes, train=True, generator=_gen(3)), new)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_padding": -1}, r"crop_padding .* must be >= 0 \(0: no crop\), got -1"),
        ({"erasing": 1.5}, r"erasing .* must be in \[0, 1\] .*got 1.5"),
        ({"erasing": -0.1}, r"erasing .* must be in \[0, 1\]"),
    ],
)
def test_bad_augmentation_values_are_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchTransform(**kwargs)


def test_data_module_augments_from_the_batch_seed(tiny_lakes: dict[str, str]) -> None:
    """Two data modules (as an uninterrupted and a resumed process) give a seeded batch the same pixels."""
    urls = {"train_url": tiny_lakes["train"], "val_url": tiny_lakes["test"], "batch_size": 16}
    first, second = DeepLakeDataModule(**urls, **ALL_ON), DeepLakeDataModule(**urls, **ALL_ON)
    batch = next(iter(first.train_dataloader()))
    seeded = {**batch, "aug_seed": 12345}
    a = first.prepare_batch(seeded, train=True)["images"]
    assert torch.equal(a, second.prepare_batch(seeded, train=True)["images"])
    unaugmented = DeepLakeDataModule(**urls).prepare_batch(seeded, train=True)["images"]  # rotation only
    assert (a != unaugmented).flatten(1).any(1).sum() > 8, "flip, crop and erasing change most images"
    torch.testing.assert_close(
        first.prepare_batch(batch, train=False)["images"], batch["images"].float() / 255
    )
