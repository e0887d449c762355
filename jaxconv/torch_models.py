"""The autoencoder of :mod:`jaxconv.models` in PyTorch, for parity checks and baselines.

Imports torch when called, never at ``import jaxconv``. Its ``state_dict`` loads
into the Flax model with :func:`jaxconv.interop.params_from_state_dict`.
"""

from __future__ import annotations

from typing import Any

from jaxconv.models import (
    KERNEL,
    PADDING,
    STRIDE,
    AutoencoderConfig,
    decoder_output_padding,
    encoder_sizes,
)


def torch_autoencoder(config: AutoencoderConfig = AutoencoderConfig()) -> Any:
    """A ``torch.nn.Module`` (NCHW) with ``encoder`` and ``decoder`` mirroring the Flax model."""
    import torch
    from torch import nn

    channels_in = config.image_shape[-1]
    last = encoder_sizes(config)[-1]
    encoder: list[Any] = []
    for features in config.channels:
        encoder += [nn.Conv2d(channels_in, features, KERNEL, STRIDE, PADDING), nn.ReLU()]
        channels_in = features
    encoder += [nn.Conv2d(channels_in, config.embedding_dim, last), nn.Flatten()]

    decoder: list[Any] = [
        nn.Unflatten(1, (config.embedding_dim, 1, 1)),
        nn.ConvTranspose2d(config.embedding_dim, config.channels[-1], last),
        nn.ReLU(),
    ]
    features = [*config.channels[-2::-1], config.image_shape[-1]]
    channels_in = config.channels[-1]
    for f, op in zip(features, decoder_output_padding(config)):
        decoder += [nn.ConvTranspose2d(channels_in, f, KERNEL, STRIDE, PADDING, op), nn.ReLU()]
        channels_in = f
    decoder[-1] = nn.Sigmoid()

    class Autoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(*encoder)
            self.decoder = nn.Sequential(*decoder)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(images))

    return Autoencoder()
