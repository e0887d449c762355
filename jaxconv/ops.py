"""Convolutions with PyTorch's semantics as pure functions on channels-last arrays.

Layouts, for ``n`` spatial dimensions and ``g`` groups:

- ``x``: ``(batch, *spatial, in_channels)``;
- conv ``kernel``: ``(*kernel_size, in_channels // g, out_channels)`` (Flax's layout;
  torch's ``weight`` ``(out, in // g, *k)`` with its axes reversed);
- transposed-conv ``kernel``: ``(*kernel_size, out_channels // g, in_channels)``
  (torch's ``weight`` ``(in, out // g, *k)`` with its axes reversed; for ``g = 1``
  the layout of ``flax.linen.ConvTranspose(transpose_kernel=True)``).

Arguments are validated by :mod:`jaxconv.shapes` before anything is traced.

``impl`` picks the implementation: ``"reference"`` is ``flax.linen.Conv`` /
``flax.linen.ConvTranspose``; ``"fast"`` is :mod:`jaxconv.fast_conv` (the same
results and parameters, written for what XLA:CPU runs fast); ``"auto"`` takes
``"fast"`` on the CPU and ``"reference"`` on other backends (not measured there yet).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv import fast_conv, shapes

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
IMPLS = ("auto", "reference", "fast")
_JNP_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _check_layout(x: jax.Array, kernel: jax.Array, groups: int, in_axis: int) -> int:
    """Checks ranks and channel counts; returns the number of spatial dimensions."""
    ndim = kernel.ndim - 2
    if ndim not in (1, 2, 3):
        raise ValueError(f"kernel must have 3, 4 or 5 dimensions, got shape {kernel.shape}")
    if x.ndim != ndim + 2:
        raise ValueError(
            f"x must be (batch, *spatial, channels) with {ndim} spatial dimensions to "
            f"match the kernel {kernel.shape}, got shape {x.shape}"
        )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    channels = x.shape[-1]
    expected = kernel.shape[in_axis] * (groups if in_axis == -2 else 1)
    if channels != expected:
        raise ValueError(
            f"x has {channels} channels, but the kernel {kernel.shape} with groups={groups} "
            f"expects {expected}"
        )
    return ndim


def _check_groups(name: str, channels: int, groups: int) -> None:
    if channels % groups:
        raise ValueError(f"{name} ({channels}) must be divisible by groups ({groups})")


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
) -> jax.Array:
    """``torch.nn.functional.conv{1,2,3}d`` (plus ``padding_mode``).

    On ``flax.linen.Conv`` (``impl="reference"``) or :func:`jaxconv.fast_conv.conv`.
    """
    ndim = _check_layout(x, kernel, groups, in_axis=-2)
    _check_groups("out_channels", kernel.shape[-1], groups)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    impl = resolve_impl(impl)
    kernel_size = kernel.shape[:-2]
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
        x, kernel = _promote(x, kernel, bias)
        y = fast_conv.conv(x, kernel, strides=strides, pads=pads, dilation=dilations, groups=groups)
        return y if bias is None else y + bias
    layer = nn.Conv(
        features=kernel.shape[-1],
        kernel_size=kernel_size,
        strides=strides,
        padding=pads,
        kernel_dilation=dilations,
        feature_group_count=groups,
        use_bias=bias is not None,
        parent=None,
    )
    return layer.apply({"params": _params(kernel, bias)}, x)


def _check_mode_padding(mode: str, spatial: tuple[int, ...], pads: shapes.PaddingPairs) -> None:
    """PyTorch's limits: reflect pads less than the size, circular at most the size."""
    for n, (lo, hi) in zip(spatial, pads):
        if (mode == "reflect" and max(lo, hi) >= n) or (mode == "circular" and max(lo, hi) > n):
            limit = "smaller than" if mode == "reflect" else "at most"
            raise ValueError(
                f"padding_mode={mode!r} needs padding {limit} the input size, "
                f"got padding {pads} for spatial shape {spatial}"
            )


def _promote(x: jax.Array, kernel: jax.Array, bias: jax.Array | None):
    """``x`` and ``kernel`` in the dtype that Flax computes in (``dtype=None``): the
    promotion of input, kernel and bias (bfloat16 input, float32 weights: float32)."""
    dtype = jnp.result_type(x, kernel, *(() if bias is None else (bias,)))
    return x.astype(dtype), kernel.astype(dtype)


def _params(kernel: jax.Array, bias: jax.Array | None) -> dict[str, jax.Array]:
    return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}


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
) -> jax.Array:
    """``torch.nn.functional.conv_transpose{1,2,3}d``.

    ``impl="reference"`` is ``flax.linen.ConvTranspose``. Flax has no groups: each
    group is its own ``ConvTranspose`` on its slice of the channels, and the outputs
    are concatenated, as PyTorch defines groups. ``"fast"`` is
    :func:`jaxconv.fast_conv.conv_transpose`, cropping its full output by
    ``(padding, padding - output_padding)``.
    """
    ndim = _check_layout(x, kernel, groups, in_axis=-1)
    _check_groups("in_channels", kernel.shape[-1], groups)
    impl = resolve_impl(impl)
    kernel_size = kernel.shape[:-2]
    shapes.conv_transpose_output_shape(
        x.shape[1:-1], kernel_size, stride, padding, output_padding, dilation
    )
    if impl == "fast":
        pads = shapes.per_dim("padding", padding, ndim)
        out_pads = shapes.per_dim("output_padding", output_padding, ndim)
        x, kernel = _promote(x, kernel, bias)
        y = fast_conv.conv_transpose(
            x,
            kernel,
            strides=shapes.per_dim("stride", stride, ndim),
            pads=tuple((p, p - op) for p, op in zip(pads, out_pads)),
            dilation=shapes.per_dim("dilation", dilation, ndim),
            groups=groups,
        )
        return y if bias is None else y + bias
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
    return y if bias is None else y + bias
