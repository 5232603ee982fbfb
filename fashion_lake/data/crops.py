"""Images of any size to one size: the standard classifier recipe, per sample on the host.

Training takes a random-resized crop (``RandomResizedCrop``: a region of 8-100% of the
image's area, aspect ratio in [3/4, 4/3] times the output's, resized to the output size);
evaluation resizes the shorter side to ``size / 0.875`` and takes the centre, as torchvision's
ImageNet recipe (resize 256, centre crop 224). Each is one antialiased bilinear resize of the
region (``Crops.resize``).

A training crop is drawn from ``(seed, epoch, row)`` alone, so a row gets the same pixels
whichever worker, batch, world size or resume point serves it, and a new crop every epoch.

Why per sample and on the host: photos differ in size, so no batch exists before the crop,
and the crop makes the batch small (a 224x224 crop of a 12-megapixel photo is 1/240 of it).
jpeg rows are decoded at the smallest of libjpeg's 1/8..8/8 scales that still covers the
region at twice the output size (``simplejpeg``'s DCT scaling), which for large photos costs a
fraction of a full decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fashion_lake.data.decode import DEVICE_CODECS, HAS_SIMPLEJPEG, host_decoder, to_channels

# jpeg rows are decoded with at least GAP x the output's pixels over the crop, then resized: as
# Pillow's reducing_gap, it keeps libjpeg's coarse DCT downscaling out of the result while
# keeping most of its speed on large photos (docs/data-path.md).
GAP = 2.0
EVAL_CROP = 0.875  # the centre crop's share of the resized shorter side (torchvision: 224 / 256)
Box = tuple[float, float, float, float]  # top, left, height, width, in source pixels


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    pair = tuple(int(v) for v in size)
    if len(pair) != 2:
        raise ValueError(f"an image size is N or [H, W], got {list(size)}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class Crops:
    """Crop and resize rows to ``size`` (H, W): random-resized crops (``train``) or centre crops."""

    size: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    seed: int = 0

    @classmethod
    def of(
        cls, size: int | tuple[int, int] | list[int], scale: tuple[float, float] = (0.08, 1.0), seed: int = 0
    ) -> Crops:
        height, width = _pair(size)
        low, high = scale
        if height < 1 or width < 1 or not 0 < low <= high <= 1:
            raise ValueError(
                f"need an image size >= 1 and 0 < crop scale low <= high <= 1, got {height}x{width} "
                f"and {list(scale)}"
            )
        return cls((height, width), (float(low), float(high)), seed=seed)

    def box(self, height: int, width: int, train: bool, epoch: int = 0, row: int = 0) -> Box:
        """The source region that becomes the output: random for ``train`` (seeded by epoch, row)."""
        out_h, out_w = self.size
        if not train:
            scale = max(out_h / height, out_w / width) / EVAL_CROP
            crop_h, crop_w = min(height, out_h / scale), min(width, out_w / scale)
            return (height - crop_h) / 2, (width - crop_w) / 2, crop_h, crop_w
        rng = np.random.default_rng([self.seed, epoch, row])
        aspect_out = out_w / out_h
        log_low, log_high = math.log(self.ratio[0] * aspect_out), math.log(self.ratio[1] * aspect_out)
        area = height * width
        for _ in range(10):  # torchvision's RandomResizedCrop.get_params, with a seeded generator
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_low, log_high))
            crop_w, crop_h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(rng.integers(0, height - crop_h + 1))
                left = int(rng.integers(0, width - crop_w + 1))
                return top, left, crop_h, crop_w
        ratio = width / height  # no draw fitted: the centre, clipped to the allowed aspect ratios
        low, high = math.exp(log_low), math.exp(log_high)
        if ratio < low:
            crop_h, crop_w = round(width / low), width
        else:
            crop_h, crop_w = height, round(height * min(ratio, high))
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def resize(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The ``box`` of an ``(H, W, C)`` uint8 image, resized to ``size``, as ``(size, C)``.

        The box is rounded to whole pixels (as torchvision's crops are) and resized by torch's
        antialiased bilinear ``interpolate`` on uint8, which matches Pillow's ``resize`` to
        within a level on average and is faster (docs/data-path.md).
        """
        height, width = image.shape[:2]
        top, left = min(round(box[0]), height - 1), min(round(box[1]), width - 1)
        crop_h, crop_w = max(1, min(round(box[2]), height - top)), max(1, min(round(box[3]), width - left))
        region = image[top : top + crop_h, left : left + crop_w]
        if not region.flags.writeable:  # torch wants writable memory (Deep Lake's arrays are not)
            region = region.copy()
        x = torch.from_numpy(region).permute(2, 0, 1)[None]  # (1, C, h, w), channels-last in memory
        out = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return out[0].permute(1, 2, 0).numpy()

    def pixels(self, image: np.ndarray, channels: int, train: bool, epoch: int, row: int) -> np.ndarray:
        """A decoded (or raw) ``(H, W, C)`` row, in ``channels`` channels, cropped to ``size``."""
        image = to_channels(image, channels)
        return self.resize(image, self.box(image.shape[0], image.shape[1], train, epoch, row))

    def decode(
        self, data: bytes, codec: str, channels: int, train: bool, epoch: int, row: int
    ) -> np.ndarray | None:
        """Encoded bytes straight to the cropped output; None where they do not decode (only
        decoding errors: a conversion or resize that fails raises as itself)."""
        if codec in DEVICE_CODECS and HAS_SIMPLEJPEG:
            scaled = self._decode_jpeg_scaled(data, channels, train, epoch, row)
            if scaled is not None:
                image, box = scaled
                return self.resize(to_channels(image, channels), box)
        try:
            image = host_decoder(codec, channels)(data)
        except (RuntimeError, ValueError, OSError):  # bytes that are not an image
            return None
        return self.pixels(image, channels, train, epoch, row)

    def _decode_jpeg_scaled(
        self, data: bytes, channels: int, train: bool, epoch: int, row: int
    ) -> tuple[np.ndarray, Box] | None:
        """A jpeg decoded at a reduced DCT scale, and the crop's box at that scale; None where
        simplejpeg cannot decode it (png bytes in a jpeg column, a mode it cannot convert, corrupt
        bytes): the full decode then decides."""
        import simplejpeg

        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            top, left, crop_h, crop_w = self.box(height, width, train, epoch, row)
            out_h, out_w = self.size
            # the smallest DCT scale at which the region still has GAP x the output's pixels
            need_h, need_w = math.ceil(GAP * out_h * height / crop_h), math.ceil(GAP * out_w * width / crop_w)
            image = simplejpeg.decode_jpeg(
                data,
                colorspace="GRAY" if channels == 1 else "RGB",
                min_height=min(need_h, height),
                min_width=min(need_w, width),
            )
        except ValueError:
            return None
        fy, fx = image.shape[0] / height, image.shape[1] / width
        return image if image.ndim == 3 else image[..., None], (top * fy, left * fx, crop_h * fy, crop_w * fx)
