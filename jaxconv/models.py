"""The convolutional autoencoder: image -> low-dimensional embedding -> image.

The default is the lecture's MNIST model::

    Encoder: Conv(16, 3, s2, p1)-ReLU-Conv(32, 3, s2, p1)-ReLU-Conv(64, 7)  28x28x1 -> 64
    Decoder: ConvTranspose(32, 7)-ReLU-ConvTranspose(16, 3, s2, p1, op1)-ReLU-
             ConvTranspose(1, 3, s2, p1, op1)-Sigmoid                       64 -> 28x28x1

Each strided conv halves the image (rounding up); the last conv's kernel covers
what is left, giving a 1x1 embedding. The decoder mirrors the encoder; its
``output_padding`` puts back what each strided conv's floor division dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxconv import configs, shapes
from jaxconv.nn import Conv, ConvTranspose

KERNEL, STRIDE, PADDING = 3, 2, 1  # every strided layer


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """The model's shape: what a checkpoint needs to be read back.

    ``output_padding``: one ``(h, w)`` pair per strided decoder layer, in decoder
    order; ``None`` computes the pairs that give ``image_shape`` back.
    """

    task_name: ClassVar[str] = "autoencoder"
    command: ClassVar[str] = "train"  # the jaxconv command that trains it

    image_shape: tuple[int, int, int] = (28, 28, 1)
    channels: tuple[int, ...] = (16, 32)
    embedding_dim: int = configs.EMBEDDING_DIM
    output_padding: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(
                f"image_shape must be (height, width, channels), got {self.image_shape}"
            )
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive ints, got {self.channels}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        decoder_output_padding(self)  # raises if the decoder cannot give the image back

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def task(self) -> AutoencoderTask:
        return AutoencoderTask(self)

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        op = d.get("output_padding")
        return cls(
            image_shape=tuple(d["image_shape"]),
            channels=tuple(d["channels"]),
            embedding_dim=d["embedding_dim"],
            output_padding=None if op is None else tuple(tuple(p) for p in op),
        )


def encoder_sizes(config: AutoencoderConfig) -> list[tuple[int, int]]:
    """Spatial size entering each strided conv, then the size left for the last conv."""
    sizes = [tuple(config.image_shape[:2])]
    for _ in config.channels:
        sizes.append(shapes.conv_output_shape(sizes[-1], KERNEL, STRIDE, PADDING))
    return sizes


def decoder_output_padding(config: AutoencoderConfig) -> tuple[tuple[int, int], ...]:
    """The strided decoder layers' ``output_padding``, checked to give ``image_shape`` back.

    Raises ``ValueError`` naming the layer and the ``output_padding`` that would fix it.
    """
    targets = encoder_sizes(config)[-2::-1]  # the sizes each strided decoder layer must reach
    needed = tuple(shapes.output_padding_for(t, KERNEL, STRIDE, PADDING) for t in targets)
    if config.output_padding is None:
        return needed
    if len(config.output_padding) != len(needed):
        raise ValueError(
            f"output_padding has {len(config.output_padding)} pairs but the decoder has "
            f"{len(needed)} strided layers; {needed} gives the image back"
        )
    size = encoder_sizes(config)[-1]
    for i, (op, fix, target) in enumerate(zip(config.output_padding, needed, targets)):
        size = shapes.conv_transpose_output_shape(size, KERNEL, STRIDE, PADDING, op)
        if size != target:
            raise ValueError(
                f"decoder layer ConvTranspose_{i + 1} outputs {size[0]}x{size[1]} but must give "
                f"back {target[0]}x{target[1]}: output_padding={fix} would fix it "
                f"(got {tuple(op)})"
            )
    return config.output_padding


class Encoder(nn.Module):
    """``(batch, H, W, C)`` images to ``(batch, embedding_dim)`` embeddings."""

    config: AutoencoderConfig = AutoencoderConfig()

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images
        for features in self.config.channels:
            x = nn.relu(Conv(features, KERNEL, stride=STRIDE, padding=PADDING)(x))
        x = Conv(self.config.embedding_dim, encoder_sizes(self.config)[-1])(x)
        return x.reshape(x.shape[0], -1)


class Decoder(nn.Module):
    """``(batch, embedding_dim)`` embeddings to ``(batch, H, W, C)`` images in (0, 1)."""

    config: AutoencoderConfig = AutoencoderConfig()

    @nn.compact
    def __call__(self, embeddings: jax.Array) -> jax.Array:
        config = self.config
        x = embeddings.reshape(embeddings.shape[0], 1, 1, -1)
        x = nn.relu(ConvTranspose(config.channels[-1], encoder_sizes(config)[-1])(x))
        features = [*config.channels[-2::-1], config.image_shape[-1]]
        for i, (f, op) in enumerate(zip(features, decoder_output_padding(config))):
            x = ConvTranspose(f, KERNEL, stride=STRIDE, padding=PADDING, output_padding=op)(x)
            x = nn.sigmoid(x) if i == len(features) - 1 else nn.relu(x)
        return x


class Autoencoder(nn.Module):
    """Encoder then decoder; ``encode`` and ``decode`` are the two halves."""

    config: AutoencoderConfig = AutoencoderConfig()

    def setup(self) -> None:
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.decoder(self.encoder(images))

    def encode(self, images: jax.Array) -> jax.Array:
        return self.encoder(images)

    def decode(self, embeddings: jax.Array) -> jax.Array:
        return self.decoder(embeddings)


def check_images(config: AutoencoderConfig, images: Sequence[int]) -> None:
    """Raises ``ValueError`` unless ``images`` (a shape) is a batch of ``config.image_shape``."""
    if tuple(images[1:]) != tuple(config.image_shape):
        raise ValueError(
            f"the model takes images of shape {config.image_shape}, got a batch of shape "
            f"{tuple(images)}"
        )


def init_params(config: AutoencoderConfig, seed: int) -> dict:
    """Parameters with PyTorch's default initialisation, from ``seed`` (jit-compiled)."""
    model = Autoencoder(config)
    dummy = jnp.zeros((1, *config.image_shape), jnp.float32)
    return jax.jit(model.init)(jax.random.key(seed), dummy)["params"]


