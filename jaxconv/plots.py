"""Figures of a run, written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax, image: np.ndarray) -> None:
    image = np.clip(image, 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def image_rows(
    rows: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Draws each ``(n, H, W, C)`` array of ``rows`` as a row of images; returns ``path``."""
    columns = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(1.2 * columns + 1.0, 1.3 * len(rows) + 0.4), squeeze=False
    )
    for axes_row, images, label in zip(axes, rows, labels):
        for ax in axes_row:
            ax.axis("off")
        for ax, image in zip(axes_row, images):
            ax.axis("on")
            _show(ax, image)
        axes_row[0].set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def reconstructions(
    originals: np.ndarray, reconstructed: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """Test originals above their reconstructions."""
    return image_rows([originals, reconstructed], ["original", "reconstructed"], path, title)


def loss_curves(metrics: Sequence[dict], path: str | Path) -> Path:
    """Train and test MSE per epoch (log scale)."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m["train_mse"] for m in metrics], "o-", label="train MSE")
    ax.plot(epochs, [m["test_mse"] for m in metrics], "s-", label="test MSE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reconstruction MSE")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
