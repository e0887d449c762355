"""PyTorch's pooling, interpolation and pixel shuffling as pure functions on
channels-last arrays ``(batch, *spatial, channels)``.

- :func:`max_pool` / :func:`avg_pool`: ``torch.nn.functional.max_pool{1,2,3}d`` /
  ``avg_pool{1,2,3}d``, with torch's output sizes (:func:`jaxconv.shapes.pool_output_shape`,
  ``ceil_mode``'s last-window rule included), ``-inf`` padding for the maximum and
  torch's divisors for the average.
- :func:`interpolate`: ``torch.nn.functional.interpolate`` in the modes ``nearest``,
  ``linear``, ``bilinear`` and ``trilinear``, computing the source positions as
  torch's CPU kernels do (in float32, with their special cases), so that ``nearest``
  picks the same pixels.
- :func:`pixel_shuffle` / :func:`pixel_unshuffle`: torch's ``(C, r, r)`` channel order.

Inputs must be floating-point (torch's integer pooling is not differentiable);
bfloat16 sums and interpolations, and their gradients' sums, are computed in float32
and rounded once.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import shapes
from jaxconv.ops import float_array, input_ndim

MODES = {"nearest": None, "linear": 1, "bilinear": 2, "trilinear": 3}  # mode: spatial dims
TORCH_ONLY_MODES = ("bicubic", "area", "nearest-exact", "lanczos")


def _pool_geometry(
    x: Any,
    kernel_size: shapes.IntOrTuple,
    stride: shapes.IntOrTuple | None,
    padding: shapes.IntOrTuple,
    dilation: shapes.IntOrTuple,
    ceil_mode: bool,
) -> tuple[jax.Array, tuple[tuple[int, ...], ...]]:
    """``x`` checked, and the window's (kernel, stride, dilation, padding pairs, output)
    per spatial dimension."""
    x = float_array("x", x)
    ndim = input_ndim(x)
    spatial = x.shape[1:-1]
    out = shapes.pool_output_shape(spatial, kernel_size, stride, padding, dilation, ceil_mode)
    pads = shapes.pool_padding(spatial, kernel_size, stride, padding, dilation, ceil_mode)
    kernel = shapes.per_dim("kernel_size", kernel_size, ndim)
    empty = isinstance(stride, Sequence) and len(stride) == 0
    strides = kernel if stride is None or empty else shapes.per_dim("stride", stride, ndim)
    return x, (kernel, strides, shapes.per_dim("dilation", dilation, ndim), pads, out)


def _windows(
    x: jax.Array,
    init: Any,
    reducer: Any,
    geometry: tuple[tuple[int, ...], ...],
) -> jax.Array:
    kernel, strides, dilations, pads, out = geometry
    y = lax.reduce_window(
        x,
        np.array(init, x.dtype),
        reducer,
        window_dimensions=(1, *kernel, 1),
        window_strides=(1, *strides, 1),
        padding=((0, 0), *pads, (0, 0)),
        window_dilation=(1, *dilations, 1),
    )
    return y[(slice(None), *(slice(0, n) for n in out))]


def max_pool(
    x: jax.Array,
    kernel_size: shapes.IntOrTuple,
    stride: shapes.IntOrTuple | None = None,
    padding: shapes.IntOrTuple = 0,
    dilation: shapes.IntOrTuple = 1,
    ceil_mode: bool = False,
) -> jax.Array:
    """``torch.nn.functional.max_pool{1,2,3}d``: the maximum over each window of ``k``
    positions ``d`` apart, windows ``s`` apart (``stride=None``: ``kernel_size``), the
    input padded by ``p`` of ``-inf``; out size ``floor((n + 2p - d(k-1) - 1)/s) + 1``
    (``ceil_mode``: rounded up, last window starting inside the input or left padding).
    The gradient goes to each window's maximum, the first one where several are equal
    and the last NaN where there are NaNs, as in torch (:func:`_max_pool_jvp`)."""
    x, geometry = _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _max_pool(x, geometry)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, geometry: tuple[tuple[int, ...], ...]) -> jax.Array:
    return _windows(x, -jnp.inf, lax.max, geometry)


def _max_pool_jvp(geometry, primals, tangents):
    """The tangent at each window's chosen position (:func:`_chosen_offsets`), selected
    among the window's positions, strided slices: reverse mode adds their transposes,
    strided pads, which XLA fuses into one loop.

    JAX's own derivative of the maximum over windows is a select-and-scatter, which
    XLA:CPU expands into a scatter of indices. Forward+backward, medians of paired rounds
    (ms; torch in the same rounds): 2x2 pooling of 1x128x128x32 2.86 -> 0.41 (torch 2.07),
    of 16x64x64x64 54.0 -> 2.75 (15.3); 3x3 s2 p1 pooling 5.40 -> 1.28 (2.67) and 88.6 ->
    22.1 (21.2).
    """
    (x,), (tangent,) = primals, tangents
    y = _max_pool(x, geometry)
    chosen = _chosen_offsets(x, y, geometry)
    tangent = _padded(tangent, 0, geometry)
    selected = [
        jnp.where(chosen == i, _at(tangent, offset, geometry), 0)
        for i, offset in enumerate(_offsets(geometry))
    ]
    return y, sum(selected[1:], selected[0])


_max_pool.defjvp(_max_pool_jvp)


def _offsets(geometry: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """A window's positions in torch's scan order (the last dimension fastest)."""
    return list(itertools.product(*map(range, geometry[0])))


def _padded(x: jax.Array, fill, geometry) -> jax.Array:
    """``x`` padded with ``fill`` by the windows' pads."""
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in geometry[3]), (0, 0, 0)]
    return lax.pad(x, np.array(fill, x.dtype), config)


