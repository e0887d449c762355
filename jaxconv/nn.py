"""Flax linen layers with PyTorch's ``ConvNd`` / ``ConvTransposeNd`` semantics.

Channels-last as in Flax: inputs are ``(batch, *spatial, channels)`` with 1, 2 or 3
spatial dimensions, told apart by the input's rank. Parameters are ``kernel`` and
``bias`` in the layouts of :mod:`jaxconv.ops`; :mod:`jaxconv.interop` maps torch's
``weight`` and ``bias`` onto them. The default initialisation is PyTorch's.
``impl`` (``"auto"``, ``"reference"`` or ``"fast"``) picks the implementation, as in
:mod:`jaxconv.ops`; every implementation has the same parameters and results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv import ops, shapes

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def torch_init_bound(kernel_shape: tuple[int, ...]) -> float:
    """PyTorch's default init bound ``1 / sqrt(fan_in)`` for a jaxconv kernel shape.

    PyTorch draws weight and bias from ``U(-bound, bound)``, ``fan_in`` being
    ``weight.shape[1] * prod(kernel_size)``: ``in // groups`` for a conv and
    ``out // groups`` for a transposed conv, that is ``kernel.shape[-2] *
    prod(kernel.shape[:-2])`` in both jaxconv layouts.
    """
    fan_in = kernel_shape[-2] * math.prod(kernel_shape[:-2])
    return 1.0 / math.sqrt(fan_in) if fan_in else 0.0


def torch_uniform(bound: float) -> Initializer:
    """Initializer drawing from ``U(-bound, bound)``.

    The numbers are drawn flat and reshaped: the same numbers as drawing ``shape``
    directly, but XLA:CPU compiles a 4-D draw such as ``(4, 4, 16, 10)`` in about
    7 s and the flat one in 0.3 s (jax 0.10.2, measured).
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        flat = jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound)
        return flat.reshape(shape)

    return init


def _spatial_ndim(x: jax.Array, kernel_size: shapes.IntOrTuple) -> int:
    ndim = x.ndim - 2
    if ndim not in (1, 2, 3):
        raise ValueError(
            f"input must be (batch, *spatial, channels) with 1, 2 or 3 spatial "
            f"dimensions, got shape {x.shape}"
        )
    if not isinstance(kernel_size, int) and len(kernel_size) not in (1, ndim):
        raise ValueError(
            f"kernel_size {tuple(kernel_size)} has {len(kernel_size)} dimensions, but the "
            f"input {x.shape} has {ndim} spatial dimensions"
        )
    return ndim


def _check_channels(features: int, in_features: int, groups: int) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if not isinstance(features, int) or features < 1:
        raise ValueError(f"features must be a positive integer, got {features!r}")
    if in_features % groups:
        raise ValueError(f"input channels ({in_features}) must be divisible by groups ({groups})")
    if features % groups:
        raise ValueError(f"features ({features}) must be divisible by groups ({groups})")


class _TorchConvBase(nn.Module):
    """Parameter creation shared by :class:`Conv` and :class:`ConvTranspose`."""

    def _kernel_and_bias(
        self, kernel_shape: tuple[int, ...], features: int
    ) -> tuple[jax.Array, jax.Array | None]:
        bound = torch_init_bound(kernel_shape)
        kernel = self.param(
            "kernel", self.kernel_init or torch_uniform(bound), kernel_shape, jnp.float32
        )
        if not self.use_bias:
            return kernel, None
        bias = self.param("bias", self.bias_init or torch_uniform(bound), (features,), jnp.float32)
        return kernel, bias


class Conv(_TorchConvBase):
    """``torch.nn.ConvNd``: out size ``floor((n + 2p - d(k-1) - 1)/s) + 1`` per dimension.

    ``padding`` is an int, a per-dimension tuple, ``'same'`` or ``'valid'``;
    ``padding_mode`` one of ``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'``.
    Kernel ``(*kernel_size, in // groups, features)``.
    """

    features: int
    kernel_size: shapes.IntOrTuple
    stride: shapes.IntOrTuple = 1
    padding: shapes.ConvPadding = 0
    dilation: shapes.IntOrTuple = 1
    groups: int = 1
    use_bias: bool = True
    padding_mode: str = "zeros"
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ops.resolve_impl(self.impl)
        ndim = _spatial_ndim(x, self.kernel_size)
        _check_channels(self.features, x.shape[-1], self.groups)
        kernel_size = shapes.per_dim("kernel_size", self.kernel_size, ndim)
        shapes.conv_output_shape(
            x.shape[1:-1], kernel_size, self.stride, self.padding, self.dilation
        )
        kernel, bias = self._kernel_and_bias(
            (*kernel_size, x.shape[-1] // self.groups, self.features), self.features
        )
        return ops.conv(
            x,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            impl=self.impl,
        )


class ConvTranspose(_TorchConvBase):
    """``torch.nn.ConvTransposeNd``: out size ``(n-1)s - 2p + d(k-1) + op + 1`` per dimension.

    Kernel ``(*kernel_size, features // groups, in)``.
    """

    features: int
    kernel_size: shapes.IntOrTuple
    stride: shapes.IntOrTuple = 1
    padding: shapes.IntOrTuple = 0
    output_padding: shapes.IntOrTuple = 0
    dilation: shapes.IntOrTuple = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ops.resolve_impl(self.impl)
        ndim = _spatial_ndim(x, self.kernel_size)
        _check_channels(self.features, x.shape[-1], self.groups)
        kernel_size = shapes.per_dim("kernel_size", self.kernel_size, ndim)
        shapes.conv_transpose_output_shape(
            x.shape[1:-1],
            kernel_size,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
        )
        kernel, bias = self._kernel_and_bias(
            (*kernel_size, self.features // self.groups, x.shape[-1]), self.features
        )
        return ops.conv_transpose(
            x,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
            impl=self.impl,
        )
