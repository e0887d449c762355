"""PyTorch's convolution arithmetic, in pure Python (no JAX import).

For one spatial dimension of size ``n`` with kernel ``k``, stride ``s``,
padding ``p``, dilation ``d`` and output padding ``op``::

    conv:            out = floor((n + 2p - d(k-1) - 1) / s) + 1
    transposed conv: out = (n - 1)s - 2p + d(k-1) + op + 1

``input_shape`` is the spatial sizes only (any number of dimensions, each >= 1).
Every other argument is an int (the same for all dimensions) or a tuple with one
entry per dimension (a 1-tuple is broadcast, as PyTorch does); numpy integers count
as ints, bools do not. An argument of the wrong type raises ``TypeError``; the
values that PyTorch rejects raise ``ValueError``, and nothing it accepts is
rejected. Every message names the argument.

Pooling and interpolation have their torch arithmetic here too
(:func:`pool_output_shape`, :func:`interpolate_output_shape`).

The layer checks shared by :mod:`jaxconv.nn` and :mod:`jaxconv.nnx` are here too:
kernel shapes from channel counts (:func:`conv_kernel_shape`,
:func:`conv_transpose_kernel_shape`), the arguments a layer can check before it
sees an input (:func:`check_conv_args`, :func:`check_conv_transpose_args`), and
torch's ``output_size`` rule (:func:`output_padding_for_size`).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Union

IntOrTuple = Union[int, Sequence[int]]
ConvPadding = Union[int, Sequence[int], str]
PaddingPairs = tuple[tuple[int, int], ...]

PADDING_STRINGS = ("same", "valid")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def as_int(name: str, value: object) -> int:
    """``value`` as a Python int: an int or a numpy integer; ``TypeError`` for anything
    else, bools included."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")


def positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1 (``TypeError`` for a non-int, ``ValueError`` below 1)."""
    n = as_int(name, value)
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def nonnegative_int(name: str, value: object) -> int:
    """``value`` as an int >= 0 (``TypeError`` for a non-int, ``ValueError`` below 0)."""
    n = as_int(name, value)
    if n < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return n


def as_bool(name: str, value: object) -> bool:
    """``value`` as a bool: a Python or numpy bool; ``TypeError`` for anything else (torch's
    pooling refuses ``ceil_mode=1``)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")


def as_float(name: str, value: object) -> float:
    """``value`` (a real number: int, float or numpy scalar) as a float; ``TypeError``
    otherwise."""
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")


def per_dim(name: str, value: IntOrTuple, ndim: int) -> tuple[int, ...]:
    """``value`` (an int, an ``ndim``-tuple or a 1-tuple) as one int per dimension."""
    is_tuple = isinstance(value, Sequence) and not isinstance(value, str)
    values = tuple(value) if is_tuple else (value,)
    if len(values) == 1:
        values *= ndim
    if len(values) != ndim:
        raise ValueError(
            f"{name} must be an int or a tuple of {ndim} ints (one per spatial "
            f"dimension), got {value!r}"
        )
    try:
        return tuple(as_int(name, v) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}") from None


