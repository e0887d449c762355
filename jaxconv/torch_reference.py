"""PyTorch as the reference, for parity checks (tests and ``experiments/``).

Layouts between torch (channels first, ``weight`` as ``(a, b, *k)``) and jaxconv
(channels last, ``kernel`` as ``(*k, b, a)``); torch's output-shape arithmetic, or
``None`` where torch raises; random layer configurations and the torch and jaxconv
layers each one makes. Imports torch: ``import jaxconv`` does not import this module.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jaxconv import nn as jnn

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CONV_LAYER = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONV_TRANSPOSE_LAYER = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}
TORCH_ERRORS = (RuntimeError, ValueError, TypeError)  # what torch raises on bad arguments
PARITY_RTOL = 1e-5  # float32 parity: max abs error over max(1, largest |torch value|)
PARITY_IMPLS = ("reference", "fast")  # the implementations compared (auto is one of them)


def channels_last(x: torch.Tensor) -> np.ndarray:
    """torch (batch, channels, *spatial) -> numpy (batch, *spatial, channels)."""
    return np.moveaxis(x.detach().numpy(), 1, -1)


def channels_first(x: Any) -> np.ndarray:
    """(batch, *spatial, channels) -> numpy (batch, channels, *spatial)."""
    return np.moveaxis(np.asarray(x), -1, 1)


def kernel_to_torch(kernel: Any) -> np.ndarray:
    """jaxconv kernel (*k, b, a) -> torch weight (a, b, *k): the inverse of interop's map."""
    k = np.asarray(kernel)
    n = k.ndim - 2
    return np.transpose(k, (n + 1, n, *range(n)))


def torch_output_shape(
    transposed: bool, input_shape: Sequence[int], kernel_size: int | Sequence[int], **kwargs: Any
) -> tuple[int, ...] | None:
    """The spatial output shape torch computes for a 1-channel op, or None if torch raises."""
    ndim = len(input_shape)
    k = (kernel_size,) * ndim if isinstance(kernel_size, int) else tuple(kernel_size)
    op = CONV_TRANSPOSE[ndim] if transposed else CONV[ndim]
    try:
        return tuple(op(torch.zeros(1, 1, *input_shape), torch.zeros(1, 1, *k), **kwargs).shape[2:])
    except TORCH_ERRORS:
        return None