def _at(padded: jax.Array, offset: tuple[int, ...], geometry) -> jax.Array:
    """Position ``offset`` of every window: a strided slice of the :func:`_padded` input."""
    _, strides, dilations, _, out = geometry
    starts = [o * d for o, d in zip(offset, dilations)]
    limits = [(m - 1) * s + a + 1 for m, s, a in zip(out, strides, starts)]
    return lax.slice(
        padded,
        (0, *starts, 0),
        (padded.shape[0], *limits, padded.shape[-1]),
        (1, *strides, 1),
    )


def _chosen_offsets(x: jax.Array, y: jax.Array, geometry) -> jax.Array:
    """The index (in :func:`_offsets`) of the position of each window that torch's
    maximum picks: it scans the window's positions within the input and takes one that
    is larger than all before it, or NaN; so the last NaN if any, else the first
    maximum. (An argmax over the positions, a reduction, which XLA computes once rather
    than again for each position's tangent.)"""
    padded = _padded(x, -jnp.inf, geometry)
    scores = []
    for i, offset in enumerate(_offsets(geometry)):
        value = _at(padded, offset, geometry)
        inside = _inside(x.shape[1:-1], offset, geometry)
        nan = jnp.isnan(value)
        hit = jnp.where(inside & (value == y), np.int8(1), np.int8(0))
        scores.append(jnp.where(inside & nan, np.int8(2 + i), hit))
    return jnp.argmax(jnp.stack(scores), axis=0)


def _inside(spatial: tuple[int, ...], offset: tuple[int, ...], geometry) -> np.ndarray:
    """Whether position ``offset`` of each window lies within the input, ``(1, *out, 1)``."""
    _, strides, dilations, pads, out = geometry
    inside = np.ones((), bool)
    for n, o, s, d, (lo, _), m in zip(spatial, offset, strides, dilations, pads, out):
        start = np.arange(m) * s + o * d - lo
        inside = np.logical_and.outer(inside, (0 <= start) & (start < n))
    return inside[None, ..., None]


def _divisor(
    spatial: tuple[int, ...],
    geometry: tuple[tuple[int, ...], ...],
    padding: tuple[int, ...],
    count_include_pad: bool,
) -> np.ndarray:
    """torch's divisor per output position, a product over the dimensions: the window
    clipped to the padded input (``count_include_pad``) or to the input itself."""
    kernel, strides, _, _, out = geometry
    per_dim = []
    for n, k, s, p, m in zip(spatial, kernel, strides, padding, out):
        start = np.arange(m) * s - p
        end = np.minimum(start + k, n + p)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        per_dim.append(end - start)
    divisor = per_dim[0]
    for d in per_dim[1:]:
        divisor = np.multiply.outer(divisor, d)
    return divisor[..., None].astype(np.float32)


def check_divisor_override(divisor_override: Any) -> int | None:
    """``divisor_override``: None or a nonzero int (negative ones are torch's too)."""
    if divisor_override is None:
        return None
    if shapes.as_int("divisor_override", divisor_override) == 0:
        raise ValueError("divisor_override must not be zero")
    return int(divisor_override)


