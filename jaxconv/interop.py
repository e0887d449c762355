"""PyTorch weights to jaxconv parameters (no torch import: arrays in, arrays out).

torch's conv ``weight`` is ``(out, in // g, *k)`` and its transposed-conv ``weight``
``(in, out // g, *k)``; jaxconv's kernels are both with the axes reversed
(``(*k, in // g, out)`` and ``(*k, out // g, in)``). The map is a transposition,
hence linear: it carries torch's gradients onto jaxconv's too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxconv import nn as jnn


def _to_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy/JAX array or a torch tensor (detached, on the CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _reverse_layout(w: np.ndarray) -> np.ndarray:
    """torch ``(a, b, *k)`` to jaxconv ``(*k, b, a)``."""
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _kernel(weight: Any, groups: int, grouped_axis: int, name: str) -> np.ndarray:
    w = _to_numpy(weight)
    if w.ndim not in (3, 4, 5):
        raise ValueError(f"weight must have 3, 4 or 5 dimensions (1-3 spatial), got {w.shape}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if w.shape[grouped_axis] % groups:
        raise ValueError(
            f"weight.shape[{grouped_axis}] ({name}, {w.shape[grouped_axis]}) must be "
            f"divisible by groups ({groups})"
        )
    return _reverse_layout(w)


def _with_bias(kernel: np.ndarray, bias: Any, features: int) -> dict[str, np.ndarray]:
    if bias is None:
        return {"kernel": kernel}
    b = _to_numpy(bias)
    if b.shape != (features,):
        raise ValueError(f"bias must have shape ({features},), got {b.shape}")
    return {"kernel": kernel, "bias": b}


def conv_params(weight: Any, bias: Any = None, groups: int = 1) -> dict[str, np.ndarray]:
    """``{'kernel', 'bias'}`` for :class:`jaxconv.nn.Conv` from ``torch.nn.ConvNd``'s tensors."""
    kernel = _kernel(weight, groups, 0, "out_channels")
    return _with_bias(kernel, bias, kernel.shape[-1])


def conv_transpose_params(weight: Any, bias: Any = None, groups: int = 1) -> dict[str, np.ndarray]:
    """``{'kernel', 'bias'}`` for :class:`jaxconv.nn.ConvTranspose` from torch's tensors."""
    kernel = _kernel(weight, groups, 0, "in_channels")
    return _with_bias(kernel, bias, kernel.shape[-2] * groups)


def conv_layer_paths(
    model: nn.Module, *example_args: Any, **example_kwargs: Any
) -> list[tuple[str, ...]]:
    """Paths of the jaxconv ``Conv`` / ``ConvTranspose`` layers of ``model``, in call order.

    Traced abstractly (``jax.eval_shape``), so nothing is computed.
    """
    paths: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, (jnn.Conv, jnn.ConvTranspose)) and module.path not in paths:
            paths.append(module.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), *example_args, **example_kwargs)
    return paths


def params_from_state_dict(
    state_dict: Mapping[str, Any], model: nn.Module, *example_args: Any, **example_kwargs: Any
) -> dict[str, Any]:
    """The params of ``model`` (called on ``example_args``) taken from a torch ``state_dict``.

    Layers pair up in order: the n-th ``*.weight`` of ``state_dict`` (the order torch
    registered its modules) goes to the n-th jaxconv ``Conv`` / ``ConvTranspose`` that
    ``model`` calls. Shapes and biases must match. Groups need no argument: both
    kernel layouts are plain transpositions of torch's.
    """
    weights = [key for key in state_dict if key.endswith(".weight") or key == "weight"]
    paths = conv_layer_paths(model, *example_args, **example_kwargs)
    template = jax.eval_shape(model.init, jax.random.key(0), *example_args, **example_kwargs)
    template = template["params"]
    names = ["/".join(path) for path in paths]
    if len(weights) != len(paths):
        raise ValueError(
            f"state_dict has {len(weights)} weights ({weights}) but the model calls "
            f"{len(paths)} jaxconv conv layers ({names})"
        )
    params: dict[str, Any] = {}
    for key, path, name in zip(weights, paths, names):
        layer = _subtree(template, path)
        prefix = key[: -len("weight")]
        kernel = _reverse_layout(_to_numpy(state_dict[key]))
        if kernel.shape != tuple(layer["kernel"].shape):
            raise ValueError(
                f"{key} {tuple(state_dict[key].shape)} becomes a kernel of shape "
                f"{kernel.shape}, but layer {name} has kernel shape {tuple(layer['kernel'].shape)}"
            )
        if ("bias" in layer) != (prefix + "bias" in state_dict):
            raise ValueError(f"{key} and layer {name} disagree on having a bias")
        values = {"kernel": kernel.astype(layer["kernel"].dtype)}
        if "bias" in layer:
            values["bias"] = _to_numpy(state_dict[prefix + "bias"]).astype(layer["bias"].dtype)
        _set(params, path, values)
    missing = set(_leaf_paths(template)) - set(_leaf_paths(params))
    if missing:
        raise ValueError(f"parameters not in any jaxconv conv layer: {sorted(missing)}")
    return params


def _subtree(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _leaf_paths(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    return [
        p
        for name, sub in tree.items()
        for p in (_leaf_paths(sub, (*path, name)) if isinstance(sub, Mapping) else [(*path, name)])
    ]
