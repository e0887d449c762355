"""Convolutions with PyTorch's semantics as pure functions on channels-last arrays,
and the small layers next to them: :func:`linear` (``kernel = weight.T``),
:func:`prelu` (slopes on the last axis) and :func:`flatten` (torch's ``(C, *spatial)``
feature order). Norms are in :mod:`jaxconv.norm_ops`, pooling and up-sampling in
:mod:`jaxconv.resample_ops`.

Layouts, for ``n`` spatial dimensions and ``g`` groups:

- ``x``: ``(batch, *spatial, in_channels)``;
- conv ``kernel``: ``(*kernel_size, in_channels // g, out_channels)`` (Flax's layout;
  torch's ``weight`` ``(out, in // g, *k)`` with its axes reversed);
- transposed-conv ``kernel``: ``(*kernel_size, out_channels // g, in_channels)``
  (torch's ``weight`` ``(in, out // g, *k)`` with its axes reversed; for ``g = 1``
  the layout of ``flax.linen.ConvTranspose(transpose_kernel=True)``).

Arguments are validated by :mod:`jaxconv.shapes` and here before anything is traced:
``x``, ``kernel`` and ``bias`` must be floating-point arrays (``TypeError`` naming the
one that is not: torch computes integer convs on the CPU, but not differentiably);
every size but the batch must be >= 1 (a batch of 0 gives an empty output, as in torch).

``dtype`` is the computation dtype, as in Flax: ``None`` promotes ``x``, ``kernel`` and
``bias`` together (a bfloat16 input with float32 weights computes in float32); a dtype
casts all three to it.

``impl`` picks the implementation: ``"reference"`` is ``flax.linen.Conv`` /
``flax.linen.ConvTranspose``; ``"fast"`` is :mod:`jaxconv.fast_conv` (the same
results and parameters, written for what XLA:CPU runs fast); ``"auto"`` takes
``"fast"`` on the CPU and ``"reference"`` on other backends (not measured there yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv import fast_conv, shapes

PADDING_MODES = shapes.PADDING_MODES
IMPLS = ("auto", "reference", "fast")
_JNP_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def torch_uniform(bound: float) -> Initializer:
    """Initializer drawing from ``U(-bound, bound)`` (PyTorch's default, with
    ``bound = shapes.torch_init_bound(kernel_shape)`` for weight and bias).

    The numbers are drawn flat and reshaped: the same numbers as drawing ``shape``
    directly, but XLA:CPU compiles a 4-D draw such as ``(4, 4, 16, 10)`` in about
    7 s and the flat one in 0.3 s (jax 0.10.2, measured).
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        flat = jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound)
        return flat.reshape(shape)

    return init


def float_dtype(name: str, dtype: Any) -> jnp.dtype:
    """``dtype`` as a floating-point dtype; ``TypeError`` naming ``name`` otherwise."""
    try:
        resolved = jnp.dtype(dtype) if dtype is not None else None
    except TypeError:
        resolved = None
    if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
        raise TypeError(f"{name} must be a floating-point dtype, got {dtype!r}")
    return resolved


