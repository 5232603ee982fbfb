"""Train image classifiers with PyTorch Lightning on data streamed from Deep Lake."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fashion_lake.data.module import DeepLakeDataModule
    from fashion_lake.model import FashionMnistModule

__all__ = ["DeepLakeDataModule", "FashionMnistModule"]
_EXPORTS = {"DeepLakeDataModule": "fashion_lake.data.module", "FashionMnistModule": "fashion_lake.model"}


def __getattr__(name: str) -> Any:
    """Import the exports on first use: spawned ingest workers import ``fashion_lake.ingest.folder``,
    and with it this package, and must not pay seconds and hundreds of MB for torch and Lightning."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