def avg_pool(
    x: jax.Array,
    kernel_size: shapes.IntOrTuple,
    stride: shapes.IntOrTuple | None = None,
    padding: shapes.IntOrTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> jax.Array:
    """``torch.nn.functional.avg_pool{1,2,3}d``: each window's sum (zero padding) over
    ``divisor_override``, or over the window's size clipped to the padded input
    (``count_include_pad``) or to the input; windows and sizes as :func:`max_pool`'s
    with ``dilation=1``.

    As in torch, ``divisor_override`` must be a nonzero int, and a 3-D input must be
    at least the kernel in every dimension before padding. (torch's ``AvgPool1d`` has
    no ``divisor_override``; here it divides the 1-D sums as ``avg_pool2d`` would.)
    """
    x, geometry = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    include_pad = shapes.as_bool("count_include_pad", count_include_pad)
    divisor_override = check_divisor_override(divisor_override)
    spatial, kernel = x.shape[1:-1], geometry[0]
    if len(spatial) == 3 and any(n < k for n, k in zip(spatial, kernel)):
        raise ValueError(
            f"kernel_size {kernel} is larger than the input's spatial shape {spatial}: torch's "
            f"3-D average pooling needs the input at least the kernel before padding"
        )
    wide = jnp.promote_types(x.dtype, jnp.float32)
    sums = _windows(x.astype(wide), 0, lax.add, geometry)
    if divisor_override is not None:
        return (sums / divisor_override).astype(x.dtype)
    pads = tuple(lo for lo, _ in geometry[3])
    return (sums / _divisor(spatial, geometry, pads, include_pad)).astype(x.dtype)


def check_mode(mode: str, align_corners: bool | None, ndim: int | None = None) -> None:
    """torch's rules for ``mode`` and ``align_corners`` (``ndim``: the input's spatial
    dimensions, None where not known yet)."""
    if mode not in MODES:
        extra = f" (torch's {mode!r} is not implemented here)" if mode in TORCH_ONLY_MODES else ""
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}{extra}")
    if mode == "nearest":
        if align_corners is not None:
            raise ValueError(
                "align_corners can only be set with the modes linear, bilinear and trilinear"
            )
    elif align_corners is not None:
        shapes.as_bool("align_corners", align_corners)
    if ndim is not None and MODES[mode] not in (None, ndim):
        raise ValueError(
            f"mode={mode!r} needs an input with {MODES[mode]} spatial dimensions, got {ndim}"
        )


def _nearest_index(n: int, out: int, scale: float | None, special_cases: bool) -> np.ndarray:
    """torch's nearest source index ``min(floor(i * ratio), n - 1)``, in float32, the ratio
    ``1 / scale_factor`` or ``n / out``. torch's 2-D kernel copies where ``out == n`` and
    halves where ``out == 2n`` whatever the ratio; its 1-D and 3-D kernels do not."""
    i = np.arange(out)
    if special_cases and out == n:
        return i
    if special_cases and out == 2 * n:
        return i >> 1
    ratio = np.float32(1.0 / scale) if scale else np.float32(n) / np.float32(out)
    return np.minimum(np.floor(i.astype(np.float32) * ratio).astype(np.int64), n - 1)


