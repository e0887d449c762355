"""MONAI's ``UNet`` (``monai.networks.nets.UNet``, 1.6) in Flax NNX on :mod:`jaxconv.nnx`.

The same constructor and module tree as MONAI's, so ``interop.load_state_dict(port,
monai_unet.state_dict())`` needs no renaming::

    model = Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)), up)

built from the bottom up: each level's ``down`` is a strided
:class:`~jaxconv.ports.monai_blocks.ResidualUnit` (a strided
:class:`~jaxconv.ports.monai_blocks.Convolution` when ``num_res_units=0``), the bottom
one unstrided; each ``up`` a transposed :class:`~jaxconv.ports.monai_blocks.Convolution`
(``output_padding = stride - 1``) followed, with residual units, by a one-unit
``ResidualUnit`` (the top one ending in a bare conv). Inputs are channels-last
``(batch, *spatial, in_channels)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import jax
from flax import nnx

from jaxconv.ports.monai_blocks import Convolution, LayerSpec, ResidualUnit, SkipConnection


class UNet(nnx.Module):
    """MONAI's ``UNet(spatial_dims, in_channels, out_channels, channels, strides, ...)``:
    ``len(channels) - 1`` down-sampling levels and a bottom; defaults as MONAI's (PReLU,
    InstanceNorm without affine parameters, no dropout, ``"NDA"`` ordering)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: int | Sequence[int] = 3,
        up_kernel_size: int | Sequence[int] = 3,
        num_res_units: int = 0,
        act: LayerSpec = "PRELU",
        norm: LayerSpec = "INSTANCE",
        dropout: float = 0.0,
        bias: bool = True,
        adn_ordering: str = "NDA",
        *,
        rngs: nnx.Rngs,
    ) -> None:
        if len(channels) < 2:
            raise ValueError(f"channels must have at least 2 values, got {tuple(channels)}")
        if len(strides) < len(channels) - 1:
            raise ValueError(
                f"strides must have len(channels) - 1 = {len(channels) - 1} values, got "
                f"{tuple(strides)}"
            )
        if len(strides) > len(channels) - 1:
            warnings.warn(
                f"strides has {len(strides)} values; the last "
                f"{len(strides) - len(channels) + 1} are not used (as in MONAI)",
                stacklevel=2,
            )
        self.dimensions = spatial_dims
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channels, self.strides = tuple(channels), tuple(strides)
        self.num_res_units = num_res_units
        settings = dict(act=act, norm=norm, dropout=dropout, bias=bias, adn_ordering=adn_ordering)
        d = spatial_dims

        def down(inc: int, outc: int, stride: int) -> nnx.Module:
            if num_res_units > 0:
                return ResidualUnit(
                    d, inc, outc, stride, kernel_size, num_res_units, **settings, rngs=rngs
                )
            return Convolution(d, inc, outc, stride, kernel_size, **settings, rngs=rngs)

        def up(inc: int, outc: int, stride: int, is_top: bool) -> nnx.Module:
            conv = Convolution(
                d, inc, outc, stride, up_kernel_size, **settings,
                conv_only=is_top and num_res_units == 0, is_transposed=True, rngs=rngs,
            )  # fmt: skip
            if num_res_units == 0:
                return conv
            unit = ResidualUnit(
                d, outc, outc, 1, kernel_size, 1, **settings, last_conv_only=is_top, rngs=rngs
            )
            return nnx.Sequential(conv, unit)

        def block(
            inc: int, outc: int, channels: tuple[int, ...], strides: tuple[int, ...], is_top: bool
        ) -> nnx.Sequential:
            c, s = channels[0], strides[0]
            if len(channels) > 2:
                subblock = block(c, c, channels[1:], strides[1:], False)
                upc = c * 2
            else:
                subblock = down(c, channels[1], 1)
                upc = c + channels[1]
            return nnx.Sequential(
                down(inc, c, s), SkipConnection(subblock), up(upc, outc, s, is_top)
            )

        self.model = block(in_channels, out_channels, self.channels, self.strides, True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.model(x)
