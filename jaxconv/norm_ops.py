"""PyTorch's normalisation layers as pure functions on channels-last arrays.

``x`` is ``(batch, *spatial, channels)``; per-channel arrays (``scale`` = torch's
``weight``, ``bias``, ``running_mean``, ``running_var``) are ``(channels,)``. Each
normalises ``y = (x - mean) / sqrt(var + eps) * scale + bias`` with the biased variance
over its axes:

- :func:`batch_norm`: over the batch and every spatial position, per channel;
- :func:`instance_norm`: over the spatial positions, per example and channel;
- :func:`group_norm`: over the spatial positions and the channels of a group, per
  example (channel ``c`` is in group ``c // (channels / num_groups)``, as in torch);
- :func:`layer_norm`: over the last ``len(normalized_shape)`` axes of ``x``, whatever
  they are (torch's definition on the same array).

Statistics and the normalisation are computed in float32 at least (torch's
accumulation type for bfloat16 inputs), the output in ``dtype`` (``None``: the
promotion of ``x``, ``scale`` and ``bias``). Where running statistics are given and
batch statistics are used, the updated ones come back (functions are pure):
``running = (1 - momentum) * running + momentum * batch``, the batch variance
unbiased (``var * n / (n - 1)``) there, as torch updates it. The checks raise where
torch raises, ``ValueError`` / ``TypeError`` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import shapes
from jaxconv.ops import check_channels, float_array, float_dtype

RunningStats = tuple[jax.Array | None, jax.Array | None]


def _per_channel(name: str, value: Any, x_shape: tuple[int, ...]) -> jax.Array | None:
    """``value`` as a float ``(channels,)`` array matching ``x``'s last axis, or None."""
    if value is None:
        return None
    value = float_array(name, value)
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D (channels,), got shape {value.shape}")
    check_channels(x_shape, value.shape[0], f"{name} of shape {value.shape}")
    return value


def _out_dtype(dtype: Any, *arrays: jax.Array | None) -> jnp.dtype:
    if dtype is not None:
        return float_dtype("dtype", dtype)
    return jnp.result_type(*(a for a in arrays if a is not None))


