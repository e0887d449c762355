"""Flax NNX layers with PyTorch's semantics: convolutions, norms, pooling, up-sampling.

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

The layers a conv net has around its convs take torch's constructors too, with the
computation in :mod:`jaxconv.ops`, :mod:`jaxconv.norm_ops` and
:mod:`jaxconv.resample_ops`: :class:`BatchNorm`, :class:`InstanceNorm`,
:class:`GroupNorm`, :class:`LayerNorm`, :class:`Linear`, :class:`PReLU`,
:class:`MaxPool`, :class:`AvgPool`, :class:`Upsample`, :class:`PixelShuffle`,
:class:`PixelUnshuffle` and :class:`Flatten`. One class serves torch's 1-, 2- and 3-D
variants (``BatchNorm2d`` is ``BatchNorm``); pooling's ``kernel_size`` fixes the
spatial dimensions as ``Conv``'s does. They start in training mode, as torch's
modules do; ``model.eval()`` / ``model.train()`` switch the norms with running
statistics through their ``use_running_average`` attribute (NNX's convention), and
the running statistics are ``nnx.BatchStat`` variables updated in place. Arguments
are checked where torch checks them, at construction when no input is needed.

torch's activations are JAX functions (``jax.nn.relu``, ``jnp.tanh``,
``jax.nn.sigmoid``, ``jax.nn.silu``, ``jax.nn.elu``), with two notes:
``torch.nn.LeakyReLU()``'s slope 0.01 is ``jax.nn.leaky_relu``'s default, but at
exactly 0 JAX's gradient is 1 and torch's the slope; ``torch.nn.GELU()`` is exact,
``jax.nn.gelu`` approximates by default: write ``jax.nn.gelu(x, approximate=False)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import norm_ops, ops, resample_ops, shapes
from jaxconv.ops import Initializer, torch_uniform

_NAMES = ("in_features", "out_features")


class _TorchConvBase(nnx.Module):
    """The constructor of :class:`Conv` and :class:`ConvTranspose` (torch's arguments,
    checked, kept, and the parameters made), and the input-rank check of both."""

    _transposed = False  # ConvTranspose: kernel (*kernel_size, out // groups, in)

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
        if self._transposed:
            kernel_shape = shapes.conv_transpose_kernel_shape(
                ndim, in_features, out_features, kernel_size, groups, _NAMES
            )
            shapes.check_conv_transpose_args(
                ndim, kernel_size, stride, padding, dilation, padding_mode
            )
            self.in_features, self.out_features = kernel_shape[-1], kernel_shape[-2] * int(groups)
        else:
            kernel_shape = shapes.conv_kernel_shape(
                ndim, in_features, out_features, kernel_size, groups, _NAMES
            )
            shapes.check_conv_args(ndim, kernel_size, stride, padding, dilation, padding_mode)
            self.in_features, self.out_features = kernel_shape[-2] * int(groups), kernel_shape[-1]
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.padding_mode, self.impl = int(groups), padding_mode, impl
        self.dtype, self.param_dtype = _dtypes(dtype, param_dtype)
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
        _check_rank(x, self.kernel_size)
        return self.kernel[...], None if self.bias is None else self.bias[...]


def _check_rank(x: jax.Array, kernel_size: tuple[int, ...]) -> None:
    """``x`` must have as many spatial dimensions as the layer's ``kernel_size``."""
    ndim = len(kernel_size)
    if ops.input_ndim(x) != ndim:
        raise ValueError(
            f"x must be (batch, *spatial, channels) with {ndim} spatial dimensions, as "
            f"kernel_size={kernel_size} has (an int kernel_size means 2-D), got shape "
            f"{jnp.shape(x)}"
        )


class Conv(_TorchConvBase):
    """``torch.nn.ConvNd``: out size ``floor((n + 2p - d(k-1) - 1)/s) + 1`` per dimension.

    ``padding`` is an int, a per-dimension tuple, ``'same'`` or ``'valid'``;
    ``padding_mode`` one of ``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'``.
    Kernel ``(*kernel_size, in_features // groups, out_features)``.
    """

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

    _transposed = True

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
        self.output_padding = output_padding
        super().__init__(
            in_features,
            out_features,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            impl=impl,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            rngs=rngs,
        )

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


def _dtypes(dtype: Any, param_dtype: Any) -> tuple[Any, Any]:
    """The computation dtype (``None`` stays ``None``: promotion) and the parameter dtype."""
    return (
        None if dtype is None else ops.float_dtype("dtype", dtype),
        ops.float_dtype("param_dtype", param_dtype),
    )


