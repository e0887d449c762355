"""MONAI's ``BasicUNet`` (``monai.networks.nets.BasicUNet``, 1.6) in Flax NNX.

The same constructor and module tree as MONAI's (``conv_0``, ``down_1`` ... ``down_4``,
``upcat_4`` ... ``upcat_1``, ``final_conv``; blocks :class:`TwoConv`, :class:`Down`,
:class:`UpCat`, :class:`UpSample`), so ``interop.load_state_dict(port,
monai_basic_unet.state_dict())`` needs no renaming. Four 2x max-poolings down, four
2x up-samplings (a transposed conv, ``upsample="deconv"``, or a 1x1 conv then linear
interpolation with corners aligned, ``"nontrainable"``), each joined with the skip's
features and two 3x3 :class:`~jaxconv.ports.monai_blocks.Convolution` blocks; where an
odd size made the up-sampled map one short, it is padded by repeating its last row
(MONAI's ``is_pad``). Inputs are channels-last ``(batch, *spatial, in_channels)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import nnx as jnnx
from jaxconv.ports.monai_blocks import Convolution, LayerSpec, NamedSequential

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


class TwoConv(NamedSequential):
    """``conv_0`` and ``conv_1``: two 3x3 :class:`Convolution` blocks (padding 1)."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        act: LayerSpec,
        norm: LayerSpec,
        bias: bool,
        dropout: float = 0.0,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__()
        for name, chns in (("conv_0", in_chns), ("conv_1", out_chns)):
            block = Convolution(
                spatial_dims, chns, out_chns, act=act, norm=norm, dropout=dropout, bias=bias,
                padding=1, rngs=rngs,
            )  # fmt: skip
            self.add(name, block)


class Down(NamedSequential):
    """``max_pooling`` (2x, :class:`jaxconv.nnx.MaxPool`) then ``convs`` (:class:`TwoConv`)."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        act: LayerSpec,
        norm: LayerSpec,
        bias: bool,
        dropout: float = 0.0,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__()
        self.add("max_pooling", jnnx.MaxPool((2,) * spatial_dims))
        self.add(
            "convs", TwoConv(spatial_dims, in_chns, out_chns, act, norm, bias, dropout, rngs=rngs)
        )


class UpSample(NamedSequential):
    """MONAI's ``UpSample`` by ``scale_factor`` in two of its modes: ``"deconv"``
    (``deconv``: a transposed conv with kernel and stride ``scale_factor``) and
    ``"nontrainable"`` (``preconv``, a 1x1 conv where the channels change, then
    ``upsample_non_trainable``: :class:`jaxconv.nnx.Upsample`, linear in every
    dimension, ``align_corners`` as given)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        scale_factor: int = 2,
        mode: str = "deconv",
        align_corners: bool | None = True,
        bias: bool = True,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        scale = (scale_factor,) * spatial_dims
        if mode == "deconv":
            deconv = jnnx.ConvTranspose(
                in_channels, out_channels, scale, scale, use_bias=bias, rngs=rngs
            )
            self.add("deconv", deconv)
        elif mode == "nontrainable":
            if out_channels != in_channels:
                one = (1,) * spatial_dims
                self.add(
                    "preconv", jnnx.Conv(in_channels, out_channels, one, use_bias=bias, rngs=rngs)
                )
            upsample = jnnx.Upsample(
                scale_factor=float(scale_factor),
                mode=_LINEAR[spatial_dims],
                align_corners=align_corners,
            )
            self.add("upsample_non_trainable", upsample)
        else:
            raise ValueError(f"upsample must be 'deconv' or 'nontrainable', got {mode!r}")


class UpCat(nnx.Module):
    """``upsample`` (:class:`UpSample`, 2x, to half the channels when ``halves``), the
    result padded to the skip's size (``is_pad``), joined after the skip's features, then
    ``convs`` (:class:`TwoConv`)."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        cat_chns: int,
        out_chns: int,
        act: LayerSpec,
        norm: LayerSpec,
        bias: bool,
        dropout: float = 0.0,
        upsample: str = "deconv",
        align_corners: bool | None = True,
        halves: bool = True,
        is_pad: bool = True,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        up_chns = in_chns // 2 if halves else in_chns
        self.upsample = UpSample(
            spatial_dims, in_chns, up_chns, 2, upsample, align_corners, rngs=rngs
        )
        self.convs = TwoConv(
            spatial_dims, cat_chns + up_chns, out_chns, act, norm, bias, dropout, rngs=rngs
        )
        self.is_pad = is_pad

    def __call__(self, x: jax.Array, x_e: jax.Array | None) -> jax.Array:
        x_0 = self.upsample(x)
        if x_e is None:
            return self.convs(x_0)
        if self.is_pad:
            # MONAI pads one at the end of each spatial axis whose size differs, repeating
            # the edge (torch's "replicate")
            pads = [(0, 0)] + [
                (0, int(a != b)) for a, b in zip(x_e.shape[1:-1], x_0.shape[1:-1])
            ] + [(0, 0)]  # fmt: skip
            x_0 = jnp.pad(x_0, pads, mode="edge")
        return self.convs(jnp.concatenate([x_e, x_0], axis=-1))


class BasicUNet(nnx.Module):
    """MONAI's ``BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(32, 32,
    64, 128, 256, 32), ...)``: defaults as MONAI's (LeakyReLU 0.1, InstanceNorm with
    affine parameters, no dropout, up-sampling by transposed convs)."""

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: LayerSpec = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: LayerSpec = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float = 0.0,
        upsample: str = "deconv",
        *,
        rngs: nnx.Rngs,
    ) -> None:
        fea = tuple(features)
        if len(fea) != 6:
            raise ValueError(f"features must have 6 values, got {fea}")
        d, common = spatial_dims, (act, norm, bias, dropout)
        self.conv_0 = TwoConv(d, in_channels, fea[0], *common, rngs=rngs)
        self.down_1 = Down(d, fea[0], fea[1], *common, rngs=rngs)
        self.down_2 = Down(d, fea[1], fea[2], *common, rngs=rngs)
        self.down_3 = Down(d, fea[2], fea[3], *common, rngs=rngs)
        self.down_4 = Down(d, fea[3], fea[4], *common, rngs=rngs)
        self.upcat_4 = UpCat(d, fea[4], fea[3], fea[3], *common, upsample, rngs=rngs)
        self.upcat_3 = UpCat(d, fea[3], fea[2], fea[2], *common, upsample, rngs=rngs)
        self.upcat_2 = UpCat(d, fea[2], fea[1], fea[1], *common, upsample, rngs=rngs)
        self.upcat_1 = UpCat(d, fea[1], fea[0], fea[5], *common, upsample, halves=False, rngs=rngs)
        self.final_conv = jnnx.Conv(fea[5], out_channels, (1,) * d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u4 = self.upcat_4(x4, x3)
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        u1 = self.upcat_1(u2, x0)
        return self.final_conv(u1)
