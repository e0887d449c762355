"""Flax linen layers with PyTorch's ``ConvNd`` / ``ConvTransposeNd`` semantics.

Channels-last as in Flax: inputs are ``(batch, *spatial, channels)`` with 1, 2 or 3
spatial dimensions, told apart by the input's rank. Parameters are ``kernel`` and
``bias`` in the layouts of :mod:`jaxconv.ops`, stored in ``param_dtype``;
:mod:`jaxconv.interop` maps torch's ``weight`` and ``bias`` onto them. The default
initialisation is PyTorch's. ``dtype`` is the computation dtype (``None``: the
promotion of input and parameters, as in Flax). ``impl`` (``"auto"``, ``"reference"``
or ``"fast"``) picks the implementation, as in :mod:`jaxconv.ops`; every
implementation has the same parameters and results.

The layers own their parameters and nothing else: the checks and the computation are
:mod:`jaxconv.shapes` and :mod:`jaxconv.ops`, shared with :mod:`jaxconv.nnx`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv import ops, shapes
from jaxconv.ops import Initializer, torch_uniform

_NAMES = ("the channels of x", "features")  # the channel counts, named as this layer has them


class _TorchConvBase(nn.Module):
    """Parameter creation shared by :class:`Conv` and :class:`ConvTranspose`."""

    def _check_input_channels(self, x: jax.Array, transposed: bool) -> None:
        """Once the layer has a kernel, ``x`` must have its input channels (checked here:
        Flax's own error for a kernel of another shape does not say that inputs are
        channels-last)."""
        if not self.has_variable("params", "kernel"):
            return
        kernel_shape = jnp.shape(self.get_variable("params", "kernel"))
        in_channels = kernel_shape[-1] if transposed else kernel_shape[-2] * int(self.groups)
        ops.check_channels(jnp.shape(x), in_channels, f"the layer's kernel {kernel_shape}")

    def _kernel_and_bias(
        self, kernel_shape: tuple[int, ...], features: int
    ) -> tuple[jax.Array, jax.Array | None]:
        param_dtype = ops.float_dtype("param_dtype", self.param_dtype)
        bound = shapes.torch_init_bound(kernel_shape)
        kernel = self.param(
            "kernel", self.kernel_init or torch_uniform(bound), kernel_shape, param_dtype
        )
        if not self.use_bias:
            return kernel, None
        bias = self.param("bias", self.bias_init or torch_uniform(bound), (features,), param_dtype)
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
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ops.resolve_impl(self.impl)
        ndim = ops.input_ndim(x)
        self._check_input_channels(x, transposed=False)
        kernel_shape = shapes.conv_kernel_shape(
            ndim, x.shape[-1], self.features, self.kernel_size, self.groups, _NAMES
        )
        shapes.check_conv_args(
            ndim, self.kernel_size, self.stride, self.padding, self.dilation, self.padding_mode
        )
        kernel, bias = self._kernel_and_bias(kernel_shape, kernel_shape[-1])
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
            dtype=self.dtype,
        )


class ConvTranspose(_TorchConvBase):
    """``torch.nn.ConvTransposeNd``: out size ``(n-1)s - 2p + d(k-1) + op + 1`` per dimension.

    Kernel ``(*kernel_size, features // groups, in)``. ``padding_mode`` must be
    ``'zeros'`` (torch's only mode for transposed convs). ``__call__(x, output_size)``
    takes torch's ``output_size``: the spatial sizes or the whole output shape, from
    which ``output_padding`` follows (the attribute is then ignored, as in torch).
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
    padding_mode: str = "zeros"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, output_size: Sequence[int] | None = None) -> jax.Array:
        ops.resolve_impl(self.impl)
        ndim = ops.input_ndim(x)
        self._check_input_channels(x, transposed=True)
        kernel_shape = shapes.conv_transpose_kernel_shape(
            ndim, x.shape[-1], self.features, self.kernel_size, self.groups, _NAMES
        )
        shapes.check_conv_transpose_args(
            ndim, self.kernel_size, self.stride, self.padding, self.dilation, self.padding_mode
        )
        kernel, bias = self._kernel_and_bias(kernel_shape, kernel_shape[-2] * self.groups)
        return ops.conv_transpose(
            x,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding if output_size is None else 0,
            dilation=self.dilation,
            groups=self.groups,
            impl=self.impl,
            output_size=output_size,
            dtype=self.dtype,
        )