def reconstruct(config: AutoencoderConfig, params: dict, images: np.ndarray) -> np.ndarray:
    """The autoencoder's reconstructions of ``images``, computed in this process alone (the
    parameters are fetched from wherever they are)."""
    return np.asarray(jax.jit(AutoencoderTask(config).apply)(jax.device_get(params), images))


def mse(reconstructions: jax.Array, images: jax.Array) -> jax.Array:
    """Mean squared error over all pixels (``torch.nn.MSELoss()``)."""
    return jnp.mean((reconstructions - images) ** 2)


@dataclasses.dataclass(frozen=True)
class AutoencoderTask:
    """Reconstruction for :mod:`jaxconv.train`: MSE loss and Adam; test metric: MSE.

    Batches hold ``"image"``: ``(batch, *image_shape)`` float32 in [0, 1].
    """

    config: AutoencoderConfig

    train_metric: ClassVar[str] = "train_mse"
    loss_is_example_mean: ClassVar[bool] = True

    def init_params(self, seed: int) -> dict:
        return init_params(self.config, seed)

    def apply(self, params: dict, images: jax.Array) -> jax.Array:
        return Autoencoder(self.config).apply({"params": params}, images)

    def loss(self, params: dict, batch: Mapping[str, jax.Array]) -> jax.Array:
        return mse(self.apply(params, batch["image"]), batch["image"])

    def eval_sums(
        self, params: dict, batch: Mapping[str, jax.Array], mask: jax.Array
    ) -> dict[str, jax.Array]:
        images = batch["image"]
        per_image = jnp.mean((self.apply(params, images) - images) ** 2, axis=(1, 2, 3))
        return {"mse": jnp.sum(per_image * mask)}

    def metrics(self, sums: dict[str, np.ndarray], count: int) -> dict[str, float]:
        return {"test_mse": float(sums["mse"] / count)}

    def optimizer(self, learning_rate: float, steps_per_epoch: int) -> optax.GradientTransformation:
        return optax.adam(learning_rate)

    def augment(
        self, rows: dict[str, np.ndarray], rngs: list[np.random.Generator]
    ) -> dict[str, np.ndarray]:
        return rows  # the images as they are
