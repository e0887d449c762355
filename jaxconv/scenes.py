"""Segmentation data: scenes of digits with per-pixel labels, and TFDS segmentation datasets.

A digit scene (numpy only, no JAX) is a canvas, by default ``configs.IMAGE_SIZE``, holding 1
to 4 mnist5k digits at random positions and sizes, drawn one after the other. Its label map
gives every pixel a class: 0 background, ``1 + d`` for digit ``d`` (``NUM_CLASSES`` = 11).
Every draw is a function of the seed. Train scenes are built from train-split digits only
and test scenes from test-split digits only, so no test digit is seen in training.

Where a TFDS segmentation dataset is prepared (``"oxford_iiit_pet"``),
:func:`load_segmentation_dataset` reads it instead, with the same fail-fast-offline rule as
:func:`jaxconv.input_pipeline.load_dataset`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from jaxconv import configs, input_pipeline

NUM_CLASSES = 11  # background and the ten digits
INK_THRESHOLD = 0.5  # a pixel is a digit's where the digit's resized intensity exceeds this
DIGITS_PER_SCENE = (1, 4)  # inclusive range
DIGIT_SIZE = (20, 36)  # inclusive range of the side, in pixels, of a drawn 28x28 digit box
MIN_CANVAS = DIGIT_SIZE[0]


@dataclasses.dataclass(frozen=True)
class Scenes:
    """Digit scenes: ``images`` float32 (N, H, W, 1) in [0, 1], ``labels`` int32 (N, H, W).

    ``sources`` int64 (N, 4): the index, in the digit array the scenes were drawn from, of
    each digit of a scene in drawing order, -1 after its last digit.
    """

    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray


@dataclasses.dataclass(frozen=True)
class SegmentationDataset:
    """Train and test splits: images float32 (N, H, W, C) in [0, 1], labels int32 (N, H, W)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]


