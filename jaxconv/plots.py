"""Figures of a run, written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxconv.scenes import DIGIT_CLASS_NAMES  # noqa: E402

DPI = 100


def _save(fig, path: str | Path, tight: bool = True) -> Path:
    """Writes ``fig`` to ``path`` at ``DPI`` (laid out tight unless its layout is fixed)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


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
    return _save(fig, path)


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
    return _save(fig, path)


# The embedding-space figures below have fixed layouts: their pixel size is their figure size
# in inches (stated in each docstring) times DPI.
_CELL = 1.0  # inches per image in the interpolation grid
_LABEL_WIDTH = 1.4  # inches left of the images, for the row labels
_HEADER = 1.1  # inches above the images: a three-line title and the t of each column
_PAIR_GAP = 0.3  # inches between two pairs
_MIN_WIDTH = 10.0  # inches: room for the title


def interpolation_grid(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    pair_labels: Sequence[str],
    t: Sequence[float],
    path: str | Path,
    title: str = "",
) -> Path:
    """Per pair, its ``(steps, H, W, C)`` embedding-space row above its pixel-space row.

    ``pair_labels`` names each pair (e.g. ``"3 → 8"``), ``t`` each column. Size in inches:
    ``max(10, 1.4 + steps + 0.1) x (1.1 + 2 pairs + 0.3 (pairs - 1) + 0.1)``, the images
    centred (10 inches leave room for the title).
    """
    steps = len(t)
    width = max(_MIN_WIDTH, _LABEL_WIDTH + _CELL * steps + 0.1)
    height = _HEADER + len(pairs) * (2 * _CELL + _PAIR_GAP) - _PAIR_GAP + 0.1
    left = (width - _CELL * steps - _LABEL_WIDTH - 0.1) / 2 + _LABEL_WIDTH
    fig = plt.figure(figsize=(width, height))
    for p, ((embedding_row, pixel_row), label) in enumerate(zip(pairs, pair_labels)):
        top = _HEADER + p * (2 * _CELL + _PAIR_GAP)
        for r, (images, name) in enumerate(
            [(embedding_row, f"{label}\nembedding"), (pixel_row, "pixels")]
        ):
            for c, image in enumerate(images):
                ax = fig.add_axes(
                    [
                        (left + c * _CELL) / width,
                        1 - (top + (r + 1) * _CELL) / height,
                        0.95 * _CELL / width,
                        0.95 * _CELL / height,
                    ]
                )
                _show(ax, image)
                if c == 0:
                    ax.set_ylabel(name, rotation=0, ha="right", va="center", labelpad=8)
                if p == 0 and r == 0:
                    ax.set_title(f"t={t[c]:.2f}", fontsize=9)
    if title:
        fig.suptitle(title, y=1 - 0.1 / height, va="top", fontsize=10)
    return _save(fig, path, tight=False)


def label_scatter(
    points: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    title: str = "",
    axis_labels: tuple[str, str] = ("PC 1", "PC 2"),
) -> Path:
    """``(N, 2)`` points coloured by their integer label, with a legend. Size: 8 x 6.5 inches."""
    classes = np.unique(labels)
    cmap = plt.get_cmap(
        "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"
    )
    colours = cmap(
        np.arange(len(classes)) if len(classes) <= 20 else np.linspace(0, 1, len(classes))
    )
    fig, ax = plt.subplots(figsize=(8, 6.5))
    for c, colour in zip(classes, colours):
        chosen = labels == c
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=10,
            alpha=0.75,
            color=colour,
            label=str(c),
            edgecolors="none",
        )
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.grid(True, alpha=0.3)
    ax.legend(
        title="label",
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        markerscale=2.5,
        ncol=int(np.ceil(len(classes) / 20)),
        frameon=False,
    )
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def generated(
    rows: Sequence[np.ndarray], row_labels: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Generated images, one row per Gaussian (:func:`image_rows`, at 100 dpi)."""
    return image_rows(rows, row_labels, path, title)


def sweep(
    sizes: Sequence[int],
    test_mse: Sequence[float],
    train_mse: Sequence[float],
    path: str | Path,
    title: str = "",
) -> Path:
    """Reconstruction MSE against embedding size (log-log). Size: 6.4 x 4.4 inches."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(sizes, train_mse, "o-", label="train MSE")
    ax.plot(sizes, test_mse, "s-", label="test MSE")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sizes), [str(s) for s in sizes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yscale("log")
    ax.set_xlabel("embedding size")
    ax.set_ylabel("reconstruction MSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def class_colours(num_classes: int) -> np.ndarray:
    """``(num_classes, 4)`` RGBA: class 0 black, then tab10's colours, then tab20b's."""
    palette = [(0.0, 0.0, 0.0, 1.0), *plt.get_cmap("tab10").colors, *plt.get_cmap("tab20b").colors]
    if num_classes > len(palette):
        raise ValueError(f"at most {len(palette)} classes have a colour, got {num_classes}")
    return matplotlib.colors.to_rgba_array(palette[:num_classes])


def segmentation(
    images: np.ndarray,
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    path: str | Path,
    title: str = "",
    class_names: Sequence[str] = DIGIT_CLASS_NAMES,
) -> Path:
    """One column per scene: the ``(n, H, W, C)`` input above its ``(n, H, W)`` true and
    predicted label maps, each class in its fixed colour (:func:`class_colours`), with a
    legend of ``class_names``."""
    colours = matplotlib.colors.ListedColormap(class_colours(len(class_names)))
    rows = [("input", images), ("true labels", true_labels), ("predicted", predicted_labels)]
    columns = len(images)
    fig, axes = plt.subplots(
        3, columns, figsize=(1.5 * columns + 2.6, 4.6 + 0.3 * bool(title)), squeeze=False
    )
    for axes_row, (name, row) in zip(axes, rows):
        for ax, image in zip(axes_row, row):
            if image.ndim == 3:
                _show(ax, image)
            else:
                ax.imshow(
                    image,
                    cmap=colours,
                    vmin=-0.5,
                    vmax=len(class_names) - 0.5,
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
        axes_row[0].set_ylabel(name, rotation=0, ha="right", va="center")
    handles = [
        matplotlib.patches.Patch(color=colours(c), label=name) for c, name in enumerate(class_names)
    ]
    fig.legend(handles=handles, loc="center right", title="class", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    return _save(fig, path, tight=False)


def segmentation_sweep(
    sizes: Sequence[str], miou: dict[str, Sequence[float]], path: str | Path
) -> Path:
    """Test mIoU (``miou[upsampling]``, one value per test scene size) against the size."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for upsampling, values in miou.items():
        ax.plot(sizes, values, marker="o", label=f"{upsampling} up-sampling")
    ax.set_xlabel("test scene size (trained at 64x64)")
    ax.set_ylabel("test mIoU (11 classes)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
