"""Figures and tables of a run, as pure functions (matplotlib's object API, headless)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def image_grid(
    images: torch.Tensor,
    labels: Sequence[int],
    class_names: Sequence[str],
    columns: int = 8,
) -> Figure:
    """``(N, C, H, W)`` images in [0, 1] in a grid, each titled with its class name."""
    images = images.detach().float().cpu().clamp(0, 1)
    rows = max(1, -(-len(images) // columns))
    figure = _figure(columns * 1.3, rows * 1.45)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        ax = figure.add_subplot(rows, columns, i + 1)
        pixels = image.permute(1, 2, 0).numpy()
        ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=1)
        ax.set_title(class_names[int(label)], fontsize=7)
        ax.axis("off")
    return figure


def confusion_figure(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts with true classes as rows and predictions as columns."""
    matrix = np.asarray(matrix, dtype=np.int64)
    size = 2.5 + 0.45 * len(class_names)
    figure = _figure(size, size)
    ax = figure.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = matrix.max(initial=0) / 2
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(
            col,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=6,
            color="white" if count > high else "black",
        )
    return figure


def per_class_table(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str]) -> str:
    """A Markdown table of accuracy (recall) per true class."""
    matrix = np.asarray(matrix, dtype=np.int64)
    lines = ["| class | samples | correct | accuracy |", "|---|---:|---:|---:|"]
    for i, name in enumerate(class_names):
        total, correct = int(matrix[i].sum()), int(matrix[i, i])
        accuracy = f"{correct / total:.4f}" if total else "n/a"
        lines.append(f"| {name} | {total} | {correct} | {accuracy} |")
    return "\n".join(lines)


def curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Loss and accuracy per epoch, train and val."""
    figure = _figure(9, 3.4)
    for position, metric in enumerate(("loss", "acc"), start=1):
        ax = figure.add_subplot(1, 2, position)
        for stage in ("train", "val"):
            points = [(h["epoch"] + 1, h[f"{stage}_{metric}"]) for h in history if f"{stage}_{metric}" in h]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=stage)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return figure
