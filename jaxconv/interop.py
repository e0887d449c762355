"""PyTorch weights to jaxconv parameters and back (no torch import: arrays in, arrays out).

torch's conv ``weight`` is ``(out, in // g, *k)`` and its transposed-conv ``weight``
``(in, out // g, *k)``; jaxconv's kernels are both with the axes reversed
(``(*k, in // g, out)`` and ``(*k, out // g, in)``). The map is a transposition,
hence linear (it carries torch's gradients onto jaxconv's too), exact, and needs
neither the layer type nor ``groups``.

Whole models:

- Flax NNX (:mod:`jaxconv.nnx`): :func:`load_state_dict` and :func:`to_state_dict`
  match torch keys to attribute paths by name: ``decoder.0.weight`` is the ``kernel`` of
  the layer at ``model.decoder.layers[0]`` (an ``nnx.Sequential``'s ``layers`` are
  indexed like ``torch.nn.Sequential``), ``blocks.1.bias`` the ``bias`` of
  ``model.blocks[1]``; a lone layer's keys are ``weight`` and ``bias``.
- Flax linen (:mod:`jaxconv.nn`): linen paths (``encoder/Conv_0``) are not torch's
  names, so a *name map* ``{torch prefix: linen path}`` (``{"encoder.0":
  "encoder/Conv_0"}``) pairs them: :func:`params_from_state_dict` and
  :func:`to_state_dict` take one, and :func:`name_map_by_order` makes one from the
  order of the layers where that order is unambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxconv import nn as jnn
from jaxconv import nnx as jnnx

NameMap = Mapping[str, str]


def _to_numpy(array: Any, name: str = "weight") -> np.ndarray:
    """A numpy view of a numpy/JAX array or a torch tensor (detached, on the CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    result = np.asarray(array)
    if not (np.issubdtype(result.dtype, np.floating) or result.dtype.name == "bfloat16"):
        raise TypeError(f"{name} must be a floating-point array, got dtype {result.dtype}")
    return result


def _reverse_layout(w: np.ndarray) -> np.ndarray:
    """torch ``(a, b, *k)`` to jaxconv ``(*k, b, a)``."""
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _torch_layout(kernel: Any) -> np.ndarray:
    """jaxconv ``(*k, b, a)`` to torch ``(a, b, *k)``: the inverse of :func:`_reverse_layout`."""
    k = np.asarray(kernel)
    n = k.ndim - 2
    return np.array(np.transpose(k, (n + 1, n, *range(n))), order="C")


def _kernel(weight: Any, groups: int, grouped_axis: int, name: str) -> np.ndarray:
    w = _to_numpy(weight)
    if w.ndim not in (3, 4, 5):
        raise ValueError(f"weight must have 3, 4 or 5 dimensions (1-3 spatial), got {w.shape}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
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
    b = _to_numpy(bias, "bias")
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


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_weight(key: str) -> bool:
    return key == "weight" or key.endswith(".weight")


def _check_state_dict(state_dict: Any) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {state_dict!r}")


# Flax linen: layers named by a name map


def conv_layer_paths(
    model: nn.Module, *example_args: Any, **example_kwargs: Any
) -> list[tuple[str, ...]]:
    """Paths of the jaxconv ``Conv`` / ``ConvTranspose`` layers of ``model``, in call order.

    Traced abstractly (``jax.eval_shape``), so nothing is computed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a flax.linen Module, got {type(model).__name__}")
    paths: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, (jnn.Conv, jnn.ConvTranspose)) and module.path not in paths:
            paths.append(module.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), *example_args, **example_kwargs)
    return paths


def _order_is_known(a: str, b: str) -> bool:
    """Whether torch calls the layers named ``a`` and ``b`` in the order of its state_dict:
    where their names first differ, both are indices of one container (``nn.Sequential``
    calls its modules in index order)."""
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            return x.isdigit() and y.isdigit()
    return False


def name_map_by_order(
    state_dict: Mapping[str, Any], model: nn.Module, *example_args: Any, **example_kwargs: Any
) -> dict[str, str]:
    """``{torch prefix: linen path}`` pairing the layers of ``state_dict`` and ``model`` in order.

    The n-th ``*.weight`` of ``state_dict`` (the order in which torch registered its
    modules) pairs with the n-th jaxconv ``Conv`` / ``ConvTranspose`` that ``model`` calls
    on ``example_args``. Registration order is torch's call order inside an indexed
    container (``nn.Sequential``), not necessarily elsewhere, and a wrong pairing shows
    only as a shape mismatch. So the pairing is refused (``ValueError`` naming the keys)
    where it could silently swap two layers: two *look-alikes* (equal ``weight`` and
    ``bias`` shapes) whose names first differ in anything but two indices, such as
    ``first.weight`` and ``second.weight``. Pass a name map for those.
    """
    _check_state_dict(state_dict)
    prefixes = [key[: -len("weight")].rstrip(".") for key in state_dict if _is_weight(key)]
    paths = ["/".join(path) for path in conv_layer_paths(model, *example_args, **example_kwargs)]
    if len(prefixes) != len(paths):
        raise ValueError(
            f"state_dict has {len(prefixes)} weights ({[_key(p, 'weight') for p in prefixes]}) "
            f"but the model calls {len(paths)} jaxconv conv layers ({paths})"
        )
    signatures: dict[tuple, list[str]] = {}
    for prefix in prefixes:
        bias = state_dict.get(_key(prefix, "bias"))
        signature = (np.shape(state_dict[_key(prefix, "weight")]), np.shape(bias), bias is None)
        signatures.setdefault(signature, []).append(prefix)
    for alike in signatures.values():
        for i, a in enumerate(alike):
            for b in alike[i + 1 :]:
                if not _order_is_known(a, b):
                    raise ValueError(
                        f"{_key(a, 'weight')} and {_key(b, 'weight')} have the same shapes and "
                        f"their call order is not known from their names: pairing layers by "
                        f"order could swap them; pass name_map={{torch prefix: linen path}}"
                    )
    return dict(zip(prefixes, paths))


def params_from_state_dict(
    state_dict: Mapping[str, Any],
    model: nn.Module,
    *example_args: Any,
    name_map: NameMap | None = None,
    **example_kwargs: Any,
) -> dict[str, Any]:
    """The params of ``model`` (called on ``example_args``) taken from a torch ``state_dict``.

    ``name_map`` ``{torch prefix: linen path}`` pairs torch's layers with ``model``'s
    jaxconv layers (``{"decoder.1": "decoder/ConvTranspose_0"}``); without it, the pairs
    are :func:`name_map_by_order`'s. Strict, as torch's ``load_state_dict``: every layer
    of ``model`` must be paired, every key of ``state_dict`` used, every shape and bias
    must match (``ValueError`` naming the keys). Groups need no argument: both kernel
    layouts are plain transpositions of torch's.
    """
    _check_state_dict(state_dict)
    if name_map is None:
        name_map = name_map_by_order(state_dict, model, *example_args, **example_kwargs)
    paths = ["/".join(p) for p in conv_layer_paths(model, *example_args, **example_kwargs)]
    _check_name_map(name_map, paths)
    template = jax.eval_shape(model.init, jax.random.key(0), *example_args, **example_kwargs)
    template = template.get("params", {})
    targets = {}
    for prefix, path in name_map.items():
        layer = _subtree(template, tuple(path.split("/")))
        targets[_key(prefix, "weight")] = (path, "kernel", layer["kernel"])
        if "bias" in layer:
            targets[_key(prefix, "bias")] = (path, "bias", layer["bias"])
    values = _checked_values(state_dict, {k: v[2] for k, v in targets.items()})
    params: dict[str, Any] = {}
    for key, (path, name, _) in targets.items():
        _set(params, (*path.split("/"), name), values[key])
    missing = set(_leaf_paths(template)) - set(_leaf_paths(params))
    if missing:
        raise ValueError(f"parameters not in any jaxconv conv layer: {sorted(missing)}")
    return params


def _check_name_map(name_map: Any, layers: list[str]) -> None:
    """``name_map`` must pair one torch prefix with each of ``layers`` (linen paths)."""
    if not isinstance(name_map, Mapping):
        raise TypeError(
            f"name_map must be a mapping of torch prefixes to linen paths, got {name_map!r}"
        )
    targets = list(name_map.values())
    problems = {
        "not layers": sorted({t for t in targets if t not in layers}, key=str),
        "layers not mapped": [layer for layer in layers if layer not in targets],
        "layers mapped twice": sorted({t for t in targets if targets.count(t) > 1}, key=str),
    }
    if any(problems.values()):
        found = "; ".join(f"{what}: {items}" for what, items in problems.items() if items)
        raise ValueError(
            f"name_map must map one torch prefix to each jaxconv conv layer ({layers}); {found}"
        )


def _checked_values(
    state_dict: Mapping[str, Any], expected: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """``state_dict``'s values in jaxconv's layouts and the dtypes of ``expected``
    (``{key: array or ShapeDtypeStruct}``), refused as torch's strict ``load_state_dict``
    refuses: a ``ValueError`` listing every missing, unexpected and mis-shaped key."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    values, mismatched = {}, []
    for key, target in expected.items():
        if key not in state_dict:
            continue
        value = _to_numpy(state_dict[key], key)
        if _is_weight(key) and value.ndim >= 2:
            value = _reverse_layout(value)
        if value.shape != tuple(target.shape):
            mismatched.append(
                f"{key}: {tuple(np.shape(state_dict[key]))} in torch's layout, "
                f"{value.shape} in jaxconv's, but the parameter is {tuple(target.shape)}"
            )
        values[key] = value.astype(target.dtype)
    if missing or unexpected or mismatched:
        problems = [f"missing keys: {missing}"] if missing else []
        problems += [f"unexpected keys: {unexpected}"] if unexpected else []
        problems += [f"shape mismatch: {m}" for m in mismatched]
        raise ValueError("state_dict does not fit the model: " + "; ".join(problems))
    return values


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


# Flax NNX: layers named by their attribute paths


def _nnx_layers(module: nnx.Module) -> dict[str, jnnx.Conv | jnnx.ConvTranspose]:
    """``{torch prefix: layer}`` for the jaxconv NNX layers in ``module``.

    A prefix is the attribute path joined by dots, without the ``layers`` of an
    ``nnx.Sequential``; parameters of other modules raise ``ValueError``, naming them.
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"target must be a flax.nnx Module, got {type(module).__name__}")
    modules = dict(nnx.iter_modules(module))

    def torch_name(path: tuple) -> str:
        parts = [
            str(part)
            for i, part in enumerate(path)
            if not (part == "layers" and isinstance(modules.get(path[:i]), nnx.Sequential))
        ]
        return ".".join(parts)

    layers = {
        path: layer
        for path, layer in modules.items()
        if isinstance(layer, (jnnx.Conv, jnnx.ConvTranspose))
    }
    others = [
        torch_name(path)
        for path, variable in nnx.iter_graph(module)
        if isinstance(variable, nnx.Param) and path[:-1] not in layers
    ]
    if others:
        raise ValueError(
            f"only jaxconv.nnx Conv / ConvTranspose parameters map to torch's; the module "
            f"also has {sorted(others)}"
        )
    return {torch_name(path): layer for path, layer in layers.items()}


def _nnx_params(module: nnx.Module) -> dict[str, nnx.Param]:
    """``{torch key: nnx.Param}`` of the jaxconv layers in ``module``."""
    params = {}
    for prefix, layer in _nnx_layers(module).items():
        params[_key(prefix, "weight")] = layer.kernel
        if layer.bias is not None:
            params[_key(prefix, "bias")] = layer.bias
    return params


def load_state_dict(target: nnx.Module, state_dict: Mapping[str, Any]) -> None:
    """Loads a torch ``state_dict`` into the jaxconv NNX layers of ``target``, in place.

    Keys match by name (see the module docstring); values are converted to jaxconv's
    layouts and to each parameter's dtype. Strict, as torch's ``load_state_dict``: a
    missing key, an unexpected key or a shape mismatch raises ``ValueError`` naming them
    all, and ``target`` is left unchanged. ``target`` may be abstract
    (``nnx.eval_shape(lambda: Model(..., rngs=nnx.Rngs(0)))``): loading makes it concrete
    without computing an initialisation.
    """
    _check_state_dict(state_dict)
    params = _nnx_params(target)
    values = _checked_values(state_dict, {key: p.get_value() for key, p in params.items()})
    for key, param in params.items():
        param.set_value(jnp.asarray(values[key]))


def _linen_layers(params: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{linen path: {'kernel', 'bias'}}`` of a linen params tree of jaxconv conv layers."""
    layers, others = {}, []

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        if "kernel" in tree and not isinstance(tree["kernel"], Mapping):
            if set(tree) <= {"kernel", "bias"} and np.ndim(tree["kernel"]) in (3, 4, 5):
                layers["/".join(path)] = tree
                return
        for name, sub in tree.items():
            if isinstance(sub, Mapping):
                walk(sub, (*path, name))
            else:
                others.append("/".join((*path, name)))

    walk(params, ())
    if others:
        raise ValueError(
            f"params must hold jaxconv conv layers ('kernel' of 3-5 dimensions and "
            f"'bias') only; not such a layer: {sorted(others)}"
        )
    return layers


def to_state_dict(
    source: nnx.Module | Mapping[str, Any],
    name_map: NameMap | None = None,
    *,
    as_torch: bool = False,
) -> dict[str, Any]:
    """jaxconv parameters as a torch ``state_dict``: ``{key: array in torch's layout}``.

    ``source`` is an NNX module (keys from its attribute paths, as
    :func:`load_state_dict` reads them) or linen params (``{'params': ...}`` or what is
    under it), whose layers ``name_map`` ``{torch prefix: linen path}`` names (the map
    :func:`params_from_state_dict` takes; without it a layer's prefix is its linen path
    with dots, ``encoder.Conv_0``). Values are C-contiguous numpy copies, which
    ``torch.from_numpy`` takes; ``as_torch=True`` returns torch tensors (importing torch).
    Either way ``torch_module.load_state_dict`` gets bitwise the parameters' values.
    """
    if isinstance(source, nnx.Module):
        if name_map is not None:
            raise ValueError("name_map is for linen params; an NNX module's names are its paths")
        values = {key: p.get_value() for key, p in _nnx_params(source).items()}
        abstract = [key for key, v in values.items() if isinstance(v, jax.ShapeDtypeStruct)]
        if abstract:
            raise ValueError(f"source is abstract (nnx.eval_shape): no values for {abstract}")
        arrays = {
            key: _torch_layout(v) if _is_weight(key) else np.array(v) for key, v in values.items()
        }
    elif isinstance(source, Mapping):
        arrays = _linen_state_dict(source, name_map)
    else:
        raise TypeError(
            f"source must be a flax.nnx Module or linen params, got {type(source).__name__}"
        )
    return _as_torch(arrays) if as_torch else arrays


def _linen_state_dict(params: Mapping[str, Any], name_map: NameMap | None) -> dict[str, Any]:
    if set(params) == {"params"}:
        params = params["params"]
    layers = _linen_layers(params)
    if name_map is None:
        name_map = {path.replace("/", "."): path for path in layers}
    _check_name_map(name_map, list(layers))
    arrays = {}
    for prefix, path in name_map.items():
        arrays[_key(prefix, "weight")] = _torch_layout(layers[path]["kernel"])
        if "bias" in layers[path]:
            arrays[_key(prefix, "bias")] = np.array(layers[path]["bias"])
    return arrays


def _as_torch(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import torch

    def tensor(a: np.ndarray) -> Any:
        if a.dtype.name == "bfloat16":  # numpy's bfloat16 (ml_dtypes) is not torch's
            return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
        return torch.from_numpy(a)

    return {key: tensor(a) for key, a in arrays.items()}