class _RunningNorm(nnx.Module):
    """Parameters and running statistics of :class:`BatchNorm` and :class:`InstanceNorm`:
    ``scale`` / ``bias`` (``nnx.Param``, ``(num_features,)``) when ``affine``;
    ``running_mean`` / ``running_var`` (``nnx.BatchStat``, float32) and
    ``num_batches_tracked`` (``nnx.BatchStat``, int32 scalar) when
    ``track_running_stats``; else None."""

    def _init_state(
        self,
        num_features: Any,
        eps: Any,
        momentum: Any,
        affine: Any,
        track_running_stats: Any,
        use_running_average: bool,
        dtype: Any,
        param_dtype: Any,
    ) -> None:
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        # torch reads num_features only to size the parameters and statistics
        if self.affine or self.track_running_stats:
            num_features = shapes.nonnegative_int("num_features", num_features)
        self.num_features = num_features
        self.eps = shapes.as_float("eps", eps)
        self.momentum = None if momentum is None else shapes.as_float("momentum", momentum)
        self.use_running_average = bool(use_running_average)
        self.dtype, self.param_dtype = _dtypes(dtype, param_dtype)
        shape = (num_features,)
        self.scale = nnx.Param(jnp.ones(shape, self.param_dtype)) if self.affine else None
        self.bias = nnx.Param(jnp.zeros(shape, self.param_dtype)) if self.affine else None
        track = self.track_running_stats
        self.running_mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32)) if track else None
        self.running_var = nnx.BatchStat(jnp.ones(shape, jnp.float32)) if track else None
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32)) if track else None

    def _arrays(self) -> tuple[jax.Array | None, ...]:
        """running_mean, running_var, scale, bias (None where absent), as norm_ops takes them."""
        return tuple(
            None if v is None else v[...]
            for v in (self.running_mean, self.running_var, self.scale, self.bias)
        )

    def _store(self, running_mean: jax.Array, running_var: jax.Array) -> None:
        self.running_mean[...] = running_mean
        self.running_var[...] = running_var


