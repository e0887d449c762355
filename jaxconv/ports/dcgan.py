"""The DCGAN of PyTorch's example (``pytorch/examples``, ``dcgan/main.py``) in Flax NNX.

Both networks keep the example's ``main = nn.Sequential(...)`` (indices as torch's, so
``main.3.running_mean`` is the same tensor in both), with ``image_size`` (a power of two,
at least 8; the example's is 64) setting the number of 2x layers:

- :class:`Generator`: ``(batch, 1, 1, nz)`` noise up to ``(batch, image_size,
  image_size, nc)`` images: ``ConvTranspose(4, stride 1)`` to 4x4, then ``ConvTranspose(4,
  stride 2, padding 1)`` doubling, each with ``BatchNorm`` and ReLU, channels ``ngf *
  2**k`` down to ``ngf``; a last doubling to ``nc`` channels and tanh. No conv bias.
- :class:`Discriminator`: images down to one probability per image: ``Conv(4, stride 2,
  padding 1)`` halving to 4x4 (LeakyReLU 0.2; ``BatchNorm`` after all but the first),
  then, in place of the example's last 4x4 conv, a ``Flatten`` -> ``Linear`` head
  (torch's ``(C, H, W)`` feature order) and a sigmoid.

The example draws its initial weights with ``weights_init`` (conv ``N(0, 0.02)``, norm
scale ``N(1, 0.02)``); these layers start from torch's default initialisation; load
the trained or re-initialised torch weights with :func:`jaxconv.interop.load_state_dict`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import nnx as jnnx


def _doublings(image_size: int) -> int:
    """The number of 2x layers between 4x4 and ``image_size``."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"image_size must be an int, got {image_size!r}")
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two of at least 8, got {image_size}")
    return image_size.bit_length() - 3


class Generator(nnx.Module):
    """``(batch, 1, 1, nz)`` to ``(batch, image_size, image_size, nc)`` in ``[-1, 1]``."""

    def __init__(
        self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64, *, rngs: nnx.Rngs
    ) -> None:
        n = _doublings(image_size)
        layers: list = []
        channels_in = nz
        for k in range(n):
            channels = ngf * 2 ** (n - 1 - k)
            stride, padding = (1, 0) if k == 0 else (2, 1)
            layers += [
                jnnx.ConvTranspose(
                    channels_in, channels, 4, stride, padding, use_bias=False, rngs=rngs
                ),
                jnnx.BatchNorm(channels),
                jax.nn.relu,
            ]
            channels_in = channels
        layers += [jnnx.ConvTranspose(ngf, nc, 4, 2, 1, use_bias=False, rngs=rngs), jnp.tanh]
        self.main = nnx.Sequential(*layers)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.main(z)


class Discriminator(nnx.Module):
    """``(batch, image_size, image_size, nc)`` to ``(batch,)`` probabilities."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64, *, rngs: nnx.Rngs) -> None:
        n = _doublings(image_size)
        leaky = partial(jax.nn.leaky_relu, negative_slope=0.2)
        layers: list = [jnnx.Conv(nc, ndf, 4, 2, 1, use_bias=False, rngs=rngs), leaky]
        channels_in = ndf
        for k in range(1, n):
            channels = ndf * 2**k
            layers += [
                jnnx.Conv(channels_in, channels, 4, 2, 1, use_bias=False, rngs=rngs),
                jnnx.BatchNorm(channels),
                leaky,
            ]
            channels_in = channels
        layers += [jnnx.Flatten(), jnnx.Linear(channels_in * 16, 1, rngs=rngs), jax.nn.sigmoid]
        self.main = nnx.Sequential(*layers)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.main(images).reshape(-1)