def _linear_weights(
    n: int, out: int, scale: float | None, align_corners: bool
) -> tuple[np.ndarray, np.ndarray]:
    """torch's linear interpolation taps per output position, in float32: indices
    ``(i0, i1)`` and weights ``(1 - lambda, lambda)`` of ``src = ratio * i``
    (``align_corners``, ratio ``(n-1)/(out-1)``) or ``ratio * (i + 0.5) - 0.5`` clamped
    at 0 (ratio ``1 / scale_factor`` or ``n / out``); ``i0 = floor(src)``,
    ``lambda = src - i0``, ``i1`` the next position (``i0`` at the end)."""
    i = np.arange(out).astype(np.float32)
    if align_corners:
        ratio = np.float32(n - 1) / np.float32(out - 1) if out > 1 else np.float32(0)
        src = ratio * i
    else:
        ratio = np.float32(1.0 / scale) if scale else np.float32(n) / np.float32(out)
        src = np.maximum(ratio * (i + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    index = np.stack([i0, np.minimum(i0 + 1, n - 1)], axis=1)
    return index, np.stack([1 - lam, lam], axis=1)


def interpolate(
    x: jax.Array,
    size: shapes.IntOrTuple | None = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
) -> jax.Array:
    """``torch.nn.functional.interpolate`` on ``x`` ``(batch, *spatial, channels)``.

    Output size ``size``, or ``int(n * scale_factor)`` (:func:`jaxconv.shapes.interpolate_scales`).
    Per dimension, output position ``i`` reads the input at:

    - ``nearest``: ``min(floor(i * ratio), n - 1)``;
    - ``linear`` / ``bilinear`` / ``trilinear`` (1, 2, 3 spatial dimensions): ``src =
      i * (n - 1)/(out - 1)`` with ``align_corners``, else ``max(ratio * (i + 0.5) -
      0.5, 0)``, weighting its two neighbours ``floor(src)`` and the next by distance;

    where ``ratio`` is ``1 / scale_factor`` when ``scale_factor`` is given (and not
    ``recompute_scale_factor``), else ``n / out``, in float32 as torch's kernels compute
    it. torch's kernels have special cases, followed here: the linear modes copy a
    dimension whose size stays (``out == n``) whatever ``scale_factor`` says, and so
    does 2-D ``nearest``, which also takes ``i // 2`` where ``out == 2n``.
    ``align_corners`` must be None for ``nearest`` and is ``False`` by default for the
    others. Errors as torch's: ``ValueError`` / ``TypeError`` naming the argument.

    The gradient is the forward's. (torch 2.13's 1-D and 3-D ``nearest`` backward
    applies the 2-D special cases that their forward does not, so where ``out`` is
    ``n`` or ``2n`` by a ``scale_factor`` their gradient is not their forward's.)
    """
    x = float_array("x", x)
    check_mode(mode, align_corners)
    ndim = input_ndim(x)
    check_mode(mode, align_corners, ndim)
    spatial = x.shape[1:-1]
    out, scales = shapes.interpolate_scales(spatial, size, scale_factor, recompute_scale_factor)
    dtype = x.dtype
    x = x.astype(jnp.promote_types(dtype, jnp.float32))  # and the gradient's sums
    for axis, (n, m, s) in enumerate(zip(spatial, out, scales), start=1):
        if mode == "nearest":
            x = _read_along(x, axis, _nearest_index(n, m, s, special_cases=ndim == 2)[:, None])
        elif m != n:  # torch's linear kernels copy a dimension whose size stays, whatever the ratio
            x = _read_along(x, axis, *_linear_weights(n, m, s, bool(align_corners)))
    return x.astype(dtype)


def _read_along(
    x: jax.Array, axis: int, index: np.ndarray, weight: np.ndarray | None = None
) -> jax.Array:
    """``y[.., j, ..] = sum_t weight[j, t] x[.., index[j, t], ..]`` along ``axis`` (no
    weight: one tap). A map ``j -> j // f`` (nearest up-sampling by an integer ``f``) is
    a broadcast; any other one gather."""
    n, (m, taps) = x.shape[axis], index.shape
    if taps == 1 and m % n == 0 and np.array_equal(index[:, 0], np.arange(m) // (m // n)):
        f = m // n
        y = jnp.expand_dims(x, axis + 1)
        y = jnp.broadcast_to(y, (*x.shape[: axis + 1], f, *x.shape[axis + 1 :]))
        return y.reshape(*x.shape[:axis], m, *x.shape[axis + 1 :])
    y = jnp.take(x, index, axis=axis, mode="clip")  # (.., m, taps, ..)
    if weight is None:
        return jnp.squeeze(y, axis + 1)
    shape = [1] * y.ndim
    shape[axis], shape[axis + 1] = m, taps
    return jnp.sum(y * jnp.asarray(weight.reshape(shape), y.dtype), axis=axis + 1)


def _factor_and_input(name: str, factor: int, x: Any) -> tuple[int, jax.Array]:
    r = shapes.positive_int(name, factor)
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"x must be (*, height, width, channels), got shape {x.shape}")
    return r, x


def pixel_shuffle(x: jax.Array, upscale_factor: int) -> jax.Array:
    """``torch.nn.functional.pixel_shuffle`` channels-last: ``(*, H, W, C r^2)`` to
    ``(*, H r, W r, C)`` with ``out[..., h r + i, w r + j, c] = x[..., h, w, c r^2 + i r +
    j]`` (torch's channel order ``(C, r, r)``)."""
    r, x = _factor_and_input("upscale_factor", upscale_factor, x)
    *batch, h, w, c = x.shape
    if c % (r * r):
        raise ValueError(
            f"x has {c} channels (its last axis), which upscale_factor^2 = {r * r} does not divide"
        )
    y = x.reshape(*batch, h, w, c // (r * r), r, r)
    nb = len(batch)
    y = jnp.transpose(y, (*range(nb), nb, nb + 3, nb + 1, nb + 4, nb + 2))
    return y.reshape(*batch, h * r, w * r, c // (r * r))


def pixel_unshuffle(x: jax.Array, downscale_factor: int) -> jax.Array:
    """``torch.nn.functional.pixel_unshuffle`` channels-last, the inverse of
    :func:`pixel_shuffle`: ``(*, H r, W r, C)`` to ``(*, H, W, C r^2)``."""
    r, x = _factor_and_input("downscale_factor", downscale_factor, x)
    *batch, h, w, c = x.shape
    for name, n in (("height", h), ("width", w)):
        if n % r:
            raise ValueError(
                f"x's {name} ({n}) must be divisible by downscale_factor ({r}), got shape {x.shape}"
            )
    y = x.reshape(*batch, h // r, r, w // r, r, c)
    nb = len(batch)
    y = jnp.transpose(y, (*range(nb), nb, nb + 2, nb + 4, nb + 1, nb + 3))
    return y.reshape(*batch, h // r, w // r, c * r * r)
