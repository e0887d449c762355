"""Pixel-wise prediction: a fully convolutional U-Net, its loss and its metrics.

The network (``SegmentationConfig.widths`` = ``(w0, ..., wL)``)::

    level 0 (full size):  Conv(w0, 3, p1)-GN-ReLU                       -> skip 0
    level i = 1..L:       Conv(wi, 3, s2, p1)-GN-ReLU, (Conv(wi, 3, p1)-GN-ReLU) x depth
                          -> skip i (the last level is the bottom)
    up to level i < L:    Up(wi) to the size of skip i -GN-ReLU, concat skip i,
                          Conv(wi, 3, p1)-GN-ReLU
    head:                 Conv(num_classes, 1)                          -> per-pixel logits
    bottom head:          Conv(num_classes, 1) of the bottom level      -> trained only

``Up`` is ``ConvTranspose(wi, 3, s2, p1, output_padding)`` (``upsampling="transposed"``),
``output_padding`` being what the down conv's floor division dropped from the skip's size
(:func:`jaxconv.shapes.output_padding_for`, computed from the static shapes at trace time),
or, for ``upsampling="resize"``, a bilinear ``jax.image.resize`` to the skip's size then
``Conv(wi, 3, p1)``. Either way every level gets back exactly its skip's size, so the model
takes any height and width. GN is GroupNorm (per image, so the same at any size and batch).

Training (:func:`train_loss`, :func:`optimizer`): softmax cross-entropy with foreground
pixels weighted ``FOREGROUND_WEIGHT``, plus :func:`bottom_loss`, which asks the bottom level
which digit each of its cells shows; AdamW with warmup and cosine decay.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxconv import configs, scenes, shapes, train
from jaxconv.configs import MIN_SIZE, UPSAMPLINGS, WARMUP
from jaxconv.nn import Conv, ConvTranspose

KERNEL, STRIDE, PADDING = 3, 2, 1  # every down and up-sampling layer

# The training recipe (docs/segmentation.md): see train_loss and optimizer; its
# schedule's peak rate and WARMUP are in jaxconv.configs.
FOREGROUND_WEIGHT = 5.0  # loss weight of a non-background pixel (background: 1)
BOTTOM_LOSS_WEIGHT = 1.0
WEIGHT_DECAY = 1e-4


def crop_for(image_size: Sequence[int]) -> tuple[int, int]:
    """The training crop of the recipe: three quarters of each side (48 of 64), at least
    ``MIN_SIZE``."""
    return tuple(max(MIN_SIZE, min(n, round(0.75 * n))) for n in image_size)


@dataclasses.dataclass(frozen=True)
class SegmentationConfig:
    """The network's shape and how it is trained: what a run and its checkpoint are.

    ``widths``: features per level, level ``i`` at ``1 / 2**i`` of the image size.
    ``depth``: extra stride-1 convs after each down-sampling. ``norm_groups``: GroupNorm
    groups (at most the layer's width); 0 for no normalisation.

    Training (:class:`SegmentationTask`): ``image_size`` is the train and test scenes'
    size, ``crop`` the random window of it each training step sees (``None``: the whole
    scene), ``num_scenes`` the train and test scenes generated, ``epochs`` the length of
    the learning-rate schedule.
    """

    task_name: ClassVar[str] = "segmentation"
    command: ClassVar[str] = "segment"  # the jaxconv command that trains it

    widths: tuple[int, ...] = configs.WIDTHS
    depth: int = 1
    upsampling: str = configs.UPSAMPLING
    num_classes: int = scenes.NUM_CLASSES
    image_channels: int = 1
    norm_groups: int = 8
    image_size: tuple[int, int] = configs.IMAGE_SIZE
    crop: tuple[int, int] | None = crop_for(configs.IMAGE_SIZE)
    num_scenes: tuple[int, int] = configs.NUM_SCENES
    epochs: int = configs.SEGMENTATION.epochs

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must be two or more positive ints, got {self.widths}")
        if self.depth < 0 or self.norm_groups < 0:
            raise ValueError(
                f"depth and norm_groups must be >= 0, got {self.depth}, {self.norm_groups}"
            )
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")
        if self.num_classes < 2 or self.image_channels < 1:
            raise ValueError(
                f"num_classes must be >= 2 and image_channels >= 1, got {self.num_classes}, "
                f"{self.image_channels}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < MIN_SIZE:
            raise ValueError(
                f"image_size must be (height, width), each >= {MIN_SIZE}, got {self.image_size}"
            )
        if self.crop is not None and not (
            len(self.crop) == 2
            and MIN_SIZE <= min(self.crop)
            and all(c <= n for c, n in zip(self.crop, self.image_size))
        ):
            raise ValueError(
                f"crop must be (height, width) between {MIN_SIZE} and image_size "
                f"{self.image_size}, got {self.crop}"
            )
        if len(self.num_scenes) != 2 or min(self.num_scenes) < 1 or self.epochs < 1:
            raise ValueError(
                f"num_scenes must be two positive counts and epochs >= 1, got "
                f"{self.num_scenes}, {self.epochs}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SegmentationConfig:
        tuples = {
            key: None if d.get(key) is None else tuple(d[key])
            for key in ("widths", "image_size", "crop", "num_scenes")
        }
        return cls(**{**d, **tuples})

    def task(self) -> SegmentationTask:
        return SegmentationTask(self)


def up_output_padding(skip_size: Sequence[int]) -> tuple[int, ...]:
    """The ``output_padding`` with which the up-sampling conv gives back ``skip_size``."""
    return shapes.output_padding_for(tuple(skip_size), KERNEL, STRIDE, PADDING)


class ConvBlock(nn.Module):
    """Conv (``features``, 3x3, ``stride``), GroupNorm, ReLU."""

    features: int
    stride: int = 1
    norm_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv(self.features, KERNEL, stride=self.stride, padding=PADDING)(x)
        return nn.relu(_norm(x, self.norm_groups))


def _norm(x: jax.Array, groups: int) -> jax.Array:
    if not groups:
        return x
    return nn.GroupNorm(num_groups=min(groups, x.shape[-1]))(x)


class Up(nn.Module):
    """``x`` up-sampled to the spatial ``size`` with ``features``, GroupNorm, ReLU."""

    features: int
    upsampling: str = "transposed"
    norm_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
        if self.upsampling == "transposed":
            x = ConvTranspose(
                self.features,
                KERNEL,
                stride=STRIDE,
                padding=PADDING,
                output_padding=up_output_padding(size),
            )(x)
        else:
            x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear")
            x = Conv(self.features, KERNEL, padding=PADDING)(x)
        return nn.relu(_norm(x, self.norm_groups))


class UNet(nn.Module):
    """``(batch, H, W, image_channels)`` images to ``(batch, H, W, num_classes)`` logits.

    ``with_bottom=True`` also returns the bottom level's logits (a 1x1 conv of its features,
    ``(batch, h, w, num_classes)``), which :func:`bottom_loss` trains.
    """

    config: SegmentationConfig = SegmentationConfig()

    @nn.compact
    def __call__(
        self, images: jax.Array, with_bottom: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        config = self.config
        groups = config.norm_groups
        x = ConvBlock(config.widths[0], norm_groups=groups)(images)
        skips = [x]
        for width in config.widths[1:]:
            x = ConvBlock(width, stride=STRIDE, norm_groups=groups)(x)
            for _ in range(config.depth):
                x = ConvBlock(width, norm_groups=groups)(x)
            skips.append(x)
        bottom_logits = Conv(config.num_classes, 1, name="bottom_head")(x)
        for width, skip in zip(config.widths[-2::-1], skips[-2::-1]):
            x = Up(width, config.upsampling, groups)(x, skip.shape[1:3])
            x = ConvBlock(width, norm_groups=groups)(jnp.concatenate([x, skip], axis=-1))
        logits = Conv(config.num_classes, 1)(x)
        return (logits, bottom_logits) if with_bottom else logits


def init_params(config: SegmentationConfig, seed: int) -> dict:
    """Parameters (PyTorch's conv init, drawn flat) from ``seed``, jit-compiled."""
    return _init(config, jax.random.key(seed))


@functools.partial(jax.jit, static_argnums=0)
def _init(config: SegmentationConfig, key: jax.Array) -> dict:
    # one compilation per config: the parameters do not depend on the image size
    dummy = jnp.zeros((1, MIN_SIZE, MIN_SIZE, config.image_channels), jnp.float32)
    return UNet(config).init(key, dummy)["params"]


def loss(
    logits: jax.Array, labels: jax.Array, class_weights: jax.Array | Sequence[float] | None = None
) -> jax.Array:
    """Weighted softmax cross-entropy: ``sum(w[y] ce) / sum(w[y])`` over all pixels.

    ``logits`` (..., C), ``labels`` int (...); ``class_weights`` (C,), default all 1 (the
    plain mean).
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if class_weights is None:
        return jnp.mean(ce)
    weights = jnp.asarray(class_weights, ce.dtype)[labels]
    return jnp.sum(weights * ce) / jnp.sum(weights)


def bottom_loss(bottom_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The bottom level's loss: which foreground class (1..C-1) each bottom cell shows.

    A cell's class shares are the one-hot ``labels`` resized to the bottom's size
    (``jax.image.resize``, linear with antialiasing: a triangle filter two cells wide). Its
    target is the foreground shares normalised to sum to 1; the loss is the softmax
    cross-entropy of the cell's foreground logits against it, each cell weighted by its
    foreground share (a cell of background only counts 0). It makes the coarsest level say
    which digit is where.
    """
    num_classes = bottom_logits.shape[-1]
    one_hot = jax.nn.one_hot(labels, num_classes)
    shares = jax.image.resize(
        one_hot, (*bottom_logits.shape[:3], num_classes), "linear", antialias=True
    )[..., 1:]
    mass = jnp.sum(shares, axis=-1)
    target = shares / jnp.maximum(mass, 1e-6)[..., None]
    ce = optax.softmax_cross_entropy(bottom_logits[..., 1:], target)
    return jnp.sum(mass * ce) / jnp.maximum(jnp.sum(mass), 1e-6)


def class_weights(num_classes: int, foreground: float = FOREGROUND_WEIGHT) -> jax.Array:
    """``(num_classes,)``: 1 for the background (class 0), ``foreground`` for the others."""
    return jnp.full((num_classes,), foreground).at[0].set(1.0)


def train_loss(config: SegmentationConfig, params: dict, batch: dict) -> jax.Array:
    """The training objective on ``batch`` = ``{"image": (B, H, W, C) float32, "label": (B, H,
    W) int32}``: :func:`loss` with :func:`class_weights`, plus ``BOTTOM_LOSS_WEIGHT`` times
    :func:`bottom_loss`."""
    logits, bottom_logits = UNet(config).apply({"params": params}, batch["image"], True)
    pixels = loss(logits, batch["label"], class_weights(config.num_classes))
    return pixels + BOTTOM_LOSS_WEIGHT * bottom_loss(bottom_logits, batch["label"])


def optimizer(
    learning_rate: float, steps_per_epoch: int, epochs: int
) -> optax.GradientTransformation:
    """AdamW (weight decay ``WEIGHT_DECAY``) whose rate rises linearly from 0 over the first
    ``WARMUP`` of the ``steps_per_epoch * epochs`` steps to ``learning_rate``, then follows a
    cosine down to 1 % of it at the last step."""
    schedule = learning_rate_schedule(learning_rate, steps_per_epoch, epochs)
    return optax.adamw(schedule, weight_decay=WEIGHT_DECAY)


def learning_rate_schedule(
    learning_rate: float, steps_per_epoch: int, epochs: int
) -> optax.Schedule:
    """The rate of :func:`optimizer` at each step."""
    steps = steps_per_epoch * epochs
    # at least one warm-up step, and one step left to decay over (a one-step run: none)
    warmup = min(max(1, round(WARMUP * steps)), steps - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, steps, learning_rate / 100
    )


def confusion_matrix(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """``(C, C)`` int32 counts of pixels with true class ``i`` (row) predicted ``j`` (column).

    ``logits`` (B, H, W, C), ``labels`` (B, H, W); ``mask`` (B,) leaves out the images
    where it is 0 (the padding of an eval batch). Summed over batches it is the
    confusion of the whole split.
    """
    num_classes = logits.shape[-1]
    predicted = jnp.argmax(logits, axis=-1)
    weights = jnp.ones(labels.shape, jnp.int32)
    if mask is not None:
        weights = weights * mask.astype(jnp.int32).reshape(-1, *([1] * (labels.ndim - 1)))
    cells = labels.astype(jnp.int32) * num_classes + predicted
    counts = jnp.bincount(cells.ravel(), weights.ravel(), length=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def label_confusion(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """:func:`confusion_matrix` of two label maps of the same shape (numpy, int64 counts)."""
    cells = np.asarray(labels, np.int64).ravel() * num_classes + np.asarray(predicted).ravel()
    return np.bincount(cells, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict:
    """mIoU, pixel accuracy and per-class IoU of a confusion matrix (rows true).

    ``IoU_c = TP / (TP + FP + FN)``; ``per_class_iou`` has ``None`` for a class in neither
    the labels nor the predictions (its union is empty), and ``miou`` is the mean over the
    other classes. ``pixel_accuracy`` is ``trace / sum``.
    """
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    present = union > 0
    iou = np.where(present, true_positives / np.where(present, union, 1.0), np.nan)
    return {
        "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
        "pixel_accuracy": float(true_positives.sum() / max(confusion.sum(), 1.0)),
        "per_class_iou": [float(v) if p else None for v, p in zip(iou, present)],
    }


# How far outside [0, 1] an image value may lie and still be taken (clipped): float32
# rounding, e.g. a linear resize of an image in [0, 1] giving 1 + 1 ulp.
VALUE_TOLERANCE = 4 * float(np.finfo(np.float32).eps)


def check_images(config: SegmentationConfig, images: np.ndarray) -> None:
    """Raises ``ValueError`` naming what makes ``images`` not a batch the model takes:
    ``(N, H, W, image_channels)``, floating point, values in ``[-VALUE_TOLERANCE, 1 +
    VALUE_TOLERANCE]`` (a few float32 ulps around [0, 1]), ``H, W >= MIN_SIZE``."""
    if images.ndim != 4:
        raise ValueError(
            f"images must have rank 4, (N, H, W, {config.image_channels}), got shape {images.shape}"
        )
    if images.shape[-1] != config.image_channels:
        raise ValueError(
            f"images must have {config.image_channels} channel(s) (last axis), got shape "
            f"{images.shape}"
        )
    if min(images.shape[1:3]) < MIN_SIZE:
        raise ValueError(
            f"images must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got "
            f"{images.shape[1]}x{images.shape[2]}"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    low, high = -VALUE_TOLERANCE, 1.0 + VALUE_TOLERANCE
    if images.size and not (images.min() >= low and images.max() <= high):  # NaN fails too
        raise ValueError(
            f"image values must be in [0, 1], got values in [{images.min()}, {images.max()}]"
        )


@functools.partial(jax.jit, static_argnums=0)
def _classify(config: SegmentationConfig, params: dict, images: jax.Array) -> jax.Array:
    # params an argument, not a constant: one program per config and image size, shared by
    # every predictor (whatever its parameters), with no copy of the parameters in it
    logits = UNet(config).apply({"params": params}, images)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def predict_fn(
    config: SegmentationConfig, params: dict, batch_size: int = 64
) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(images) -> labels``: ``(N, H, W, C)`` float images in [0, 1], any ``H, W >=
    MIN_SIZE``, to ``(N, H, W)`` int32 argmax classes.

    Values within ``VALUE_TOLERANCE`` outside [0, 1] (float rounding) are clipped to it.
    Images go through the model ``batch_size`` at a time, the last batch padded, so each
    image size compiles once. Raises ``ValueError`` for a bad batch (:func:`check_images`).
    """
    params = jax.device_put(params)

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        check_images(config, images)
        labels = np.zeros(images.shape[:3], np.int32)
        for i in range(0, len(images), batch_size):
            batch = np.clip(images[i : i + batch_size], 0.0, 1.0).astype(np.float32)
            padded = np.pad(batch, [(0, batch_size - len(batch)), (0, 0), (0, 0), (0, 0)])
            labels[i : i + len(batch)] = np.asarray(_classify(config, params, padded))[: len(batch)]
        return labels

    return predict


@dataclasses.dataclass(frozen=True)
class SegmentationTask:
    """Pixel-wise prediction for :mod:`jaxconv.train`: :func:`train_loss` on random crops,
    :func:`optimizer`; test metrics mIoU and pixel accuracy (:func:`scores`).

    Batches hold ``"image"`` ``(B, H, W, C)`` float32 and ``"label"`` ``(B, H, W)`` int32.
    """

    config: SegmentationConfig

    train_metric: ClassVar[str] = "train_loss"
    loss_is_example_mean: ClassVar[bool] = False

    def init_params(self, seed: int) -> dict:
        return init_params(self.config, seed)

    def apply(self, params: dict, images: jax.Array) -> jax.Array:
        return UNet(self.config).apply({"params": params}, images)

    def loss(self, params: dict, batch: Mapping[str, jax.Array]) -> jax.Array:
        return train_loss(self.config, params, batch)

    def eval_sums(
        self, params: dict, batch: Mapping[str, jax.Array], mask: jax.Array
    ) -> dict[str, jax.Array]:
        logits = self.apply(params, batch["image"])
        return {"confusion": confusion_matrix(logits, batch["label"], mask)}

    def metrics(self, sums: dict[str, np.ndarray], count: int) -> dict[str, float]:
        numbers = scores(sums["confusion"])
        return {"test_miou": numbers["miou"], "test_pixel_accuracy": numbers["pixel_accuracy"]}

    def optimizer(self, learning_rate: float, steps_per_epoch: int) -> optax.GradientTransformation:
        return optimizer(learning_rate, steps_per_epoch, self.config.epochs)

    def augment(
        self, rows: dict[str, np.ndarray], rngs: list[np.random.Generator]
    ) -> dict[str, np.ndarray]:
        if self.config.crop is None:
            return rows
        images, labels = scenes.random_crops(rows["image"], rows["label"], self.config.crop, rngs)
        return {"image": images, "label": labels}


def load_predictor(workdir: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(images) -> labels`` (:func:`predict_fn`) of the run that ``jaxconv
    segment`` trained in ``workdir`` (its latest checkpoint).

    Raises ``jaxconv.rundir.RunDirError`` naming the problem when there is no such run.
    """
    config, state = train.load_run(workdir, SegmentationConfig)
    return predict_fn(config.model, jax.device_get(state.params))
