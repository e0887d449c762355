"""PyTorch weights to jaxconv parameters and back (no torch import: arrays in, arrays out).

torch's conv ``weight`` is ``(out, in // g, *k)`` and its transposed-conv ``weight``
``(in, out // g, *k)``; jaxconv's kernels are both with the axes reversed
(``(*k, in // g, out)`` and ``(*k, out // g, in)``). The map is a transposition,
hence linear (it carries torch's gradients onto jaxconv's too), exact, and needs
neither the layer type nor ``groups``.

Whole models:

- Flax NNX: :func:`load_state_dict` and :func:`to_state_dict` match torch keys to
  attribute paths by name: ``decoder.0.weight`` is the ``kernel`` of the layer at
  ``model.decoder.layers[0]`` (an ``nnx.Sequential``'s ``layers`` are indexed like
  ``torch.nn.Sequential``), ``blocks.1.running_mean`` the ``running_mean`` of
  ``model.blocks[1]``; a lone layer's keys are ``weight``, ``bias``, ... Which layers
  map, under which names and with which layout change, is one table, :data:`LAYERS`:
  :mod:`jaxconv.nnx`'s layers and Flax's own ``Linear``, ``Conv``, ``BatchNorm``,
  ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``, ``Embed`` and ``PReLU``.
- Flax linen (:mod:`jaxconv.nn`, conv layers only): linen paths (``encoder/Conv_0``)
  are not torch's names, so a *name map* ``{torch prefix: linen path}``
  (``{"encoder.0": "encoder/Conv_0"}``) pairs them: :func:`params_from_state_dict` and
  :func:`to_state_dict` take one, and :func:`name_map_by_order` makes one from the
  order of the layers where that order is unambiguous.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxconv import nn as jnn
from jaxconv import nnx as jnnx

NameMap = Mapping[str, str]


def _to_numpy(array: Any, name: str = "weight", integer: bool = False) -> np.ndarray:
    """A numpy view of a numpy/JAX array or a torch tensor (detached, on the CPU): of a
    floating-point dtype (``bfloat16`` included), or an integer one where ``integer``."""
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":  # .numpy() refuses it: the same bits
            import torch  # already imported by whoever made the tensor

            array = array.view(torch.int16).numpy().view(jnp.bfloat16)
        else:
            array = array.numpy()
    result = np.asarray(array)
    if integer:
        if not np.issubdtype(result.dtype, np.integer):
            raise TypeError(f"{name} must be an integer array, got dtype {result.dtype}")
    elif not (np.issubdtype(result.dtype, np.floating) or result.dtype == jnp.bfloat16):
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

Convert = Callable[[np.ndarray], np.ndarray]
Rename = Union[Mapping[str, str], Callable[[str], str]]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _scalar(array: np.ndarray) -> np.ndarray:
    """torch's one-slope ``PReLU`` weight ``(1,)`` to Flax's scalar ``negative_slope``."""
    return array.reshape(()) if array.shape == (1,) else array


def _one(array: np.ndarray) -> np.ndarray:
    return array.reshape(1)


@dataclasses.dataclass(frozen=True)
class Slot:
    """One tensor of a torch layer and where an NNX layer keeps it.

    ``torch_name`` is the tensor's name in torch (``weight``); ``attribute`` the NNX
    layer's attribute holding it (``kernel``), or ``None`` where the layer has no place
    for it (the tensor is read, checked and dropped, and not written back); ``to_jax``
    and ``to_torch`` convert between the layouts (each the other's inverse);
    ``integer`` marks a counter (torch ``int64``, here ``int32``).
    """

    torch_name: str
    attribute: str | None
    to_jax: Convert = _same
    to_torch: Convert = _same
    integer: bool = False


_WEIGHT_REVERSED = Slot("weight", "kernel", _reverse_layout, _torch_layout)
_BIAS = Slot("bias", "bias")
_AFFINE = (Slot("weight", "scale"), _BIAS)
_RUNNING = (
    Slot("running_mean", "running_mean"),
    Slot("running_var", "running_var"),
    Slot("num_batches_tracked", "num_batches_tracked", integer=True),
)

# torch's tensors of each NNX layer type (a subclass takes its base's entry). The reversed
# layout is the conv's (out, in/g, *k) <-> (*k, in/g, out) and, for a 2-D weight, Linear's
# (out, in) <-> (in, out). Flax's BatchNorm keeps no batch count: torch's is read and
# dropped, and not exported (torch's load_state_dict then keeps its module's own count).
LAYERS: dict[type, tuple[Slot, ...]] = {
    jnnx.Conv: (_WEIGHT_REVERSED, _BIAS),
    jnnx.ConvTranspose: (_WEIGHT_REVERSED, _BIAS),
    jnnx.Linear: (_WEIGHT_REVERSED, _BIAS),
    jnnx.BatchNorm: (*_AFFINE, *_RUNNING),
    jnnx.InstanceNorm: (*_AFFINE, *_RUNNING),
    jnnx.GroupNorm: _AFFINE,
    jnnx.LayerNorm: _AFFINE,
    jnnx.PReLU: (Slot("weight", "weight"),),
    nnx.Conv: (_WEIGHT_REVERSED, _BIAS),
    nnx.Linear: (_WEIGHT_REVERSED, _BIAS),
    nnx.BatchNorm: (
        *_AFFINE,
        Slot("running_mean", "mean"),
        Slot("running_var", "var"),
        Slot("num_batches_tracked", None, integer=True),
    ),
    nnx.LayerNorm: _AFFINE,
    nnx.GroupNorm: _AFFINE,
    nnx.InstanceNorm: _AFFINE,
    nnx.Embed: (Slot("weight", "embedding"),),
    nnx.PReLU: (Slot("weight", "negative_slope", _scalar, _one),),
}


class IncompatibleKeys(NamedTuple):
    """What :func:`load_state_dict` did not match, as torch's ``load_state_dict`` returns it:
    the model's keys that ``state_dict`` lacks, and ``state_dict``'s keys (as given) that
    the model lacks."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _slots_of(layer: nnx.Module) -> tuple[Slot, ...] | None:
    for cls in type(layer).__mro__:
        if cls in LAYERS:
            return LAYERS[cls]
    return None


def _nnx_slots(model: nnx.Module) -> dict[str, tuple[Slot, nnx.Variable | None]]:
    """``{torch key: (slot, variable)}`` for every tensor of the known layers in ``model``.

    A key is the layer's attribute path joined by dots, without the ``layers`` of an
    ``nnx.Sequential``, then the slot's torch name; ``variable`` is ``None`` for a tensor
    the layer has no place for. A parameter or batch statistic outside those slots
    raises ``ValueError``, naming it.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx Module, got {type(model).__name__}")
    modules = dict(nnx.iter_modules(model))

    def torch_name(path: tuple) -> str:
        parts = [
            str(part)
            for i, part in enumerate(path)
            if not (part == "layers" and isinstance(modules.get(path[:i]), nnx.Sequential))
        ]
        return ".".join(parts)

    slots: dict[str, tuple[Slot, nnx.Variable | None]] = {}
    covered = set()
    for path, layer in modules.items():
        for slot in _slots_of(layer) or ():
            variable = None if slot.attribute is None else getattr(layer, slot.attribute, None)
            if slot.attribute is not None and variable is None:
                continue  # an optional tensor this layer does not have (bias=False)
            slots[_key(torch_name(path), slot.torch_name)] = (slot, variable)
            covered.add((*path, slot.attribute))
    others = [
        torch_name(path)
        for path, variable in nnx.iter_graph(model)
        if isinstance(variable, (nnx.Param, nnx.BatchStat)) and path not in covered
    ]
    if others:
        # as users import them: flax.nnx.Conv, jaxconv.nnx.Conv
        known = sorted(f"{cls.__module__.split('.')[0]}.nnx.{cls.__name__}" for cls in LAYERS)
        raise ValueError(
            f"model has parameters or batch statistics outside the layers that map to torch's "
            f"({known}): {sorted(others)}"
        )
    return slots


def _renamed(keys: Any, rename: Rename | None) -> dict[str, str]:
    """``{renamed key: key}``: ``rename`` is a function of a key, or ``{regex: replacement}``
    applied in order, each ``re.sub`` to the previous one's result."""
    if rename is None:
        change: Callable[[str], str] = _same  # type: ignore[assignment]
    elif isinstance(rename, Mapping):
        try:
            patterns = [(re.compile(p), r) for p, r in rename.items()]
        except (re.error, TypeError) as error:
            raise ValueError(
                f"rename must map regular expressions to replacements: {error}"
            ) from error

        def change(key: str) -> str:
            for pattern, replacement in patterns:
                key = pattern.sub(replacement, key)
            return key

    elif callable(rename):
        change = rename
    else:
        raise TypeError(
            f"rename must be a mapping {{regex: replacement}} or a function of the key, got "
            f"{rename!r}"
        )
    renamed: dict[str, str] = {}
    for key in keys:
        new = change(key)
        if not isinstance(new, str):
            raise TypeError(f"rename must give a str for {key!r}, got {new!r}")
        if new in renamed:
            raise ValueError(f"rename gives {new!r} for both {renamed[new]!r} and {key!r}")
        renamed[new] = key
    return renamed


def load_state_dict(
    model: nnx.Module,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    rename: Rename | None = None,
) -> IncompatibleKeys:
    """Loads a torch ``state_dict`` into ``model``'s layers by name, in place.

    Keys match by name (see the module docstring and :data:`LAYERS`); values go through
    each slot's layout change and take the variable's dtype (torch ``bfloat16`` too,
    bitwise). ``rename`` maps ``state_dict``'s keys (torch's names) to the model's keys:
    a function of the key, or ``{regex: replacement}`` applied in order (``re.sub`` each
    on the previous result). Every check runs before anything is assigned: a shape
    mismatch always raises ``ValueError``, and with ``strict`` (torch's default) a
    missing or unexpected key does too, naming them all, and ``model`` is left
    unchanged. With ``strict=False`` what matches is loaded and the rest returned:
    :class:`IncompatibleKeys` (empty lists when everything matched). ``model`` may be
    abstract (``nnx.eval_shape(lambda: Model(..., rngs=nnx.Rngs(0)))``): loading makes it
    concrete without computing an initialisation (what ``strict=False`` left missing
    stays abstract).
    """
    slots = _nnx_slots(model)
    _check_state_dict(state_dict)
    names = _renamed(state_dict, rename)
    missing = [
        key for key, (_, variable) in slots.items() if variable is not None and key not in names
    ]
    unexpected = [source for key, source in names.items() if key not in slots]
    values, mismatched = {}, []
    for key, source in names.items():
        if key not in slots:
            continue
        slot, variable = slots[key]
        given = _to_numpy(state_dict[source], source, integer=slot.integer)
        try:
            value = slot.to_jax(given)
        except ValueError:  # a transposition of another rank
            value = given
        if variable is None:
            continue
        target = variable.get_value()
        if value.shape != tuple(target.shape):
            mismatched.append(
                f"{source}: {given.shape} in torch's layout, {value.shape} in jaxconv's, "
                f"but the model's {key} is {tuple(target.shape)}"
            )
        values[key] = value.astype(target.dtype)
    if mismatched or (strict and (missing or unexpected)):
        problems = [f"missing keys: {missing}"] if missing else []
        problems += [f"unexpected keys: {unexpected}"] if unexpected else []
        problems += [f"shape mismatch: {m}" for m in mismatched]
        raise ValueError("state_dict does not fit the model: " + "; ".join(problems))
    for key, value in values.items():
        slots[key][1].set_value(jnp.asarray(value, value.dtype))  # dtype: no copy program
    return IncompatibleKeys(missing, unexpected)


def _nnx_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    arrays = {}
    abstract = []
    for key, (slot, variable) in _nnx_slots(model).items():
        if variable is None:
            continue
        value = variable.get_value()
        if isinstance(value, jax.ShapeDtypeStruct):
            abstract.append(key)
            continue
        value = np.asarray(value)
        value = value.astype(np.int64) if slot.integer else slot.to_torch(value)
        arrays[key] = np.array(value, order="C")
    if abstract:
        raise ValueError(f"source is abstract (nnx.eval_shape): no values for {abstract}")
    return arrays


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
    rename: Rename | None = None,
) -> dict[str, Any]:
    """jaxconv parameters as a torch ``state_dict``: ``{key: array in torch's layout}``.

    ``source`` is an NNX module (every tensor of its layers in :data:`LAYERS`, keyed by
    attribute path as :func:`load_state_dict` reads them; batch counters as ``int64``)
    or linen params of jaxconv conv layers (``{'params': ...}`` or what is under it), whose
    layers ``name_map`` ``{torch prefix: linen path}`` names (the map
    :func:`params_from_state_dict` takes; without it a layer's prefix is its linen path
    with dots, ``encoder.Conv_0``). ``rename`` maps these keys to the ones written (the
    other direction from :func:`load_state_dict`'s): a function of the key or ``{regex:
    replacement}`` applied in order. Values are C-contiguous numpy copies, which
    ``torch.from_numpy`` takes; ``as_torch=True`` returns torch tensors (importing torch).
    Either way ``torch_module.load_state_dict`` gets bitwise the values (``bfloat16``
    too).
    """
    if isinstance(source, nnx.Module):
        if name_map is not None:
            raise ValueError("name_map is for linen params; an NNX module's names are its paths")
        arrays = _nnx_state_dict(source)
    elif isinstance(source, Mapping):
        arrays = _linen_state_dict(source, name_map)
    else:
        raise TypeError(
            f"source must be a flax.nnx Module or linen params, got {type(source).__name__}"
        )
    arrays = {new: arrays[key] for new, key in _renamed(arrays, rename).items()}
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
        if a.dtype == jnp.bfloat16:  # numpy's bfloat16 (ml_dtypes) is not torch's: same bits
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    return {key: tensor(a) for key, a in arrays.items()}