@functools.lru_cache(maxsize=256)
def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` float32 weights of antialiased linear resampling along one axis.

    Output pixel ``i`` samples the input at ``x = (i + 0.5) size_in / size_out - 0.5``
    (pixel centres) with the triangle filter ``max(0, 1 - |x - j| / s)``, ``s =
    max(1, size_in / size_out)``; each row's weights over the taps inside the input are
    normalised to sum to 1. The same as ``jax.image.resize(..., "linear", antialias=True)``.
    """
    scale = size_in / size_out
    support = max(1.0, scale)
    centres = (np.arange(size_out) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(size_in)) / support)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(..., H, W, C)`` images resized to ``(..., height, width, C)`` by :func:`resize_matrix`."""
    rows = resize_matrix(images.shape[-3], height)
    columns = resize_matrix(images.shape[-2], width)
    channels_first = np.moveaxis(images, -1, -3).astype(np.float32)
    return np.moveaxis(rows @ channels_first @ columns.T, -3, -1)


def make_scenes(
    digits: np.ndarray,
    digit_labels: np.ndarray,
    num_scenes: int,
    *,
    height: int = configs.IMAGE_SIZE[0],
    width: int = configs.IMAGE_SIZE[1],
    seed: int | Sequence[int] = 0,
) -> Scenes:
    """``num_scenes`` scenes drawn from ``digits`` (N, 28, 28, 1) with labels ``digit_labels``.

    Per scene, from ``np.random.default_rng(seed)``: the number of digits (uniform in
    ``DIGITS_PER_SCENE``), then per digit its index (uniform over ``digits``), its box side
    ``s`` (uniform in ``DIGIT_SIZE``, at most the canvas) and its top-left corner (uniform,
    the box inside the canvas). The digit is resized to ``s x s`` (:func:`resize`) and drawn
    as white ink of opacity equal to its intensity ``a``: ``pixel = a + (1 - a) pixel``. Its
    label ``1 + digit_label`` replaces the label map where ``a > INK_THRESHOLD``, so a later
    digit lies on top of an earlier one.
    """
    if min(height, width) < MIN_CANVAS:
        raise ValueError(
            f"the canvas must be at least {MIN_CANVAS}x{MIN_CANVAS}, got {height}x{width}"
        )
    if digits.shape[1:] != (28, 28, 1) or len(digits) != len(digit_labels) or not len(digits):
        raise ValueError(
            f"digits must be a non-empty (N, 28, 28, 1) array with N labels, got {digits.shape} "
            f"and {len(digit_labels)} labels"
        )
    rng = np.random.default_rng(seed)
    images = np.zeros((num_scenes, height, width), np.float32)
    labels = np.zeros((num_scenes, height, width), np.int32)
    sources = np.full((num_scenes, DIGITS_PER_SCENE[1]), -1, np.int64)
    for n in range(num_scenes):
        for k in range(rng.integers(DIGITS_PER_SCENE[0], DIGITS_PER_SCENE[1] + 1)):
            index = rng.integers(len(digits))
            side = min(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1), height, width)
            top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
            ink = resize(digits[index], side, side)[..., 0]
            box = (slice(top, top + side), slice(left, left + side))
            images[n][box] = ink + (1.0 - ink) * images[n][box]
            labels[n][box] = np.where(ink > INK_THRESHOLD, 1 + digit_labels[index], labels[n][box])
            sources[n, k] = index
    return Scenes(np.clip(images, 0.0, 1.0)[..., None], labels, sources)


def digit_scenes(
    digits: input_pipeline.Dataset,
    num_train: int,
    num_test: int,
    *,
    height: int = configs.IMAGE_SIZE[0],
    width: int = configs.IMAGE_SIZE[1],
    seed: int = 0,
) -> tuple[Scenes, Scenes]:
    """Train scenes of ``digits``' train split (seed ``(seed, 0)``), test scenes of its test
    split (seed ``(seed, 1)``): see :func:`make_scenes`."""
    size = {"height": height, "width": width}
    train = make_scenes(digits.train_images, digits.train_labels, num_train, **size, seed=(seed, 0))
    test = make_scenes(digits.test_images, digits.test_labels, num_test, **size, seed=(seed, 1))
    return train, test


def random_crops(
    images: np.ndarray,
    labels: np.ndarray,
    size: tuple[int, int],
    rngs: Sequence[np.random.Generator],
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` (height, width) window of each image and its label map, image ``i``'s
    top-left corner drawn from ``rngs[i]``, uniform over the windows inside the image."""
    height, width = size
    if height > images.shape[1] or width > images.shape[2]:
        raise ValueError(f"crops of {height}x{width} do not fit images of {images.shape[1:3]}")
    corners = np.array(
        [rng.integers((images.shape[1] - height + 1, images.shape[2] - width + 1)) for rng in rngs]
    ).reshape(-1, 2)
    rows = corners[:, :1] + np.arange(height)
    columns = corners[:, 1:] + np.arange(width)
    index = (np.arange(len(images))[:, None, None], rows[:, :, None], columns[:, None, :])
    return images[index], labels[index]


DIGIT_CLASS_NAMES = ("background", *map(str, range(10)))


@dataclasses.dataclass(frozen=True)
class _MaskFormat:
    """Where a TFDS dataset keeps its label map: ``feature``, whose value ``values[i]`` is
    class ``i`` of ``class_names`` (class 0 is the background, as in digit scenes)."""

    feature: str
    values: tuple[int, ...]
    class_names: tuple[str, ...]


TFDS_SEGMENTATION = {
    # the Oxford-IIIT Pet trimap: 1 pet, 2 background, 3 the pet's outline
    "oxford_iiit_pet": _MaskFormat(
        "segmentation_mask", (2, 1, 3), ("background", "pet", "outline")
    ),
}


def load_segmentation_dataset(
    name: str = input_pipeline.EMBEDDED_DATASET,
    *,
    data_dir: str | None = None,
    image_size: tuple[int, int] = configs.IMAGE_SIZE,
    num_scenes: tuple[int, int] = configs.NUM_SCENES,
    seed: int = 0,
) -> SegmentationDataset:
    """Digit scenes (``"mnist5k"``) or a TFDS segmentation dataset, at ``image_size``.

    ``"mnist5k"``: :func:`digit_scenes` with ``num_scenes`` (train, test) scenes and ``seed``.
    A TFDS dataset of ``TFDS_SEGMENTATION`` is read like
    :func:`jaxconv.input_pipeline.load_dataset` reads an image dataset (prepared if it can
    be, else ``DatasetUnavailableError`` within seconds); its images are resized to
    ``image_size`` (:func:`resize`), its label maps by nearest neighbour.

    Raises:
        ValueError: an unknown ``name``, or label values outside the dataset's classes.
        DatasetUnavailableError: see :func:`jaxconv.input_pipeline.load_dataset`.
    """
    height, width = image_size
    if name == input_pipeline.EMBEDDED_DATASET:
        digits = input_pipeline.load_dataset()
        train, test = digit_scenes(digits, *num_scenes, height=height, width=width, seed=seed)
        return SegmentationDataset(
            name,
            train.images,
            train.labels,
            test.images,
            test.labels,
            NUM_CLASSES,
            DIGIT_CLASS_NAMES,
        )
    if name not in TFDS_SEGMENTATION:
        raise ValueError(
            f"Unknown segmentation dataset {name!r}: use {input_pipeline.EMBEDDED_DATASET!r} "
            f"(digit scenes, offline) or one of {', '.join(TFDS_SEGMENTATION)} (TFDS)."
        )
    return _load_tfds(name, data_dir, height, width)


def _load_tfds(name: str, data_dir: str | None, height: int, width: int) -> SegmentationDataset:
    import tensorflow_datasets as tfds  # only for a TFDS dataset, as in input_pipeline

    mask = TFDS_SEGMENTATION[name]
    builder = input_pipeline.prepare_once(name, tfds.builder(name, data_dir=data_dir), data_dir)

    def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for example in builder.as_data_source(split=split):
            image = np.asarray(example["image"])
            if image.dtype != np.uint8:
                raise ValueError(f"TFDS dataset {name!r} has {image.dtype} images, not uint8.")
            images.append(resize(image.astype(np.float32) / 255.0, height, width))
            labels.append(_nearest(np.asarray(example[mask.feature])[..., 0], height, width))
        values = np.stack(labels)
        unknown = np.setdiff1d(values, mask.values)
        if unknown.size:
            raise ValueError(
                f"TFDS dataset {name!r}: {mask.feature} holds values {unknown.tolist()}, which "
                f"are no class; the classes are the values {list(mask.values)} "
                f"({', '.join(mask.class_names)})"
            )
        to_class = np.zeros(max(mask.values) + 1, np.int32)
        to_class[list(mask.values)] = np.arange(len(mask.values))
        return np.stack(images), to_class[values]

    train_images, train_labels = read_split("train")
    test_images, test_labels = read_split("test")
    return SegmentationDataset(
        name,
        train_images,
        train_labels,
        test_images,
        test_labels,
        len(mask.class_names),
        mask.class_names,
    )


def _nearest(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` resized to ``(height, width)`` by the input pixel under each output centre."""
    rows = (np.arange(height) + 0.5) * label_map.shape[0] / height
    columns = (np.arange(width) + 0.5) * label_map.shape[1] / width
    return label_map[rows.astype(int)[:, None], columns.astype(int)]