class BatchNorm(_RunningNorm):
    """``torch.nn.BatchNorm{1,2,3}d`` on ``(batch, channels)`` or ``(batch, *spatial,
    channels)`` with 1-3 spatial dimensions.

    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` per channel. In training
    (``use_running_average=False``, the default, as a torch module starts) ``mean`` and
    ``var`` are the batch's (biased variance), and with ``track_running_stats`` the
    running statistics move: ``running = (1 - momentum) * running + momentum * batch``
    with the batch's *unbiased* variance, ``num_batches_tracked`` counts the steps, and
    ``momentum=None`` is the cumulative average (``momentum = 1 / num_batches_tracked``).
    In evaluation (``model.eval()``) the running statistics normalise; without
    ``track_running_stats`` the batch's always do, as in torch.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        use_running_average: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ) -> None:
        self._init_state(
            num_features, eps, momentum, affine, track_running_stats, use_running_average,
            dtype, param_dtype,
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        batch_stats = not self.use_running_average or not self.track_running_stats
        update = batch_stats and self.track_running_stats
        momentum: Any = 0.0 if self.momentum is None else self.momentum
        if update:
            count = self.num_batches_tracked[...] + 1
            if self.momentum is None:
                momentum = 1.0 / count
        y, mean, var = norm_ops.batch_norm(
            x, *self._arrays(), training=batch_stats, momentum=momentum, eps=self.eps,
            dtype=self.dtype,
        )  # fmt: skip
        if update:
            self._store(mean, var)
            self.num_batches_tracked[...] = count
        return y


class InstanceNorm(_RunningNorm):
    """``torch.nn.InstanceNorm{1,2,3}d`` on ``(batch, *spatial, channels)``.

    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` with each example's and
    channel's statistics over its spatial positions. With ``track_running_stats`` the
    running statistics move in training by the batch's average of those (unbiased
    variance) and normalise in evaluation; ``momentum=None`` leaves them as they are
    (torch passes 0), and ``num_batches_tracked`` stays 0, as in torch. torch's
    defaults: no ``affine`` parameters, no running statistics. As in torch, an input
    whose channels differ from ``num_features`` is an error with ``affine`` or running
    statistics and a warning without.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        use_running_average: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ) -> None:
        self._init_state(
            num_features, eps, momentum, affine, track_running_stats, use_running_average,
            dtype, param_dtype,
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        channels = jnp.shape(x)[-1] if jnp.ndim(x) else None
        if not (self.affine or self.track_running_stats) and channels != self.num_features:
            warnings.warn(
                f"x has {channels} channels (its last axis), not num_features="
                f"{self.num_features!r}, which is unused without affine or running statistics",
                stacklevel=2,
            )
        input_stats = not self.use_running_average or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        y, mean, var = norm_ops.instance_norm(
            x, *self._arrays(), use_input_stats=input_stats, momentum=momentum, eps=self.eps,
            dtype=self.dtype,
        )  # fmt: skip
        if input_stats and self.track_running_stats:
            self._store(mean, var)
        return y


class GroupNorm(nnx.Module):
    """``torch.nn.GroupNorm`` on ``(batch, *spatial, channels)``: the channels in
    ``num_groups`` consecutive groups, each example and group normalised over its spatial
    positions and channels, then ``* scale + bias`` per channel (``affine``)."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ) -> None:
        self.num_groups = shapes.positive_int("num_groups", num_groups)
        self.num_channels = shapes.nonnegative_int("num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"num_channels ({self.num_channels}) must be divisible by num_groups "
                f"({self.num_groups})"
            )
        self.eps, self.affine = shapes.as_float("eps", eps), bool(affine)
        self.dtype, self.param_dtype = _dtypes(dtype, param_dtype)
        shape = (self.num_channels,)
        self.scale = nnx.Param(jnp.ones(shape, self.param_dtype)) if self.affine else None
        self.bias = nnx.Param(jnp.zeros(shape, self.param_dtype)) if self.affine else None

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = (None if v is None else v[...] for v in (self.scale, self.bias))
        return norm_ops.group_norm(
            x, self.num_groups, scale, bias, eps=self.eps, dtype=self.dtype
        )


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm``: normalises over the last ``len(normalized_shape)`` axes of
    the input, as torch does on the same array; ``scale`` (``elementwise_affine``) and
    ``bias`` (and ``bias``) have shape ``normalized_shape``.

    On a channels-last ``(batch, *spatial, channels)`` input, ``LayerNorm(channels)``
    normalises each position over its channels; torch's ``LayerNorm`` on ``(N, L, C)``
    or ``(N, C)`` (transformer blocks, heads) is this layer on the same array.
    """

    def __init__(
        self,
        normalized_shape: shapes.IntOrTuple,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ) -> None:
        self.normalized_shape = norm_ops.normalized_shape_tuple(normalized_shape)
        self.eps = shapes.as_float("eps", eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.use_bias = self.elementwise_affine and bool(bias)
        self.dtype, self.param_dtype = _dtypes(dtype, param_dtype)
        shape = self.normalized_shape
        self.scale = (
            nnx.Param(jnp.ones(shape, self.param_dtype)) if self.elementwise_affine else None
        )
        self.bias = nnx.Param(jnp.zeros(shape, self.param_dtype)) if self.use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = (None if v is None else v[...] for v in (self.scale, self.bias))
        return norm_ops.layer_norm(
            x, self.normalized_shape, scale, bias, eps=self.eps, dtype=self.dtype
        )


class Linear(nnx.Module):
    """``torch.nn.Linear``: ``y = x @ kernel + bias`` on ``(*, in_features)``.

    ``kernel`` is ``(in_features, out_features)`` (torch's ``weight`` transposed),
    ``bias`` ``(out_features,)``; both drawn from torch's ``U(-1/sqrt(in_features),
    1/sqrt(in_features))`` (its ``kaiming_uniform(a=sqrt(5))``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.in_features = shapes.nonnegative_int("in_features", in_features)
        self.out_features = shapes.nonnegative_int("out_features", out_features)
        self.use_bias = bool(bias)
        self.dtype, self.param_dtype = _dtypes(dtype, param_dtype)
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        shape = (self.in_features, self.out_features)
        self.kernel = nnx.Param(
            (kernel_init or torch_uniform(bound))(rngs.params(), shape, self.param_dtype)
        )
        init = bias_init or torch_uniform(bound)
        self.bias = (
            nnx.Param(init(rngs.params(), (self.out_features,), self.param_dtype))
            if self.use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = None if self.bias is None else self.bias[...]
        return ops.linear(x, self.kernel[...], bias, dtype=self.dtype)


class PReLU(nnx.Module):
    """``torch.nn.PReLU``: ``x if x > 0 else weight * x``, ``weight``
    ``(num_parameters,)`` filled with ``init``: one slope, or one per channel (the
    input's last axis, channels-last)."""

    def __init__(
        self,
        num_parameters: int = 1,
        init: float = 0.25,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ) -> None:
        self.num_parameters = shapes.nonnegative_int("num_parameters", num_parameters)
        self.dtype, self.param_dtype = _dtypes(dtype, param_dtype)
        init = shapes.as_float("init", init)
        self.weight = nnx.Param(jnp.full((self.num_parameters,), init, self.param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.prelu(x, self.weight[...], dtype=self.dtype)


class Flatten(nnx.Module):
    """``torch.nn.Flatten(start_dim)`` for channels-last inputs: :func:`jaxconv.ops.flatten`
    (features in torch's ``(channels, *spatial)`` order)."""

    def __init__(self, start_dim: int = 1) -> None:
        self.start_dim = shapes.as_int("start_dim", start_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.flatten(x, self.start_dim)


class MaxPool(nnx.Module):
    """``torch.nn.MaxPool{1,2,3}d``: :func:`jaxconv.resample_ops.max_pool`, out size
    ``floor((n + 2p - d(k-1) - 1)/s) + 1`` (``ceil_mode``: rounded up, the last window
    starting inside the input or its left padding). ``kernel_size`` fixes the spatial
    dimensions as :class:`Conv`'s does (an int means 2-D)."""

    def __init__(
        self,
        kernel_size: shapes.IntOrTuple,
        stride: shapes.IntOrTuple | None = None,
        padding: shapes.IntOrTuple = 0,
        dilation: shapes.IntOrTuple = 1,
        ceil_mode: bool = False,
    ) -> None:
        ndim = shapes.kernel_ndim(kernel_size)
        shapes.check_pool_args(ndim, kernel_size, stride, padding, dilation, ceil_mode)
        self.kernel_size = shapes.per_dim("kernel_size", kernel_size, ndim)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.ceil_mode = ceil_mode

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_rank(x, self.kernel_size)
        return resample_ops.max_pool(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )


class AvgPool(nnx.Module):
    """``torch.nn.AvgPool{1,2,3}d``: :func:`jaxconv.resample_ops.avg_pool` (each window's
    sum over ``divisor_override``, or over the window's size clipped to the padded input
    with ``count_include_pad``, else to the input). ``kernel_size`` fixes the spatial
    dimensions as :class:`Conv`'s does (an int means 2-D)."""

    def __init__(
        self,
        kernel_size: shapes.IntOrTuple,
        stride: shapes.IntOrTuple | None = None,
        padding: shapes.IntOrTuple = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        ndim = shapes.kernel_ndim(kernel_size)
        shapes.check_pool_args(ndim, kernel_size, stride, padding, 1, ceil_mode)
        shapes.as_bool("count_include_pad", count_include_pad)
        resample_ops.check_divisor_override(divisor_override)
        self.kernel_size = shapes.per_dim("kernel_size", kernel_size, ndim)
        self.stride, self.padding, self.ceil_mode = stride, padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_rank(x, self.kernel_size)
        return resample_ops.avg_pool(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
            self.count_include_pad, self.divisor_override,
        )  # fmt: skip


class Upsample(nnx.Module):
    """``torch.nn.Upsample``: :func:`jaxconv.resample_ops.interpolate` on inputs of any
    of 1-3 spatial dimensions (``mode`` ``nearest``, ``linear``, ``bilinear`` or
    ``trilinear``; the linear modes need 1, 2 and 3).

    As torch's module, it keeps ``scale_factor`` as a float (or a tuple of floats) and
    reads a zero one as not given. The arguments that need no input are checked here,
    the rest at the call, where torch checks them all.
    """

    def __init__(
        self,
        size: shapes.IntOrTuple | None = None,
        scale_factor: float | tuple[float, ...] | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        recompute_scale_factor: bool | None = None,
    ) -> None:
        if isinstance(scale_factor, tuple):
            scale_factor = tuple(shapes.as_float("scale_factor", f) for f in scale_factor)
        elif scale_factor is not None:
            scale_factor = shapes.as_float("scale_factor", scale_factor) or None
        resample_ops.check_mode(mode, align_corners)
        if (size is None) == (scale_factor is None):
            raise ValueError("give one of size and scale_factor (a zero scale_factor is none)")
        if size is not None and recompute_scale_factor:
            raise ValueError("recompute_scale_factor is not meaningful with an explicit size")
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def __call__(self, x: jax.Array) -> jax.Array:
        return resample_ops.interpolate(
            x, self.size, self.scale_factor, self.mode, self.align_corners,
            self.recompute_scale_factor,
        )  # fmt: skip


class PixelShuffle(nnx.Module):
    """``torch.nn.PixelShuffle``: ``(*, H, W, C r^2)`` to ``(*, H r, W r, C)`` in torch's
    ``(C, r, r)`` channel order (:func:`jaxconv.resample_ops.pixel_shuffle`)."""

    def __init__(self, upscale_factor: int) -> None:
        self.upscale_factor = shapes.positive_int("upscale_factor", upscale_factor)

    def __call__(self, x: jax.Array) -> jax.Array:
        return resample_ops.pixel_shuffle(x, self.upscale_factor)


class PixelUnshuffle(nnx.Module):
    """``torch.nn.PixelUnshuffle``: ``(*, H r, W r, C)`` to ``(*, H, W, C r^2)``, the
    inverse of :class:`PixelShuffle`."""

    def __init__(self, downscale_factor: int) -> None:
        self.downscale_factor = shapes.positive_int("downscale_factor", downscale_factor)

    def __call__(self, x: jax.Array) -> jax.Array:
        return resample_ops.pixel_unshuffle(x, self.downscale_factor)
