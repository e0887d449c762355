"""MONAI's building blocks (``monai.networks.blocks``, 1.6) on :mod:`jaxconv.nnx`'s layers.

Each class mirrors its MONAI namesake's constructor and module tree, so a MONAI
network's ``state_dict`` keys (``conv.unit0.adn.A.weight``) are the port's attribute
paths. ``act``, ``norm`` and ``dropout`` are given as MONAI's factories take them: a
name or ``(name, {arguments})``, names case-insensitive. Supported here: ``act``
``"relu"``, ``"leakyrelu"``, ``"prelu"``; ``norm`` ``"instance"``, ``"batch"``;
``dropout`` a rate or ``("dropout", {"p": rate})``. Inputs are channels-last
``(batch, *spatial, channels)``; a torch dimension argument (``SkipConnection``'s
``dim``) is torch's and is moved to the channels-last axis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import nnx as jnnx

LayerSpec = Union[str, tuple[str, dict[str, Any]], None]


class NamedSequential(nnx.Module):
    """``torch.nn.Sequential`` with named children: calls them in the order added, each
    the attribute of its name (``NamedSequential(conv=..., adn=...)``: ``conv.weight``,
    ``adn.A.weight``, as torch's ``add_module`` names them)."""

    def __init__(self, **layers: Callable[[jax.Array], jax.Array]) -> None:
        self._order: tuple[str, ...] = ()
        for name, layer in layers.items():
            self.add(name, layer)

    def add(self, name: str, layer: Callable[[jax.Array], jax.Array]) -> None:
        """Appends ``layer`` under ``name`` (torch's ``add_module``)."""
        setattr(self, name, layer)
        self._order = (*self._order, name)

    def __call__(self, x: jax.Array) -> jax.Array:
        for name in self._order:
            x = getattr(self, name)(x)
        return x


def _tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    """MONAI's ``ensure_tuple_rep``: an int repeated ``n`` times, or a sequence of ``n``."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"expected {n} values (one per spatial dimension), got {value}")
    return value


def same_padding(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """MONAI's ``same_padding``: ``(k - 1) / 2 * d`` per dimension, for odd ``(k - 1) * d``
    refused."""
    if any((k - 1) * d % 2 for k, d in zip(kernel_size, dilation)):
        raise ValueError(
            f"same padding needs (kernel_size - 1) * dilation even, got kernel_size="
            f"{tuple(kernel_size)}, dilation={tuple(dilation)}"
        )
    return tuple((k - 1) // 2 * d for k, d in zip(kernel_size, dilation))


def _split(spec: LayerSpec, argument: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec.lower(), {}
    if (
        isinstance(spec, tuple)
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], dict)
    ):
        return spec[0].lower(), dict(spec[1])
    raise TypeError(f"{argument} must be a name or (name, {{arguments}}), got {spec!r}")


def activation(spec: LayerSpec) -> Callable[[jax.Array], jax.Array]:
    """MONAI's ``get_act_layer``: ``relu``, ``leakyrelu`` (``negative_slope``, default
    0.01) or ``prelu`` (:class:`jaxconv.nnx.PReLU`: ``num_parameters``, ``init``);
    ``inplace`` is accepted and means nothing here."""
    name, args = _split(spec, "act")
    args.pop("inplace", None)
    if name == "relu" and not args:
        return jax.nn.relu
    if name == "leakyrelu" and set(args) <= {"negative_slope"}:
        return functools.partial(jax.nn.leaky_relu, negative_slope=args.get("negative_slope", 0.01))
    if name == "prelu":
        return jnnx.PReLU(**args)
    raise ValueError(
        f"act must be 'relu', 'leakyrelu' (negative_slope) or 'prelu' (num_parameters, init), "
        f"got {spec!r}"
    )


def normalization(spec: LayerSpec, channels: int) -> jnnx.InstanceNorm | jnnx.BatchNorm:
    """MONAI's ``get_norm_layer``: ``instance`` (:class:`jaxconv.nnx.InstanceNorm`) or
    ``batch`` (:class:`jaxconv.nnx.BatchNorm`) over ``channels``, with torch's defaults
    unless the arguments say otherwise."""
    name, args = _split(spec, "norm")
    args.setdefault("num_features", channels)
    if name == "instance":
        return jnnx.InstanceNorm(**args)
    if name == "batch":
        return jnnx.BatchNorm(**args)
    raise ValueError(f"norm must be 'instance' or 'batch', got {spec!r}")


def dropout_layer(
    spec: float | LayerSpec, dropout_dim: int, spatial_dims: int, rngs: nnx.Rngs
) -> nnx.Dropout:
    """MONAI's ``get_dropout_layer``: torch's ``Dropout`` (``dropout_dim=1``: each element)
    or ``Dropout2d`` / ``Dropout3d`` (whole channels), as ``nnx.Dropout`` (which follows
    ``model.train()`` / ``model.eval()``; its random masks are not torch's)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        rate = float(spec)
    else:
        name, args = _split(spec, "dropout")
        if name != "dropout" or set(args) - {"p", "inplace"}:
            raise ValueError(f"dropout must be a rate or ('dropout', {{'p': rate}}), got {spec!r}")
        rate = float(args.get("p", 0.5))
    if dropout_dim not in (1, 2, 3):
        raise ValueError(f"dropout_dim must be 1, 2 or 3, got {dropout_dim!r}")
    whole_channels = tuple(range(1, spatial_dims + 1)) if dropout_dim > 1 else ()
    return nnx.Dropout(rate, broadcast_dims=whole_channels, rngs=rngs if rate else None)


class ADN(NamedSequential):
    """MONAI's ``ADN``: normalisation ``N``, dropout ``D`` and activation ``A`` in the order
    of ``ordering`` (default ``"NDA"``), each present when its argument is not None."""

    def __init__(
        self,
        ordering: str = "NDA",
        in_channels: int | None = None,
        act: LayerSpec = "RELU",
        norm: LayerSpec = None,
        norm_dim: int | None = None,
        dropout: float | LayerSpec = None,
        dropout_dim: int | None = None,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__()
        layers: dict[str, Any] = {}
        if norm is not None:
            if norm_dim is None and dropout_dim is None:
                raise ValueError("norm_dim or dropout_dim must be given with norm")
            layers["N"] = normalization(norm, in_channels)
        if act is not None:
            layers["A"] = activation(act)
        if dropout is not None:
            if norm_dim is None and dropout_dim is None:
                raise ValueError("norm_dim or dropout_dim must be given with dropout")
            dims = norm_dim or dropout_dim
            layers["D"] = dropout_layer(dropout, dropout_dim or norm_dim, dims, rngs)
        for item in ordering.upper():
            if item not in "ADN":
                raise ValueError(f"ordering must be made of 'A', 'D' and 'N', got {ordering!r}")
            if item in layers:
                self.add(item, layers[item])


class Convolution(NamedSequential):
    """MONAI's ``Convolution``: ``conv`` (:class:`jaxconv.nnx.Conv`, or
    :class:`jaxconv.nnx.ConvTranspose` when ``is_transposed``) then ``adn``
    (:class:`ADN`), unless ``conv_only`` or no act, norm and dropout. Padding defaults
    to :func:`same_padding`, a transposed conv's ``output_padding`` to ``strides - 1``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int | Sequence[int] = 1,
        kernel_size: int | Sequence[int] = 3,
        adn_ordering: str = "NDA",
        act: LayerSpec = "PRELU",
        norm: LayerSpec = "INSTANCE",
        dropout: float | LayerSpec = None,
        dropout_dim: int | None = 1,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        conv_only: bool = False,
        is_transposed: bool = False,
        padding: int | Sequence[int] | None = None,
        output_padding: int | Sequence[int] | None = None,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels, self.out_channels = in_channels, out_channels
        self.is_transposed = is_transposed
        kernel = _tuple(kernel_size, spatial_dims)
        stride, dilate = _tuple(strides, spatial_dims), _tuple(dilation, spatial_dims)
        pad = same_padding(kernel, dilate) if padding is None else _tuple(padding, spatial_dims)
        common = dict(dilation=dilate, groups=groups, use_bias=bias, rngs=rngs)
        if is_transposed:
            extra = tuple(s - 1 for s in stride) if output_padding is None else output_padding
            conv: Any = jnnx.ConvTranspose(
                in_channels, out_channels, kernel, stride, pad, _tuple(extra, spatial_dims),
                **common,
            )  # fmt: skip
        else:
            conv = jnnx.Conv(in_channels, out_channels, kernel, stride, pad, **common)
        self.add("conv", conv)
        if conv_only or (act is None and norm is None and dropout is None):
            return
        adn = ADN(
            adn_ordering, out_channels, act, norm, spatial_dims, dropout, dropout_dim, rngs=rngs
        )
        self.add("adn", adn)


def _identity(x: jax.Array) -> jax.Array:
    return x


class ResidualUnit(nnx.Module):
    """MONAI's ``ResidualUnit``: ``conv`` (``subunits`` :class:`Convolution` named
    ``unit0``, ``unit1``, ...; the first one strided) plus ``residual`` (identity, or a
    conv where the stride or the channels change: the units' kernel when strided, 1x1
    otherwise)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int | Sequence[int] = 1,
        kernel_size: int | Sequence[int] = 3,
        subunits: int = 2,
        adn_ordering: str = "NDA",
        act: LayerSpec = "PRELU",
        norm: LayerSpec = "INSTANCE",
        dropout: float | LayerSpec = None,
        dropout_dim: int | None = 1,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        last_conv_only: bool = False,
        padding: int | Sequence[int] | None = None,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.spatial_dims = spatial_dims
        self.in_channels, self.out_channels = in_channels, out_channels
        kernel = _tuple(kernel_size, spatial_dims)
        if not padding:
            padding = same_padding(kernel, _tuple(dilation, spatial_dims))
        self.conv = NamedSequential()
        channels, stride = in_channels, strides
        subunits = max(1, subunits)
        for i in range(subunits):
            unit = Convolution(
                spatial_dims, channels, out_channels, stride, kernel, adn_ordering, act, norm,
                dropout, dropout_dim, dilation, bias=bias,
                conv_only=last_conv_only and i == subunits - 1, padding=padding, rngs=rngs,
            )  # fmt: skip
            self.conv.add(f"unit{i}", unit)
            channels, stride = out_channels, 1
        stride = _tuple(strides, spatial_dims)
        strided = any(s != 1 for s in stride)
        if strided or in_channels != out_channels:
            self.residual: Callable[[jax.Array], jax.Array] = jnnx.Conv(
                in_channels,
                out_channels,
                kernel if strided else (1,) * spatial_dims,
                stride,
                padding if strided else 0,
                use_bias=bias,
                rngs=rngs,
            )
        else:
            self.residual = _identity

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x) + self.residual(x)


class SkipConnection(nnx.Module):
    """MONAI's ``SkipConnection``: ``x`` joined with ``submodule(x)``: ``mode`` ``"cat"``
    (along torch's axis ``dim``, default 1: the channels), ``"add"`` or ``"mul"``."""

    def __init__(
        self, submodule: Callable[[jax.Array], jax.Array], dim: int = 1, mode: str = "cat"
    ):
        if mode not in ("cat", "add", "mul"):
            raise ValueError(f"mode must be 'cat', 'add' or 'mul', got {mode!r}")
        self.submodule = submodule
        self.dim, self.mode = dim, mode

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.submodule(x)
        if self.mode == "cat":
            # torch's (N, C, *spatial) axis to channels-last: C is last, spatial move up one
            axis = {0: 0, 1: -1}.get(self.dim, self.dim - 1)
            return jnp.concatenate([x, y], axis=axis)
        return x + y if self.mode == "add" else x * y
