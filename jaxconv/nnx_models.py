"""The lecture's autoencoder in Flax NNX, on :mod:`jaxconv.nnx`'s layers.

The same model as :class:`jaxconv.models.Autoencoder` (same :class:`AutoencoderConfig`,
layers, initialisation and outputs), laid out as
:func:`jaxconv.torch_models.torch_autoencoder` is: ``encoder`` and ``decoder`` are
``nnx.Sequential`` with the activations at torch's indices, so that
:func:`jaxconv.interop.load_state_dict` and :func:`jaxconv.interop.to_state_dict`
read and write torch's keys (``encoder.0.weight``, ..., ``decoder.5.bias``) as they are.

:func:`linen_name_map` pairs those names with the linen model's layer paths, so linen
parameters move over with :func:`from_linen_params`. :func:`train_step` is one Adam
step on the reconstruction MSE, written as the Flax 0.12 docs write NNX training
(``nnx.Optimizer(model, tx, wrt=nnx.Param)``, ``nnx.value_and_grad``, ``nnx.jit``).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx

from jaxconv import interop
from jaxconv.models import (
    KERNEL,
    PADDING,
    STRIDE,
    AutoencoderConfig,
    decoder_output_padding,
    encoder_sizes,
    mse,
)
from jaxconv.nnx import Conv, ConvTranspose


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _unflatten(z: jax.Array) -> jax.Array:
    return z.reshape(z.shape[0], 1, 1, -1)


class Autoencoder(nnx.Module):
    """``(batch, H, W, C)`` images to ``(batch, embedding_dim)`` embeddings and back::

    encoder: Conv-relu-Conv-relu-...-Conv(embedding_dim, last size)-flatten
    decoder: unflatten-ConvTranspose(last size)-relu-ConvTranspose-relu-...-sigmoid
    """

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig(), *, rngs: nnx.Rngs):
        self.config = config
        last = encoder_sizes(config)[-1]
        strided = dict(kernel_size=KERNEL, stride=STRIDE, padding=PADDING)
        encoder: list[Any] = []
        channels_in = config.image_shape[-1]
        for features in config.channels:
            encoder += [Conv(channels_in, features, **strided, rngs=rngs), nnx.relu]
            channels_in = features
        encoder += [Conv(channels_in, config.embedding_dim, last, rngs=rngs), _flatten]

        decoder: list[Any] = [
            _unflatten,
            ConvTranspose(config.embedding_dim, config.channels[-1], last, rngs=rngs),
            nnx.relu,
        ]
        channels_in = config.channels[-1]
        features = [*config.channels[-2::-1], config.image_shape[-1]]
        for f, op in zip(features, decoder_output_padding(config)):
            layer = ConvTranspose(channels_in, f, **strided, output_padding=op, rngs=rngs)
            decoder += [layer, nnx.relu]
            channels_in = f
        decoder[-1] = nnx.sigmoid
        self.encoder = nnx.Sequential(*encoder)
        self.decoder = nnx.Sequential(*decoder)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.decoder(self.encoder(images))

    def encode(self, images: jax.Array) -> jax.Array:
        return self.encoder(images)

    def decode(self, embeddings: jax.Array) -> jax.Array:
        return self.decoder(embeddings)


def linen_name_map(config: AutoencoderConfig = AutoencoderConfig()) -> dict[str, str]:
    """``{torch / NNX prefix: linen path}`` for every conv layer of the autoencoder:
    ``encoder.{2i}`` is ``encoder/Conv_{i}``, ``decoder.{2i+1}``
    ``decoder/ConvTranspose_{i}``."""
    layers = range(len(config.channels) + 1)
    return {
        **{f"encoder.{2 * i}": f"encoder/Conv_{i}" for i in layers},
        **{f"decoder.{2 * i + 1}": f"decoder/ConvTranspose_{i}" for i in layers},
    }


def from_linen_params(config: AutoencoderConfig, params: dict) -> Autoencoder:
    """The NNX autoencoder holding the linen model's ``params`` (bitwise the same values)."""
    model = nnx.eval_shape(lambda: Autoencoder(config, rngs=nnx.Rngs(0)))  # no init computed
    state_dict = interop.to_state_dict(params, linen_name_map(config))
    interop.load_state_dict(model, state_dict)
    return model


def optimizer(model: Autoencoder, learning_rate: float = 1e-3) -> nnx.Optimizer:
    """Adam on the model's parameters, the linen training's optimizer."""
    return nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)


@nnx.jit
def train_step(model: Autoencoder, optimizer: nnx.Optimizer, images: jax.Array) -> jax.Array:
    """One optimizer step on the reconstruction MSE of ``images``, in place; returns the loss."""

    def loss_fn(model: Autoencoder) -> jax.Array:
        return mse(model(images), images)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss
