"""PyTorch's convolution arithmetic, in pure Python (no JAX import).

For one spatial dimension of size ``n`` with kernel ``k``, stride ``s``,
padding ``p``, dilation ``d`` and output padding ``op``::

    conv:            out = floor((n + 2p - d(k-1) - 1) / s) + 1
    transposed conv: out = (n - 1)s - 2p + d(k-1) + op + 1

``input_shape`` is the spatial sizes only (any number of dimensions). Every
other argument is an int (the same for all dimensions) or a tuple with one
entry per dimension (a 1-tuple is broadcast, as PyTorch does). The argument
combinations that PyTorch rejects raise ``ValueError``; nothing it accepts is
rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

IntOrTuple = Union[int, Sequence[int]]
ConvPadding = Union[int, Sequence[int], str]
PaddingPairs = tuple[tuple[int, int], ...]

PADDING_STRINGS = ("same", "valid")


def per_dim(name: str, value: IntOrTuple, ndim: int) -> tuple[int, ...]:
    """``value`` (an int, an ``ndim``-tuple or a 1-tuple) as one int per dimension."""
    if isinstance(value, bool) or not isinstance(value, (int, Sequence)):
        raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) == 1:
        values *= ndim
    if len(values) != ndim or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(
            f"{name} must be an int or a tuple of {ndim} ints (one per spatial "
            f"dimension), got {value!r}"
        )
    return values


def _at_least(name: str, values: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {values}")
    return values


def _spatial(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(
            f"input_shape must be a non-empty tuple of spatial sizes >= 0, got {input_shape!r}"
        )
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


def _transpose_args(
    ndim: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple,
    padding: IntOrTuple,
    output_padding: IntOrTuple,
    dilation: IntOrTuple,
) -> tuple[tuple[int, ...], ...]:
    if isinstance(padding, str):
        raise ValueError(
            f"padding of a transposed convolution must be an int or a tuple of ints, "
            f"got {padding!r}"
        )
    kernel, strides, dilations = _conv_args(ndim, kernel_size, stride, dilation)
    pads = _at_least("padding", per_dim("padding", padding, ndim), 0)
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
            if not isinstance(a, (int, str))
        ]
        ndim = len(tuples[0]) if tuples else 1
    kernel, _, pads, out_pads, dilations = _transpose_args(
        ndim, kernel_size, stride, padding, output_padding, dilation
    )
    return tuple(
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, op, d in zip(kernel, pads, out_pads, dilations)
    )