def _wide(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _moments(
    xw: jax.Array, axes: tuple[int, ...]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x - mean``, the mean and the biased variance over ``axes`` (kept).

    The float32 mean of values with a large common offset is off by up to half a unit
    of the offset, which ``x - mean`` then carries into every normalised value (a
    relative error of ~1e-5 where the spread is 1e-2 of the offset). So the mean is
    corrected by the mean of ``x - mean`` (compensated two-pass), as accurate as torch's
    double-precision accumulation on these sizes.
    """
    shift = jnp.mean(xw, axes, keepdims=True)
    rough = xw - shift
    correction = jnp.mean(rough, axes, keepdims=True)
    centred = rough - correction
    return centred, shift + correction, jnp.mean(jnp.square(centred), axes, keepdims=True)


def _affine(y: jax.Array, scale: jax.Array | None, bias: jax.Array | None) -> jax.Array:
    if scale is not None:
        y = y * scale.astype(y.dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def _normalize(
    centred: jax.Array,
    var: jax.Array,
    eps: float,
    scale: jax.Array | None,
    bias: jax.Array | None,
) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` from ``centred = x - mean``."""
    return _affine(centred * lax.rsqrt(var + eps), scale, bias)


def _momentum(momentum: Any) -> Any:
    """A number, or an array (the cumulative average's ``1 / num_batches_tracked``)."""
    return momentum if isinstance(momentum, jax.Array) else shapes.as_float("momentum", momentum)


def _update(running: jax.Array, batch: jax.Array, momentum: Any) -> jax.Array:
    return ((1 - momentum) * running + momentum * batch).astype(running.dtype)


def _running_pair(
    running_mean: Any, running_var: Any, x_shape: tuple[int, ...]
) -> RunningStats:
    mean = _per_channel("running_mean", running_mean, x_shape)
    var = _per_channel("running_var", running_var, x_shape)
    if (mean is None) != (var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    return mean, var


def batch_norm(
    x: jax.Array,
    running_mean: jax.Array | None = None,
    running_var: jax.Array | None = None,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    training: bool = False,
    momentum: float | jax.Array = 0.1,
    eps: float = 1e-5,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """``torch.nn.functional.batch_norm``: returns ``(y, running_mean, running_var)``.

    ``x`` is ``(batch, channels)`` or ``(batch, *spatial, channels)`` with 1-3 spatial
    dimensions. ``training`` normalises with the batch's statistics over
    ``n = batch * prod(spatial)`` values per channel (``n = 1`` is a ``ValueError``, as
    in torch) and updates the running statistics, if given; otherwise it normalises
    with the running statistics, which must be given. ``eps`` must be > 0 in training
    and >= 0 otherwise (torch's checks).
    """
    x = float_array("x", x)
    if x.ndim not in (2, 3, 4, 5):
        raise ValueError(
            f"x must be (batch, channels) or (batch, *spatial, channels) with 1, 2 or 3 "
            f"spatial dimensions, got shape {x.shape}"
        )
    mean_r, var_r = _running_pair(running_mean, running_var, x.shape)
    scale, bias = (_per_channel(n, v, x.shape) for n, v in (("scale", scale), ("bias", bias)))
    out_dtype = _out_dtype(dtype, x, scale, bias)
    eps = shapes.as_float("eps", eps)
    if eps < 0 or (training and eps == 0):
        rule = "positive in training" if training else "non-negative"
        raise ValueError(f"eps must be {rule}, got {eps}")
    axes = tuple(range(x.ndim - 1))
    xw = _wide(x)
    if not training:
        if mean_r is None:
            raise ValueError("running_mean and running_var must be given when not training")
        y = _normalize(xw - mean_r, var_r, eps, scale, bias)
        return y.astype(out_dtype), mean_r, var_r
    n = math.prod(x.shape[:-1])
    if n == 1:
        raise ValueError(
            f"batch norm in training needs more than 1 value per channel, got x of shape "
            f"{x.shape}"
        )
    centred, mean, var = _moments(xw, axes)
    y = _normalize(centred, var, eps, scale, bias).astype(out_dtype)
    if mean_r is None or n == 0:  # torch leaves the statistics of an empty batch as they are
        return y, mean_r, var_r
    momentum = _momentum(momentum)
    unbiased = var.reshape(-1) * (n / (n - 1))
    return y, _update(mean_r, mean.reshape(-1), momentum), _update(var_r, unbiased, momentum)


def instance_norm(
    x: jax.Array,
    running_mean: jax.Array | None = None,
    running_var: jax.Array | None = None,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    use_input_stats: bool = True,
    momentum: float | jax.Array = 0.1,
    eps: float = 1e-5,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """``torch.nn.functional.instance_norm``: returns ``(y, running_mean, running_var)``.

    ``x`` is ``(batch, *spatial, channels)`` with 1-3 spatial dimensions.
    ``use_input_stats`` normalises each example and channel over its ``m =
    prod(spatial)`` positions (``m = 1`` is a ``ValueError``, as in torch) and updates
    the running statistics, if given, with the batch's average of the per-example
    mean and unbiased variance; otherwise it normalises with the running statistics.
    """
    x = float_array("x", x)
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"x must be (batch, *spatial, channels) with 1, 2 or 3 spatial dimensions, got "
            f"shape {x.shape}"
        )
    mean_r, var_r = _running_pair(running_mean, running_var, x.shape)
    scale, bias = (_per_channel(n, v, x.shape) for n, v in (("scale", scale), ("bias", bias)))
    out_dtype = _out_dtype(dtype, x, scale, bias)
    eps = shapes.as_float("eps", eps)
    xw = _wide(x)
    if not use_input_stats:
        if mean_r is None:
            raise ValueError("running_mean and running_var must be given without input stats")
        y = _normalize(xw - mean_r, var_r, eps, scale, bias)
        return y.astype(out_dtype), mean_r, var_r
    m = math.prod(x.shape[1:-1])
    if m == 1:
        raise ValueError(
            f"instance norm with input statistics needs more than 1 spatial position, got x "
            f"of shape {x.shape}"
        )
    centred, mean, var = _moments(xw, tuple(range(1, x.ndim - 1)))
    y = _normalize(centred, var, eps, scale, bias).astype(out_dtype)
    if mean_r is None or x.shape[0] == 0:
        return y, mean_r, var_r
    momentum = _momentum(momentum)
    batch_mean = jnp.mean(mean.reshape(x.shape[0], -1), axis=0)
    batch_var = jnp.mean(var.reshape(x.shape[0], -1), axis=0) * (m / (m - 1))
    return y, _update(mean_r, batch_mean, momentum), _update(var_r, batch_var, momentum)


def group_norm(
    x: jax.Array,
    num_groups: int,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    eps: float = 1e-5,
    dtype: Any = None,
) -> jax.Array:
    """``torch.nn.functional.group_norm`` on ``x`` ``(batch, *spatial, channels)``.

    The channels must divide into ``num_groups`` groups; each example and group is
    normalised over its spatial positions and the group's channels.
    """
    x = float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must be (batch, *spatial, channels), got shape {x.shape}")
    groups = shapes.positive_int("num_groups", num_groups)
    channels = x.shape[-1]
    if channels % groups:
        raise ValueError(
            f"x has {channels} channels (its last axis, shape {x.shape}), which num_groups "
            f"({groups}) does not divide"
        )
    scale, bias = (_per_channel(n, v, x.shape) for n, v in (("scale", scale), ("bias", bias)))
    out_dtype = _out_dtype(dtype, x, scale, bias)
    eps = shapes.as_float("eps", eps)
    if x.shape[0] * (channels // groups) * math.prod(x.shape[1:-1]) == 1:
        raise ValueError(  # torch's check (it counts the batch, not the group's values)
            f"group norm needs more than 1 value per group over the batch, got x of shape "
            f"{x.shape} with num_groups={groups}"
        )
    grouped = _wide(x).reshape(*x.shape[:-1], groups, channels // groups)
    axes = (*range(1, x.ndim - 1), x.ndim)  # spatial axes and the channels within a group
    centred, _, var = _moments(grouped, axes)
    y = _normalize(centred, var, eps, None, None).reshape(x.shape)
    return _affine(y, scale, bias).astype(out_dtype)


def normalized_shape_tuple(normalized_shape: shapes.IntOrTuple) -> tuple[int, ...]:
    """torch's ``normalized_shape``: an int or a non-empty sequence of ints >= 0."""
    is_seq = isinstance(normalized_shape, Sequence) and not isinstance(normalized_shape, str)
    values = tuple(normalized_shape) if is_seq else (normalized_shape,)
    result = tuple(shapes.nonnegative_int("normalized_shape", v) for v in values)
    if not result:
        raise ValueError("normalized_shape must have at least one dimension, got ()")
    return result


def layer_norm(
    x: jax.Array,
    normalized_shape: shapes.IntOrTuple,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    eps: float = 1e-5,
    dtype: Any = None,
) -> jax.Array:
    """``torch.nn.functional.layer_norm``: normalises over the last
    ``len(normalized_shape)`` axes of ``x``, which must be ``normalized_shape``;
    ``scale`` and ``bias`` have that shape. On a channels-last ``(batch, *spatial,
    channels)`` input, ``normalized_shape=channels`` normalises each position over its
    channels (a torch ``LayerNorm([C, H, W])`` on NCHW is ``LayerNorm((H, W, C))`` here,
    with its weight moved to channels-last)."""
    x = float_array("x", x)
    norm_shape = normalized_shape_tuple(normalized_shape)
    k = len(norm_shape)
    if x.shape[x.ndim - k :] != norm_shape or x.ndim < k:
        raise ValueError(
            f"x must end with normalized_shape {norm_shape}, got shape {x.shape}"
        )
    params = []
    for name, value in (("scale", scale), ("bias", bias)):
        if value is not None:
            value = float_array(name, value)
            if value.shape != norm_shape:
                raise ValueError(
                    f"{name} must have normalized_shape {norm_shape}, got {value.shape}"
                )
        params.append(value)
    scale, bias = params
    out_dtype = _out_dtype(dtype, x, scale, bias)
    eps = shapes.as_float("eps", eps)
    xw = _wide(x)
    centred, _, var = _moments(xw, tuple(range(x.ndim - k, x.ndim)))
    return _normalize(centred, var, eps, scale, bias).astype(out_dtype)
