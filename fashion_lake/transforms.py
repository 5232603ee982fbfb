"""Image transforms: the seed's per-sample PIL pipeline and its whole-batch equivalent.

The default path keeps images uint8 through the loader and turns them into normalised float
batches after they reach the device (``BatchTransform``): one ``grid_sample`` rotates every
image by its own random angle, as ``RandomRotation`` does per sample, at a fraction of the
cost. ``SeedTransform`` is the tutorial's exact per-sample pipeline, applied per column
through ``ColumnTransform``, for fidelity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import transforms as T


class SeedTransform(T.Compose):
    """The tutorial's per-sample pipeline: ``RandomRotation(20) -> ToTensor -> Normalize([0.5], [0.5])``.

    ``train=False`` leaves out the rotation, for evaluation.
    """

    def __init__(self, train: bool = True, degrees: float = 20.0) -> None:
        steps: list[Any] = [T.ToPILImage()]
        if train and degrees:
            steps.append(T.RandomRotation(degrees))
        super().__init__([*steps, T.ToTensor(), T.Normalize([0.5], [0.5])])


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
    """uint8 ``(B, C, H, W)`` -> normalised float, with per-sample random rotation when training.

    Matches ``RandomRotation(degrees)`` (angle uniform in [-degrees, degrees], nearest
    neighbour, zero fill, about the centre) followed by ``ToTensor`` and ``Normalize``.
    """

    def __init__(self, degrees: float = 20.0, mean: float = 0.5, std: float = 0.5) -> None:
        if degrees < 0 or std <= 0:
            raise ValueError(f"need degrees >= 0 and std > 0, got {degrees} and {std}")
        self.degrees, self.mean, self.std = degrees, mean, std

    def __call__(
        self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = images.float().div_(255.0)
        if train and self.degrees and len(x):
            x = rotate(x, self.degrees, generator)
        return x.sub_(self.mean).div_(self.std)


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
