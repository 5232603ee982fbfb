"""Train image classifiers with PyTorch Lightning on data streamed from Deep Lake."""

from fashion_lake.data import DeepLakeDataModule
from fashion_lake.model import FashionMnistModule

__all__ = ["DeepLakeDataModule", "FashionMnistModule"]