def torch_output_size_shape(
    input_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    output_size: Sequence[int],
    **kwargs: Any,
) -> tuple[int, ...] | None:
    """The spatial shape of ``ConvTransposeNd.forward(x, output_size)`` for a 1-channel
    layer, or None if torch raises.

    1-tuples are expanded: torch's functional ops broadcast them (as jaxconv does), but
    the module's output_size rule indexes them per dimension (an IndexError).
    """
    ndim = len(input_shape)
    kwargs = {k: v * ndim if isinstance(v, tuple) and len(v) == 1 else v for k, v in kwargs.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns on initialising a zero-size kernel
            layer = CONV_TRANSPOSE_LAYER[ndim](1, 1, kernel_size, bias=False, **kwargs)
        return tuple(layer(torch.zeros(1, 1, *input_shape), output_size=output_size).shape[2:])
    except (*TORCH_ERRORS, IndexError):  # the module indexes a too-short tuple
        return None


# ----------------------------------------------------------------------------------
# Random layer configurations: a dict of torch's constructor arguments plus ``ndim``,
# ``batch`` and ``spatial`` (the input's), a pure function of the seed.


def _per_dim(rng: random.Random, ndim: int, low: int, high: int) -> int | tuple[int, ...]:
    return (
        rng.randint(low, high)
        if rng.random() < 0.5
        else tuple(rng.randint(low, high) for _ in range(ndim))
    )


def _channels(rng: random.Random, groups: int) -> tuple[int, int]:
    """Channel counts divisible by groups, except now and then."""
    cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    if groups > 1 and rng.random() < 0.05:
        cin += 1
    return cin, cout


def transpose_config(seed: int) -> dict:
    """A random transposed-conv configuration (1-3 dims, groups, dilation, output_padding),
    now and then one torch rejects."""
    rng = random.Random(seed)
    ndim = rng.choice([1, 2, 2, 3])
    groups = rng.randint(1, 4)
    cin, cout = _channels(rng, groups)
    stride, dilation = _per_dim(rng, ndim, 1, 4), _per_dim(rng, ndim, 1, 3)
    max_op = [max(s, d) for s, d in zip(*(np.broadcast_to(a, ndim) for a in (stride, dilation)))]
    # mostly valid output_padding, sometimes one that torch rejects
    output_padding = tuple(rng.randint(0, m if rng.random() < 0.1 else m - 1) for m in max_op)
    return dict(
        ndim=ndim,
        batch=rng.randint(1, 2),
        spatial=tuple(rng.randint(1, 9 if ndim < 3 else 5) for _ in range(ndim)),
        in_channels=cin,
        out_channels=cout,
        kernel_size=_per_dim(rng, ndim, 1, 7 if ndim < 3 else 4),
        stride=stride,
        padding=_per_dim(rng, ndim, 0, 4),
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        bias=rng.random() < 0.7,
    )


def output_size_request(cfg: dict, seed: int) -> dict | None:
    """A torch ``output_size`` for a quarter of the transposed configs (else None): per
    dimension in ``[min - 1, max + 1]``, where torch reaches ``[min, max = min + s - 1]``;
    ``whole`` asks for the whole output shape, not the spatial sizes."""
    rng = random.Random(20_000 + seed)  # its own stream: the configs stay as they were
    if rng.random() >= 0.25:
        return None
    ndim = cfg["ndim"]
    n, k, s, p, d = (
        np.broadcast_to(cfg[key], ndim)
        for key in ("spatial", "kernel_size", "stride", "padding", "dilation")
    )
    smallest = (n - 1) * s - 2 * p + d * (k - 1) + 1
    sizes = tuple(rng.randint(m - 1, m + si) for m, si in zip(smallest.tolist(), s.tolist()))
    return dict(sizes=sizes, whole=rng.random() < 0.5)


def conv_config(seed: int) -> dict:
    """A random conv configuration (1-3 dims, groups, dilation, string paddings, padding
    modes), now and then one torch rejects."""
    rng = random.Random(10_000 + seed)
    ndim = rng.choice([1, 2, 2, 3])
    groups = rng.randint(1, 4)
    cin, cout = _channels(rng, groups)
    stride = _per_dim(rng, ndim, 1, 4)
    padding = _per_dim(rng, ndim, 0, 4)
    if rng.random() < 0.2:
        padding = rng.choice(["same", "valid"])
        if padding == "same":
            stride = 1
    return dict(
        ndim=ndim,
        batch=rng.randint(1, 2),
        spatial=tuple(rng.randint(1, 12 if ndim < 3 else 7) for _ in range(ndim)),
        in_channels=cin,
        out_channels=cout,
        kernel_size=_per_dim(rng, ndim, 1, 7 if ndim < 3 else 4),
        stride=stride,
        padding=padding,
        dilation=_per_dim(rng, ndim, 1, 3),
        groups=groups,
        bias=rng.random() < 0.7,
        padding_mode=rng.choice(["zeros"] * 5 + ["reflect", "replicate", "circular"]),
    )


def torch_layer(cfg: dict, transposed: bool) -> torch.nn.Module:
    """``torch.nn.(Conv|ConvTranspose)Nd`` of a configuration (torch's init); raises
    where torch rejects it."""
    common = dict(
        kernel_size=cfg["kernel_size"],
        stride=cfg["stride"],
        padding=cfg["padding"],
        dilation=cfg["dilation"],
        groups=cfg["groups"],
        bias=cfg["bias"],
    )
    if transposed:
        return CONV_TRANSPOSE_LAYER[cfg["ndim"]](
            cfg["in_channels"], cfg["out_channels"], output_padding=cfg["output_padding"], **common
        )
    return CONV_LAYER[cfg["ndim"]](
        cfg["in_channels"], cfg["out_channels"], padding_mode=cfg["padding_mode"], **common
    )


def jaxconv_layer(cfg: dict, transposed: bool, impl: str) -> jnn.Conv | jnn.ConvTranspose:
    """The :mod:`jaxconv.nn` layer of the same configuration, with ``impl``."""
    common = dict(
        impl=impl,
        features=cfg["out_channels"],
        kernel_size=cfg["kernel_size"],
        stride=cfg["stride"],
        padding=cfg["padding"],
        dilation=cfg["dilation"],
        groups=cfg["groups"],
        use_bias=cfg["bias"],
    )
    if transposed:
        return jnn.ConvTranspose(output_padding=cfg["output_padding"], **common)
    return jnn.Conv(padding_mode=cfg["padding_mode"], **common)
