"""Flax NNX layers with PyTorch's ``ConvNd`` / ``ConvTransposeNd`` semantics.

The NNX twins of :mod:`jaxconv.nn`, with torch's constructor arguments
``(in_features, out_features, kernel_size, stride, padding, [output_padding,]
dilation, groups, use_bias, padding_mode)``. Channels-last: inputs are
``(batch, *spatial, channels)``. Parameters ``kernel`` and ``bias`` (``nnx.Param``, in
``param_dtype``) have the layouts of :mod:`jaxconv.ops` and PyTorch's default
initialisation; ``dtype`` is the computation dtype (``None``: the promotion of input
and parameters). The checks and the computation are :mod:`jaxconv.shapes` and
:mod:`jaxconv.ops`, the same as the linen layers', so are the error messages.

NNX creates parameters at construction, so ``kernel_size`` fixes the number of
spatial dimensions: a tuple of 1, 2 or 3 ints gives that many (as in
``flax.nnx.Conv``), and an int means **2-D**, as ``torch.nn.Conv2d(c, c, 3)`` does
(``flax.nnx.Conv`` reads an int as 1-D); write ``(3,)`` for 1-D and ``(3, 3, 3)`` for
3-D. An input of another rank is a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import ops, shapes
from jaxconv.ops import Initializer, torch_uniform

_NAMES = ("in_features", "out_features")


class _TorchConvBase(nnx.Module):
    """Parameters, dtypes and the input-rank check shared by :class:`Conv` and
    :class:`ConvTranspose`."""

    def _init_params(
        self,
        kernel_shape: tuple[int, ...],
        use_bias: bool,
        dtype: Any,
        param_dtype: Any,
        kernel_init: Initializer | None,
        bias_init: Initializer | None,
        rngs: nnx.Rngs,
    ) -> None:
        self.dtype = None if dtype is None else ops.float_dtype("dtype", dtype)
        self.param_dtype = ops.float_dtype("param_dtype", param_dtype)
        self.kernel_size = kernel_shape[:-2]
        self.use_bias = bool(use_bias)
        bound = shapes.torch_init_bound(kernel_shape)
        init = kernel_init or torch_uniform(bound)
        self.kernel = nnx.Param(init(rngs.params(), kernel_shape, self.param_dtype))
        init = bias_init or torch_uniform(bound)
        self.bias = (
            nnx.Param(init(rngs.params(), (self.out_features,), self.param_dtype))
            if self.use_bias
            else None
        )

    def _operands(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        ndim = len(self.kernel_size)
        if ops.input_ndim(x) != ndim:
            raise ValueError(
                f"x must be (batch, *spatial, channels) with {ndim} spatial dimensions, as "
                f"kernel_size={self.kernel_size} has (an int kernel_size means 2-D), got shape "
                f"{jnp.shape(x)}"
            )
        return self.kernel[...], None if self.bias is None else self.bias[...]


class Conv(_TorchConvBase):
    """``torch.nn.ConvNd``: out size ``floor((n + 2p - d(k-1) - 1)/s) + 1`` per dimension.

    ``padding`` is an int, a per-dimension tuple, ``'same'`` or ``'valid'``;
    ``padding_mode`` one of ``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'``.
    Kernel ``(*kernel_size, in_features // groups, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: shapes.IntOrTuple,
        stride: shapes.IntOrTuple = 1,
        padding: shapes.ConvPadding = 0,
        dilation: shapes.IntOrTuple = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "zeros",
        *,
        impl: str = "auto",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        ops.resolve_impl(impl)
        ndim = shapes.kernel_ndim(kernel_size)
        kernel_shape = shapes.conv_kernel_shape(
            ndim, in_features, out_features, kernel_size, groups, _NAMES
        )
        shapes.check_conv_args(ndim, kernel_size, stride, padding, dilation, padding_mode)
        self.in_features, self.out_features = kernel_shape[-2] * int(groups), kernel_shape[-1]
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.padding_mode, self.impl = int(groups), padding_mode, impl
        self._init_params(kernel_shape, use_bias, dtype, param_dtype, kernel_init, bias_init, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self._operands(x)
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

    Kernel ``(*kernel_size, out_features // groups, in_features)``. ``padding_mode`` must
    be ``'zeros'``. ``__call__(x, output_size)`` takes torch's ``output_size`` (the spatial
    sizes or the whole output shape), from which ``output_padding`` follows;
    ``output_padding`` is checked when it is used, as in torch.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: shapes.IntOrTuple,
        stride: shapes.IntOrTuple = 1,
        padding: shapes.IntOrTuple = 0,
        output_padding: shapes.IntOrTuple = 0,
        dilation: shapes.IntOrTuple = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "zeros",
        *,
        impl: str = "auto",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        ops.resolve_impl(impl)
        ndim = shapes.kernel_ndim(kernel_size)
        kernel_shape = shapes.conv_transpose_kernel_shape(
            ndim, in_features, out_features, kernel_size, groups, _NAMES
        )
        shapes.check_conv_transpose_args(ndim, kernel_size, stride, padding, dilation, padding_mode)
        self.in_features, self.out_features = kernel_shape[-1], kernel_shape[-2] * int(groups)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.dilation, self.groups, self.impl = dilation, int(groups), impl
        self.padding_mode = padding_mode
        self._init_params(kernel_shape, use_bias, dtype, param_dtype, kernel_init, bias_init, rngs)

    def __call__(self, x: jax.Array, output_size: Sequence[int] | None = None) -> jax.Array:
        kernel, bias = self._operands(x)
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
