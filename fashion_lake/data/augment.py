"""Image transforms: the seed's per-sample PIL pipeline and its whole-batch equivalent.

The default path keeps images uint8 through the loader and turns them into augmented float
batches in [0, 1] after they reach the device (``BatchTransform``; the model normalises them):
one ``grid_sample`` rotates every image by its own random angle, as ``RandomRotation`` does
per sample, at a fraction of the cost; flips, padded crops and random erasing work the same
way, a few tensor operations per batch. ``SeedTransform`` is the tutorial's exact per-sample
pipeline, applied per column through ``ColumnTransform``, for fidelity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import transforms as T

# torchvision's ImageNet statistics: what its pretrained weights were trained on
IMAGENET_STATS: tuple[list[float], list[float]] = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class SeedTransform(T.Compose):
    """The tutorial's per-sample pipeline: ``RandomRotation(20) -> ToTensor``.

    Its ``Normalize([0.5], [0.5])`` is the model's (``model.normalize``, linked from
    ``data.normalize``), which takes images in [0, 1]. ``train=False`` leaves out the rotation,
    for evaluation.
    """

    def __init__(self, train: bool = True, degrees: float = 20.0) -> None:
        steps: list[Any] = [T.ToPILImage()]
        if train and degrees:
            steps.append(T.RandomRotation(degrees))
        super().__init__([*steps, T.ToTensor()])


class ColumnTransform:
    """Apply one transform per column to a Deep Lake row, like ``{'images': tform, 'labels': None}``.

    Deep Lake 4's ``ds.pytorch(transform=...)`` passes the whole row; this restores the
    per-column form of the Deep Lake 3 tutorial. Each of ``columns`` is returned; those with
    no transform (absent or ``None``) pass through unchanged.
    """

    def __init__(self, transforms: Mapping[str, Callable[[Any], Any] | None], columns: Sequence[str]) -> None:
        self.transforms, self.columns = dict(transforms), list(columns)

    def __call__(self, row: Any) -> dict[str, Any]:
        out = {}
        for col in self.columns:
            fn = self.transforms.get(col)
            out[col] = fn(row[col]) if fn is not None else row[col]
        return out

    def __repr__(self) -> str:
        return f"ColumnTransform({self.transforms!r})"


class BatchTransform:
    """uint8 ``(B, C, H, W)`` -> float in [0, 1], with per-sample random augmentation when training.

    In this order, each image drawing its own parameters: rotation as ``RandomRotation(degrees)``
    (angle uniform in [-degrees, degrees], nearest neighbour, zero fill, about the centre);
    horizontal flip with probability 0.5 (``flip``); a crop at a random offset from the image
    zero-padded by ``crop_padding`` pixels, as ``RandomCrop(size, padding)``; then ``ToTensor``;
    then, with probability ``erasing``, a random rectangle set to ``fill``: the normalisation
    mean, which the model turns into 0, so as ``RandomErasing(p=erasing, value=0)`` after
    ``Normalize``. Normalising is the model's (``FashionMnistModule.normalize``). Every random
    number comes from ``generator`` (the batch's own, see
    ``DeepLakeDataModule.on_before_batch_transfer``) in a fixed order, so the same seed and batch
    give the same pixels; an augmentation that is off draws nothing, so turning the new ones off
    leaves the rotation's angles as they were.
    """

    def __init__(
        self,
        degrees: float = 20.0,
        flip: bool = False,
        crop_padding: int = 0,
        erasing: float = 0.0,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        if degrees < 0:
            raise ValueError(f"need degrees >= 0, got {degrees}")
        if crop_padding < 0:
            raise ValueError(
                f"crop_padding is the zero border (pixels) a random crop may shift into; it must be >= 0 "
                f"(0: no crop), got {crop_padding}"
            )
        if not 0.0 <= erasing <= 1.0:
            raise ValueError(
                f"erasing is the probability that an image gets a random rectangle erased; it must be in "
                f"[0, 1] (0: off, 0.5 is usual), got {erasing}"
            )
        self.degrees, self.fill = degrees, per_channel(fill)
        self.flip, self.crop_padding, self.erasing = flip, crop_padding, erasing

    def __call__(
        self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = images.float().div_(255.0)
        augment = train and len(x) > 0
        if augment and self.degrees:
            x = rotate(x, self.degrees, generator)
        if augment and self.flip:
            x = hflip(x, generator)
        if augment and self.crop_padding:
            x = crop(x, self.crop_padding, generator)
        if augment and self.erasing:
            x = erase(x, self.erasing, generator, value=self.fill)
        return x


def per_channel(stats: float | Sequence[float]) -> torch.Tensor:
    """A normalisation statistic as a ``(1, C, 1, 1)`` tensor (C = 1 for one number: all channels)."""
    values = [float(stats)] if isinstance(stats, int | float) else [float(v) for v in stats]
    return torch.tensor(values).view(1, -1, 1, 1)


def _rand(n: int | tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) numbers from ``generator`` (else torch's global one), moved to ``device``."""
    shape = (n,) if isinstance(n, int) else n
    return torch.rand(shape, generator=generator, device=generator.device if generator else "cpu").to(device)


def rotate(x: torch.Tensor, degrees: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image of a float batch by its own angle drawn from U(-degrees, degrees)."""
    n = x.shape[0]
    angle = (
        torch.rand(n, generator=generator, device=generator.device if generator else "cpu") * 2 - 1
    ) * degrees
    theta = angle.to(x.device) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates; this matrix turns the image counter-clockwise.
    matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flipped = _rand(x.shape[0], generator, x.device) < p
    return torch.where(flipped[:, None, None, None], x.flip(-1), x)


def crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad each image with ``padding`` zeros on every side and cut it back to size at a random offset.

    Offsets are uniform in [0, 2 * padding] per axis and image, as ``RandomCrop(size, padding)``:
    the content shifts by up to ``padding`` pixels, what leaves the frame is lost, zeros come in.
    """
    n, c, h, w = x.shape
    offsets = (_rand((2, n), generator, x.device) * (2 * padding + 1)).long()  # floor: uniform ints
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    padded = padded.gather(2, rows.expand(n, c, h, w + 2 * padding))
    return padded.gather(3, cols.expand(n, c, h, w))


def erase(
    x: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    attempts: int = 10,
    value: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Set a random rectangle of each image to ``value`` (a number, or ``(1, C, 1, 1)`` per channel)
    with probability ``p``, as ``RandomErasing``.

    torchvision's rule, for all images at once: up to ``attempts`` draws of an area (a fraction
    in ``scale`` of the image) and an aspect ratio (log-uniform in ``ratio``); the first that
    fits is placed uniformly at random; an image where none fits is left as it is.
    """
    n, _, h, w = x.shape
    u = _rand((4, n, attempts), generator, x.device)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    eh, ew = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (eh < h) & (ew < w)
    first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits (0 if none does)
    eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
    top = (u[2].gather(1, first)[:, 0] * (h - eh + 1)).long()
    left = (u[3].gather(1, first)[:, 0] * (w - ew + 1)).long()
    erased = (_rand(n, generator, x.device) < p) & fits.any(1)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (n, h)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (n, w)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & erased[:, None, None]
    if isinstance(value, torch.Tensor):
        return torch.where(mask[:, None], value.to(x.device, x.dtype), x)
    return x.masked_fill(mask[:, None], value)