def _at_least(name: str, values: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {values}")
    return values


def _ints(name: str, value: object) -> tuple[int, ...]:
    """``value`` as a tuple of ints; ``TypeError`` naming ``name`` for anything else."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        try:
            return tuple(as_int(name, n) for n in value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be a tuple of ints, got {value!r}")


def _spatial(input_shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial sizes, each >= 1 (PyTorch refuses a zero-size spatial dimension)."""
    shape = _ints("input_shape", input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be one or more spatial sizes >= 1, got {input_shape!r}")
    return shape


def _conv_args(
    ndim: int, kernel_size: IntOrTuple, stride: IntOrTuple, dilation: IntOrTuple
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    return (
        _at_least("kernel_size", per_dim("kernel_size", kernel_size, ndim), 1),
        _at_least("stride", per_dim("stride", stride, ndim), 1),
        _at_least("dilation", per_dim("dilation", dilation, ndim), 1),
    )


def conv_padding(
    ndim: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: ConvPadding = 0,
    dilation: IntOrTuple = 1,
) -> PaddingPairs:
    """PyTorch conv ``padding`` (int, tuple, ``'same'`` or ``'valid'``) as ``(lo, hi)`` pairs.

    ``'same'`` pads ``d(k-1)`` in total, the odd one on the high side, and needs stride 1.
    """
    kernel, strides, dilations = _conv_args(ndim, kernel_size, stride, dilation)
    if isinstance(padding, str):
        if padding not in PADDING_STRINGS:
            raise ValueError(
                f"padding must be an int, a tuple of ints, 'same' or 'valid', got {padding!r}"
            )
        if padding == "valid":
            return ((0, 0),) * ndim
        if any(s != 1 for s in strides):
            raise ValueError(
                f"padding='same' is not supported for strided convolutions (stride={strides})"
            )
        totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
        return tuple((t // 2, t - t // 2) for t in totals)
    pads = _at_least("padding", per_dim("padding", padding, ndim), 0)
    return tuple((p, p) for p in pads)


def conv_output_shape(
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: ConvPadding = 0,
    dilation: IntOrTuple = 1,
) -> tuple[int, ...]:
    """Spatial output size of ``torch.nn.ConvNd``: ``floor((n + 2p - d(k-1) - 1)/s) + 1``.

    Raises ``ValueError`` where the dilated kernel is larger than the padded input.
    """
    shape = _spatial(input_shape)
    ndim = len(shape)
    pads = conv_padding(ndim, kernel_size, stride, padding, dilation)
    kernel, strides, dilations = _conv_args(ndim, kernel_size, stride, dilation)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(shape, pads))
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    if any(n < e for n, e in zip(padded, extent)):
        raise ValueError(
            f"kernel_size: the dilated kernel {extent} is larger than the padded input "
            f"{padded} (input_shape={shape}, padding={pads})"
        )
    return tuple((n - e) // s + 1 for n, e, s in zip(padded, extent, strides))


def _transpose_pads(ndim: int, padding: IntOrTuple) -> tuple[int, ...]:
    if isinstance(padding, str):
        raise ValueError(
            f"padding of a transposed convolution must be an int or a tuple of ints, "
            f"got {padding!r}"
        )
    return _at_least("padding", per_dim("padding", padding, ndim), 0)


def _transpose_args(
    ndim: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple,
    padding: IntOrTuple,
    output_padding: IntOrTuple,
    dilation: IntOrTuple,
) -> tuple[tuple[int, ...], ...]:
    kernel, strides, dilations = _conv_args(ndim, kernel_size, stride, dilation)
    pads = _transpose_pads(ndim, padding)
    out_pads = _at_least("output_padding", per_dim("output_padding", output_padding, ndim), 0)
    if any(op >= s and op >= d for op, s, d in zip(out_pads, strides, dilations)):
        raise ValueError(
            f"output_padding must be smaller than either stride or dilation in every "
            f"dimension, got output_padding={out_pads}, stride={strides}, dilation={dilations}"
        )
    return kernel, strides, pads, out_pads, dilations


def conv_transpose_output_shape(
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> tuple[int, ...]:
    """Spatial output size of ``torch.nn.ConvTransposeNd``: ``(n-1)s - 2p + d(k-1) + op + 1``.

    Raises ``ValueError`` where that size is not positive. (PyTorch raises for
    that too, except that some of its CPU kernels return an empty tensor for 0.)
    """
    shape = _spatial(input_shape)
    kernel, strides, pads, out_pads, dilations = _transpose_args(
        len(shape), kernel_size, stride, padding, output_padding, dilation
    )
    out = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, k, s, p, op, d in zip(shape, kernel, strides, pads, out_pads, dilations)
    )
    if any(o <= 0 for o in out):
        raise ValueError(
            f"padding is too large: the transposed convolution of input_shape={shape} "
            f"would have output size {out}; every size must be positive"
        )
    return out


def output_padding_for_size(
    input_shape: Sequence[int],
    output_size: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> tuple[int, ...]:
    """The ``output_padding`` of ``torch.nn.ConvTransposeNd.forward(x, output_size)``.

    ``output_size`` is the spatial sizes, or a whole channels-last output shape
    ``(batch, *spatial, channels)`` whose batch and channel entries are ignored, as
    torch ignores them. Per dimension the reachable sizes run from
    ``min = (n-1)s - 2p + d(k-1) + 1`` to ``min + s - 1`` and ``output_padding =
    output_size - min``; any other size raises ``ValueError``, as in torch.
    """
    shape = _spatial(input_shape)
    ndim = len(shape)
    sizes = _ints("output_size", output_size)
    if len(sizes) == ndim + 2:
        sizes = sizes[1:-1]
    if len(sizes) != ndim:
        raise ValueError(
            f"output_size must have {ndim} (spatial) or {ndim + 2} (batch, *spatial, "
            f"channels) elements for {ndim} spatial dimensions, got {tuple(output_size)}"
        )
    kernel, strides, dilations = _conv_args(ndim, kernel_size, stride, dilation)
    pads = _transpose_pads(ndim, padding)
    smallest = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + 1
        for n, k, s, p, d in zip(shape, kernel, strides, pads, dilations)
    )
    largest = tuple(m + s - 1 for m, s in zip(smallest, strides))
    if any(not lo <= n <= hi for n, lo, hi in zip(sizes, smallest, largest)):
        raise ValueError(
            f"output_size {sizes} cannot be reached: valid sizes range from {smallest} to "
            f"{largest} for input spatial shape {shape}"
        )
    out_pads = tuple(n - m for n, m in zip(sizes, smallest))
    conv_transpose_output_shape(shape, kernel, strides, pads, out_pads, dilations)
    return out_pads


def output_padding_for(
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: ConvPadding = 0,
    dilation: IntOrTuple = 1,
) -> tuple[int, ...]:
    """The ``output_padding`` with which a transposed conv inverts a conv's shape.

    With the same arguments, ``conv_transpose_output_shape(conv_output_shape(x, ...),
    ..., output_padding=output_padding_for(x, ...)) == x``. It is the remainder that
    the conv's floor division dropped, ``(n + 2p - d(k-1) - 1) mod s``.
    """
    shape = _spatial(input_shape)
    ndim = len(shape)
    pads = conv_padding(ndim, kernel_size, stride, padding, dilation)
    if any(lo != hi for lo, hi in pads):
        raise ValueError(
            f"padding={padding!r} pads the conv asymmetrically ({pads}); a transposed "
            f"convolution crops symmetrically, so no output_padding inverts it"
        )
    conv_out = conv_output_shape(shape, kernel_size, stride, padding, dilation)
    kernel, strides, dilations = _conv_args(ndim, kernel_size, stride, dilation)
    return tuple(
        n - ((m - 1) * s - 2 * lo + d * (k - 1) + 1)
        for n, m, k, s, (lo, _), d in zip(shape, conv_out, kernel, strides, pads, dilations)
    )


def conv_transpose_padding(
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ndim: int | None = None,
) -> PaddingPairs:
    """PyTorch transposed-conv arguments as explicit ``(lo, hi)`` padding pairs.

    The pairs pad the stride-dilated input of ``flax.linen.ConvTranspose`` /
    ``jax.lax.conv_transpose``: ``lo = d(k-1) - p`` and ``hi = d(k-1) - p + op``
    (negative where PyTorch's padding crops more than the kernel overlaps).
    One pair per dimension: ``ndim`` defaults to the length of the tuple arguments,
    or 1 when all are ints.
    """
    if ndim is None:
        tuples = [
            a
            for a in (kernel_size, stride, padding, output_padding, dilation)
            if isinstance(a, Sequence) and not isinstance(a, str)
        ]
        ndim = len(tuples[0]) if tuples else 1
    kernel, _, pads, out_pads, dilations = _transpose_args(
        ndim, kernel_size, stride, padding, output_padding, dilation
    )
    return tuple(
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, op, d in zip(kernel, pads, out_pads, dilations)
    )


def kernel_ndim(kernel_size: IntOrTuple, int_ndim: int = 2) -> int:
    """The number of spatial dimensions a layer's ``kernel_size`` sets: the length of a
    tuple (1, 2 or 3), ``int_ndim`` for an int."""
    if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        if len(kernel_size) not in (1, 2, 3):
            raise ValueError(
                f"kernel_size must be an int or a tuple of 1, 2 or 3 ints (one per spatial "
                f"dimension), got {kernel_size!r}"
            )
        return len(kernel_size)
    per_dim("kernel_size", kernel_size, int_ndim)
    return int_ndim


def _channels(
    in_channels: object, out_channels: object, groups: object, names: tuple[str, str]
) -> tuple[int, int, int]:
    """Channel counts and groups as torch's ``ConvNd`` checks them: positive, divisible."""
    groups = positive_int("groups", groups)
    counts = tuple(positive_int(name, c) for name, c in zip(names, (in_channels, out_channels)))
    for name, count in zip(names, counts):
        if count % groups:
            raise ValueError(f"{name} ({count}) must be divisible by groups ({groups})")
    return (*counts, groups)


def conv_kernel_shape(
    ndim: int,
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrTuple,
    groups: int = 1,
    names: tuple[str, str] = ("in_channels", "out_channels"),
) -> tuple[int, ...]:
    """A conv kernel's shape ``(*kernel_size, in_channels // groups, out_channels)``.

    ``names`` are the caller's names for the two channel counts, for the messages.
    """
    cin, cout, groups = _channels(in_channels, out_channels, groups, names)
    kernel = _at_least("kernel_size", per_dim("kernel_size", kernel_size, ndim), 1)
    return (*kernel, cin // groups, cout)


def conv_transpose_kernel_shape(
    ndim: int,
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrTuple,
    groups: int = 1,
    names: tuple[str, str] = ("in_channels", "out_channels"),
) -> tuple[int, ...]:
    """A transposed-conv kernel's shape ``(*kernel_size, out_channels // groups, in_channels)``."""
    cin, cout, groups = _channels(in_channels, out_channels, groups, names)
    kernel = _at_least("kernel_size", per_dim("kernel_size", kernel_size, ndim), 1)
    return (*kernel, cout // groups, cin)


def torch_init_bound(kernel_shape: Sequence[int]) -> float:
    """PyTorch's default init bound ``1 / sqrt(fan_in)`` for a jaxconv kernel shape.

    PyTorch draws weight and bias from ``U(-bound, bound)``, ``fan_in`` being
    ``weight.shape[1] * prod(kernel_size)``: ``in // groups`` for a conv and
    ``out // groups`` for a transposed conv, that is ``kernel.shape[-2] *
    prod(kernel.shape[:-2])`` in both jaxconv layouts.
    """
    fan_in = kernel_shape[-2] * math.prod(kernel_shape[:-2])
    return 1.0 / math.sqrt(fan_in) if fan_in else 0.0


def check_conv_args(
    ndim: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: ConvPadding = 0,
    dilation: IntOrTuple = 1,
    padding_mode: str = "zeros",
) -> None:
    """Raises where torch's ``ConvNd`` refuses these arguments whatever the input."""
    conv_padding(ndim, kernel_size, stride, padding, dilation)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")


def check_conv_transpose_args(
    ndim: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    padding_mode: str = "zeros",
) -> None:
    """Raises where torch's ``ConvTransposeNd`` refuses these arguments whatever the input.

    ``output_padding`` is checked where it is used: a call with ``output_size`` ignores
    it, as torch does.
    """
    _conv_args(ndim, kernel_size, stride, dilation)
    _transpose_pads(ndim, padding)
    if padding_mode != "zeros":
        raise ValueError(
            f'Only "zeros" padding mode is supported for ConvTranspose{ndim}d, '
            f"got padding_mode={padding_mode!r}"
        )


# Pooling: torch's MaxPoolNd / AvgPoolNd arithmetic.


def _pool_args(
    ndim: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None,
    padding: IntOrTuple,
    dilation: IntOrTuple,
) -> tuple[tuple[int, ...], ...]:
    """Kernel, stride, padding and dilation per dimension, checked as torch checks them:
    each >= 1 (padding >= 0) and padding at most half the kernel (``k // 2``, not the
    dilated kernel). ``stride`` ``None`` (or an empty tuple, as torch takes it) is the
    kernel size."""
    kernel = _at_least("kernel_size", per_dim("kernel_size", kernel_size, ndim), 1)
    empty = isinstance(stride, Sequence) and not isinstance(stride, str) and len(stride) == 0
    strides = kernel if stride is None or empty else per_dim("stride", stride, ndim)
    strides = _at_least("stride", strides, 1)
    pads = _at_least("padding", per_dim("padding", padding, ndim), 0)
    dilations = _at_least("dilation", per_dim("dilation", dilation, ndim), 1)
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ValueError(
            f"padding must be at most half of kernel_size in every dimension, got "
            f"padding={pads} for kernel_size={kernel}"
        )
    return kernel, strides, pads, dilations


def check_pool_args(
    ndim: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
) -> None:
    """Raises where torch's ``MaxPoolNd`` / ``AvgPoolNd`` refuse these arguments whatever
    the input."""
    _pool_args(ndim, kernel_size, stride, padding, dilation)
    as_bool("ceil_mode", ceil_mode)


def pool_output_shape(
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
) -> tuple[int, ...]:
    """Spatial output size of torch's ``MaxPoolNd`` (``AvgPoolNd``: ``dilation=1``).

    ``out = floor((n + 2p - d(k-1) - 1) / s) + 1``; with ``ceil_mode`` the division
    rounds up, but the last window must start inside the input or its left padding
    (torch's rule): one window fewer where ``(out - 1)s >= n + p``. ``stride=None`` is
    the kernel size. ``ValueError`` where an output size is below 1.
    """
    shape = _spatial(input_shape)
    ndim = len(shape)
    kernel, strides, pads, dilations = _pool_args(ndim, kernel_size, stride, padding, dilation)
    ceil = as_bool("ceil_mode", ceil_mode)
    out = []
    for n, k, s, p, d in zip(shape, kernel, strides, pads, dilations):
        size = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
        if ceil and (size - 1) * s >= n + p:
            size -= 1
        out.append(size)
    if min(out) < 1:
        raise ValueError(
            f"kernel_size: the output size {tuple(out)} is too small (every size must be >= 1) "
            f"for input_shape={shape}, kernel_size={kernel}, stride={strides}, "
            f"padding={pads}, dilation={dilations}"
        )
    return tuple(out)


def pool_padding(
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
) -> PaddingPairs:
    """``(lo, hi)`` padding with which plain windows (``lax.reduce_window``) give exactly
    :func:`pool_output_shape`'s windows: ``lo = p``, ``hi`` = what the last window
    reaches past the input (``ceil_mode`` may reach past ``p``; 0 at least)."""
    shape = _spatial(input_shape)
    out = pool_output_shape(shape, kernel_size, stride, padding, dilation, ceil_mode)
    ndim = len(shape)
    kernel, strides, pads, dilations = _pool_args(ndim, kernel_size, stride, padding, dilation)
    return tuple(
        (p, max(0, (m - 1) * s + d * (k - 1) + 1 - n - p))
        for n, m, k, s, p, d in zip(shape, out, kernel, strides, pads, dilations)
    )


# Interpolation: the sizes of torch.nn.functional.interpolate.


def _scale_factors(scale_factor: object, ndim: int) -> tuple[float, ...]:
    """``scale_factor`` (a real number or an ``ndim``-sequence of them; not a bool) per
    dimension."""
    is_seq = isinstance(scale_factor, Sequence) and not isinstance(scale_factor, str)
    values = tuple(scale_factor) if is_seq else (scale_factor,) * ndim
    if len(values) != ndim:
        raise ValueError(
            f"scale_factor must be a number or a sequence of {ndim} numbers (one per spatial "
            f"dimension), got {scale_factor!r}"
        )
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
        raise TypeError(
            f"scale_factor must be a number or a sequence of numbers, got {scale_factor!r}"
        )
    return tuple(float(v) for v in values)


def interpolate_scales(
    input_shape: Sequence[int],
    size: IntOrTuple | None = None,
    scale_factor: float | Sequence[float] | None = None,
    recompute_scale_factor: bool | None = None,
) -> tuple[tuple[int, ...], tuple[float | None, ...]]:
    """The output sizes of ``torch.nn.functional.interpolate`` and the scale factors its
    kernels receive.

    Give ``size`` (an int or one int per dimension) or ``scale_factor`` (a number or one
    per dimension), not both. By ``scale_factor`` the output size is ``int(n * scale)``
    (in double precision), and torch's kernels then map output to input positions with
    ``1 / scale``, not ``n / out``, unless ``recompute_scale_factor`` is true. The second
    tuple holds those scales, ``None`` where the kernel uses ``n / out``. Every output
    size must be >= 1 (``ValueError``).
    """
    shape = _spatial(input_shape)
    ndim = len(shape)
    if size is not None and scale_factor is not None:
        raise ValueError("give size or scale_factor, not both (only one of them is used)")
    if size is None and scale_factor is None:
        raise ValueError("either size or scale_factor must be given")
    if recompute_scale_factor is not None:
        as_bool("recompute_scale_factor", recompute_scale_factor)
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("recompute_scale_factor is not meaningful with an explicit size")
        is_seq = isinstance(size, Sequence) and not isinstance(size, str)
        if is_seq and len(size) != ndim:
            raise ValueError(
                f"size must be an int or a sequence of {ndim} ints (one per spatial "
                f"dimension), got {size!r}"
            )
        out = per_dim("size", size, ndim)
        scales: tuple[float | None, ...] = (None,) * ndim
    else:
        factors = _scale_factors(scale_factor, ndim)
        if not all(math.isfinite(f) for f in factors):
            raise ValueError(f"scale_factor must be finite, got {scale_factor!r}")
        out = tuple(int(n * f) for n, f in zip(shape, factors))
        scales = (None,) * ndim if recompute_scale_factor else factors
    if min(out) < 1:
        raise ValueError(
            f"the output size {out} must be >= 1 in every dimension (input_shape={shape}, "
            f"size={size!r}, scale_factor={scale_factor!r})"
        )
    return out, scales


def interpolate_output_shape(
    input_shape: Sequence[int],
    size: IntOrTuple | None = None,
    scale_factor: float | Sequence[float] | None = None,
    recompute_scale_factor: bool | None = None,
) -> tuple[int, ...]:
    """Spatial output size of ``torch.nn.functional.interpolate``: ``size``, or
    ``int(n * scale_factor)`` per dimension (see :func:`interpolate_scales`)."""
    return interpolate_scales(input_shape, size, scale_factor, recompute_scale_factor)[0]