def float_array(name: str, value: Any) -> jax.Array:
    """``value`` as a floating-point JAX array; ``TypeError`` naming ``name`` otherwise."""
    if not isinstance(value, jax.Array):
        try:
            value = jnp.asarray(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an array, got {type(value).__name__}") from None
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {value.dtype}")
    return value


def _operands(
    x: Any, kernel: Any, bias: Any, dtype: Any
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``x``, ``kernel`` and ``bias`` as arrays of the computation dtype (Flax's rule)."""
    arrays = [float_array("x", x), float_array("kernel", kernel)]
    if bias is not None:
        arrays.append(float_array("bias", bias))
    common = jnp.result_type(*arrays) if dtype is None else float_dtype("dtype", dtype)
    x, kernel, *rest = (a.astype(common) for a in arrays)
    return x, kernel, (rest[0] if rest else None)


def input_ndim(x: Any) -> int:
    """The number of spatial dimensions (1, 2 or 3) of a ``(batch, *spatial, channels)``
    input; ``ValueError`` naming ``x`` for another rank or a zero size past the batch."""
    shape = float_array("x", x).shape
    if len(shape) not in (3, 4, 5):
        raise ValueError(
            f"x must be (batch, *spatial, channels) with 1, 2 or 3 spatial dimensions, "
            f"got shape {shape}"
        )
    if 0 in shape[1:]:
        raise ValueError(f"x must have sizes >= 1 past its batch dimension, got shape {shape}")
    return len(shape) - 2


def _check_layout(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, groups: Any, transposed: bool
) -> tuple[int, int]:
    """Checks ranks, sizes and channel counts; returns (spatial dimensions, groups)."""
    ndim = kernel.ndim - 2
    if ndim not in (1, 2, 3):
        raise ValueError(f"kernel must have 3, 4 or 5 dimensions, got shape {kernel.shape}")
    if 0 in kernel.shape:
        raise ValueError(f"kernel must have sizes >= 1, got shape {kernel.shape}")
    input_ndim(x)
    if x.ndim != ndim + 2:
        raise ValueError(
            f"x must be (batch, *spatial, channels) with {ndim} spatial dimensions to "
            f"match the kernel {kernel.shape}, got shape {x.shape}"
        )
    groups = shapes.positive_int("groups", groups)
    in_channels = kernel.shape[-1] if transposed else kernel.shape[-2] * groups
    check_channels(x.shape, in_channels, f"the kernel {kernel.shape} with groups={groups}")
    if kernel.shape[-1] % groups:  # the channels that the kernel does not divide by groups
        name = "in_channels" if transposed else "out_channels"
        raise ValueError(f"{name} ({kernel.shape[-1]}) must be divisible by groups ({groups})")
    out_channels = kernel.shape[-2] * groups if transposed else kernel.shape[-1]
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(
            f"bias must have shape ({out_channels},) (the output channels), got {bias.shape}"
        )
    return ndim, groups


def check_channels(x_shape: Sequence[int], expected: int, what: str) -> None:
    """``ValueError`` unless the last axis of ``x_shape`` has ``expected`` entries; where
    axis 1 has them instead, the message says that inputs are channels-last (a torch
    ``(batch, channels, *spatial)`` input met a jaxconv layer)."""
    if x_shape[-1] == expected:
        return
    hint = ""
    if len(x_shape) >= 3 and x_shape[1] == expected:
        hint = (
            f"; x looks channels-first (axis 1 has {expected} entries), but jaxconv takes "
            f"channels-last inputs (batch, *spatial, channels): pass jnp.moveaxis(x, 1, -1)"
        )
    raise ValueError(
        f"x has {x_shape[-1]} channels (its last axis, shape {tuple(x_shape)}), but {what} "
        f"expects {expected}{hint}"
    )


def resolve_impl(impl: str) -> str:
    """``"reference"`` or ``"fast"`` for ``impl``; ``"auto"`` is ``"fast"`` on the CPU only."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "fast" if jax.default_backend() == "cpu" else "reference"
    return impl


def conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: shapes.IntOrTuple = 1,
    padding: shapes.ConvPadding = 0,
    dilation: shapes.IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    impl: str = "auto",
    dtype: Any = None,
) -> jax.Array:
    """``torch.nn.functional.conv{1,2,3}d`` (plus ``padding_mode``), computed in ``dtype``.

    On ``flax.linen.Conv`` (``impl="reference"``) or :func:`jaxconv.fast_conv.conv`.
    """
    impl = resolve_impl(impl)
    x, kernel, bias = _operands(x, kernel, bias, dtype)
    ndim, groups = _check_layout(x, kernel, bias, groups, transposed=False)
    kernel_size = kernel.shape[:-2]
    shapes.check_conv_args(ndim, kernel_size, stride, padding, dilation, padding_mode)
    spatial = x.shape[1:-1]
    shapes.conv_output_shape(spatial, kernel_size, stride, padding, dilation)
    pads = shapes.conv_padding(ndim, kernel_size, stride, padding, dilation)
    if padding_mode != "zeros":
        _check_mode_padding(padding_mode, spatial, pads)
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=_JNP_PAD_MODES[padding_mode])
        pads = ((0, 0),) * ndim
    strides = shapes.per_dim("stride", stride, ndim)
    dilations = shapes.per_dim("dilation", dilation, ndim)
    if impl == "fast":
        y = fast_conv.conv(x, kernel, strides=strides, pads=pads, dilation=dilations, groups=groups)
        return _add_bias(y, bias)
    layer = nn.Conv(
        features=kernel.shape[-1],
        kernel_size=kernel_size,
        strides=strides,
        padding=pads,
        kernel_dilation=dilations,
        feature_group_count=groups,
        use_bias=False,
        parent=None,
    )
    return _add_bias(layer.apply({"params": {"kernel": kernel}}, x), bias)


def _check_mode_padding(mode: str, spatial: tuple[int, ...], pads: shapes.PaddingPairs) -> None:
    """PyTorch's limits: reflect pads less than the size, circular at most the size."""
    for n, (lo, hi) in zip(spatial, pads):
        if (mode == "reflect" and max(lo, hi) >= n) or (mode == "circular" and max(lo, hi) > n):
            limit = "smaller than" if mode == "reflect" else "at most"
            raise ValueError(
                f"padding_mode={mode!r} needs padding {limit} the input size, "
                f"got padding {pads} for spatial shape {spatial}"
            )


def _add_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``y + bias``, added in float32 at least: then the bias gradient, a sum over the
    batch and every pixel, is summed in float32 as torch sums it (a bfloat16 sum lost up
    to ~10 % of the output scale, measured against torch)."""
    if bias is None:
        return y
    wide = jnp.promote_types(y.dtype, jnp.float32)
    return (y.astype(wide) + bias.astype(wide)).astype(y.dtype)


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: shapes.IntOrTuple = 1,
    padding: shapes.IntOrTuple = 0,
    output_padding: shapes.IntOrTuple = 0,
    dilation: shapes.IntOrTuple = 1,
    groups: int = 1,
    impl: str = "auto",
    output_size: Sequence[int] | None = None,
    dtype: Any = None,
) -> jax.Array:
    """``torch.nn.functional.conv_transpose{1,2,3}d``, computed in ``dtype``.

    ``output_size`` (spatial sizes, or the whole ``(batch, *spatial, channels)``) picks
    the ``output_padding`` as ``torch.nn.ConvTransposeNd.forward(x, output_size)`` does
    (:func:`jaxconv.shapes.output_padding_for_size`); give it or ``output_padding``, not
    both.

    ``impl="reference"`` is ``flax.linen.ConvTranspose``. Flax has no groups: each
    group is its own ``ConvTranspose`` on its slice of the channels, and the outputs
    are concatenated, as PyTorch defines groups. ``"fast"`` is
    :func:`jaxconv.fast_conv.conv_transpose`, cropping its full output by
    ``(padding, padding - output_padding)``.
    """
    impl = resolve_impl(impl)
    x, kernel, bias = _operands(x, kernel, bias, dtype)
    ndim, groups = _check_layout(x, kernel, bias, groups, transposed=True)
    kernel_size = kernel.shape[:-2]
    if output_size is not None:
        if any(shapes.per_dim("output_padding", output_padding, ndim)):
            raise ValueError(
                f"give output_padding or output_size, not both (got output_padding="
                f"{output_padding!r}, output_size={output_size!r})"
            )
        output_padding = shapes.output_padding_for_size(
            x.shape[1:-1], output_size, kernel_size, stride, padding, dilation
        )
    shapes.conv_transpose_output_shape(
        x.shape[1:-1], kernel_size, stride, padding, output_padding, dilation
    )
    if impl == "fast":
        pads = shapes.per_dim("padding", padding, ndim)
        out_pads = shapes.per_dim("output_padding", output_padding, ndim)
        y = fast_conv.conv_transpose(
            x,
            kernel,
            strides=shapes.per_dim("stride", stride, ndim),
            pads=tuple((p, p - op) for p, op in zip(pads, out_pads)),
            dilation=shapes.per_dim("dilation", dilation, ndim),
            groups=groups,
        )
        return _add_bias(y, bias)
    layer = nn.ConvTranspose(
        features=kernel.shape[-2],
        kernel_size=kernel_size,
        strides=shapes.per_dim("stride", stride, ndim),
        padding=shapes.conv_transpose_padding(
            kernel_size, stride, padding, output_padding, dilation, ndim=ndim
        ),
        kernel_dilation=shapes.per_dim("dilation", dilation, ndim),
        use_bias=False,
        transpose_kernel=True,
        parent=None,
    )
    x_groups = jnp.split(x, groups, axis=-1)
    kernel_groups = jnp.split(kernel, groups, axis=-1)
    y = jnp.concatenate(
        [layer.apply({"params": {"kernel": k}}, xg) for xg, k in zip(x_groups, kernel_groups)],
        axis=-1,
    )
    return _add_bias(y, bias)


def linear(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, dtype: Any = None
) -> jax.Array:
    """``torch.nn.functional.linear`` with ``kernel = weight.T``: ``y = x @ kernel + bias``.

    ``x`` is ``(*, in_features)`` (at least 1-D), ``kernel`` ``(in_features,
    out_features)``, ``bias`` ``(out_features,)``; computed in ``dtype`` (``None``:
    their promotion), the bias added in float32 at least.
    """
    x, kernel, bias = _operands(x, kernel, bias, dtype)
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be (in_features, out_features), got shape {kernel.shape}")
    if x.ndim < 1:
        raise ValueError("x must have at least 1 dimension (its last is in_features), got a scalar")
    if x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"x has {x.shape[-1]} features (its last axis, shape {x.shape}), but the kernel "
            f"{kernel.shape} expects {kernel.shape[0]}"
        )
    if bias is not None and bias.shape != (kernel.shape[1],):
        raise ValueError(f"bias must have shape ({kernel.shape[1]},), got {bias.shape}")
    return _add_bias(jnp.matmul(x, kernel), bias)


def prelu(x: jax.Array, weight: jax.Array, *, dtype: Any = None) -> jax.Array:
    """``torch.nn.functional.prelu`` on channels-last ``x``: ``x if x > 0 else weight * x``.

    ``weight`` is ``(1,)`` (one slope for all) or ``(channels,)``, one slope per entry of
    ``x``'s last axis (torch's channel axis 1, channels-last).
    """
    x, weight, _ = _operands(x, weight, None, dtype)
    if weight.ndim != 1:
        raise ValueError(f"weight must be 1-D (num_parameters,), got shape {weight.shape}")
    if weight.shape[0] != 1:
        if x.ndim == 0:
            raise ValueError(
                f"x must have a channel axis for {weight.shape[0]} slopes, got a scalar"
            )
        check_channels(x.shape, weight.shape[0], f"weight {weight.shape}")
    return jnp.where(x > 0, x, weight * x)


def flatten(x: jax.Array, start_dim: int = 1) -> jax.Array:
    """``torch.flatten(x_nchw, start_dim)`` for a channels-last ``x``, in torch's order.

    ``x`` is ``(batch, *spatial, channels)``; ``start_dim`` indexes torch's
    ``(batch, channels, *spatial)`` dimensions (negative counts from the end). Where
    the channel axis is flattened (``start_dim <= 1``) the features come in torch's
    ``(channels, *spatial)`` order, so a ``Linear`` after it takes torch's weight as it
    is; otherwise the result stays channels-last: ``(batch, ..., flat, channels)``.
    """
    x = jnp.asarray(x)
    ndim = x.ndim
    start = shapes.as_int("start_dim", start_dim)
    if not -ndim <= start < ndim:
        raise ValueError(
            f"start_dim must be in [{-ndim}, {ndim - 1}] for an input of {ndim} dimensions, "
            f"got {start_dim!r}"
        )
    start %= ndim
    torch_order = jnp.moveaxis(x, -1, 1) if ndim >= 3 else x
    flat = torch_order.reshape(*torch_order.shape[:start], math.prod(torch_order.shape[start:]))
    return jnp.moveaxis(flat, 1, -1) if start >= 2 else flat
