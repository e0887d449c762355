"""jaxconv.nn and jaxconv.nnx against torch.nn with the same weights: outputs,
gradients and errors.

Every config runs every implementation (``impl``) of both the linen and the NNX layer,
compiled together in one jit (the NNX layers compute what the linen ones do on the same
parameters, so XLA's common-subexpression pass merges most of it: little compile time).
A quarter of the transposed-conv configs call ``forward(x, output_size)``, reachable
or one off torch's range.
"""

import functools
import random
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_reference import (
    CONV_LAYER,
    CONV_TRANSPOSE_LAYER,
    TORCH_ERRORS,
    channels_first,
    channels_last,
    kernel_to_torch,
)

from jaxconv import interop
from jaxconv import nn as jnn
from jaxconv import nnx as jnnx

pytestmark = pytest.mark.parity

NUM_TRANSPOSE_CONFIGS = 500
NUM_CONV_CONFIGS = 300
RTOL = 1e-5  # max abs error allowed, as a fraction of the largest torch value
IMPLS = ("reference", "fast")


def _per_dim(rng, ndim, low, high):
    return (
        rng.randint(low, high)
        if rng.random() < 0.5
        else tuple(rng.randint(low, high) for _ in range(ndim))
    )


def _channels(rng, groups):
    """Channel counts divisible by groups, except now and then."""
    cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    if groups > 1 and rng.random() < 0.05:
        cin += 1
    return cin, cout


def transpose_config(seed: int) -> dict:
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


def output_size(cfg: dict, seed: int) -> dict | None:
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


def _torch_layer(cfg: dict, transposed: bool):
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


def _jax_layer(cfg: dict, transposed: bool, impl: str):
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


def _nnx_forward(cfg: dict, transposed: bool, impl: str):
    """``(apply(x, params, **call), abstract params)`` of the NNX layer, built abstractly
    (no initialisation is computed); raises where the constructor refuses ``cfg``."""
    ndim, k = cfg["ndim"], cfg["kernel_size"]
    common = dict(
        in_features=cfg["in_channels"],
        out_features=cfg["out_channels"],
        kernel_size=(k,) * ndim if isinstance(k, int) else k,
        stride=cfg["stride"],
        padding=cfg["padding"],
        dilation=cfg["dilation"],
        groups=cfg["groups"],
        use_bias=cfg["bias"],
        impl=impl,
    )
    if transposed:
        layer, extra = jnnx.ConvTranspose, dict(output_padding=cfg["output_padding"])
    else:
        layer, extra = jnnx.Conv, dict(padding_mode=cfg["padding_mode"])

    def make():
        return layer(**common, **extra, rngs=nnx.Rngs(0))

    graphdef, abstract = nnx.split(nnx.eval_shape(make))

    def apply(x, params, **call):
        state = jax.tree.map(lambda leaf: leaf, abstract)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)(x, **call)

    return apply, nnx.to_pure_dict(abstract)


def _torch_run(cfg: dict, transposed: bool, x: torch.Tensor, cotangent_seed: int):
    """torch's layer, output and gradients of <output, r> for a random r; None if torch raises."""
    size = cfg.get("output_size")
    call = {}
    if size is not None:
        whole = (x.shape[0], cfg["out_channels"], *size["sizes"])
        call = dict(output_size=whole if size["whole"] else size["sizes"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = _torch_layer(cfg, transposed)
            y = layer(x, **call)
    except TORCH_ERRORS:
        return None
    if 0 in y.shape:
        return None  # some torch CPU kernels allow an empty output, others raise
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(cotangent_seed))
    (y * r).sum().backward()
    return layer, y, r


def assert_close(got, expected, what):
    expected = np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(np.asarray(got) - expected).max(initial=0.0))
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} > {RTOL} x {scale:.3g}"


def _jax_call(cfg: dict, batch: int) -> dict:
    """The keyword arguments of jaxconv's call: torch's ``output_size``, channels-last."""
    size = cfg.get("output_size")
    if size is None:
        return {}
    whole = (batch, *size["sizes"], cfg["out_channels"])
    return dict(output_size=whole if size["whole"] else size["sizes"])


def check_against_torch(cfg: dict, transposed: bool, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(cfg["batch"], cfg["in_channels"], *cfg["spatial"], requires_grad=True)
    reference = _torch_run(cfg, transposed, x, seed)
    x_jax = jnp.asarray(channels_last(x))
    call = _jax_call(cfg, cfg["batch"])
    if reference is None:
        for impl in IMPLS:
            with pytest.raises(ValueError):
                _jax_layer(cfg, transposed, impl).init(jax.random.key(0), x_jax, **call)
            with pytest.raises(ValueError):
                apply, abstract = _nnx_forward(cfg, transposed, impl)
                jax.eval_shape(functools.partial(apply, **call), x_jax, abstract)
        return
    torch_layer, y, r = reference
    to_params = interop.conv_transpose_params if transposed else interop.conv_params
    params = to_params(torch_layer.weight, torch_layer.bias, cfg["groups"])
    applies = {impl: _jax_layer(cfg, transposed, impl) for impl in IMPLS}
    applies = {
        **{
            f"linen {impl}": lambda x, p, layer=layer: layer.apply({"params": p}, x, **call)
            for impl, layer in applies.items()
        },
        **{
            f"nnx {impl}": functools.partial(_nnx_forward(cfg, transposed, impl)[0], **call)
            for impl in IMPLS
        },
    }

    # One compile for every implementation and layer; XLA's HLO passes run as in
    # production, only LLVM's code generation is left unoptimised (half the compile time).
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def forward_and_vjp(x, params, cotangent):
        results = {}
        for name, apply in applies.items():
            y, vjp = jax.vjp(apply, x, params)
            results[name] = (y, *vjp(cotangent))
        return results

    results = forward_and_vjp(x_jax, params, jnp.asarray(channels_last(r)))
    for name, (y_jax, dx, dparams) in results.items():
        assert_close(channels_first(y_jax), y.detach().numpy(), f"{name}: output")
        assert_close(channels_first(dx), x.grad.numpy(), f"{name}: input gradient")
        assert_close(
            kernel_to_torch(dparams["kernel"]),
            torch_layer.weight.grad.numpy(),
            f"{name}: kernel gradient",
        )
        if cfg["bias"]:
            assert_close(dparams["bias"], torch_layer.bias.grad.numpy(), f"{name}: bias gradient")


@pytest.mark.parametrize("seed", range(NUM_TRANSPOSE_CONFIGS))
def test_conv_transpose_matches_torch(seed):
    cfg = transpose_config(seed)
    check_against_torch({**cfg, "output_size": output_size(cfg, seed)}, transposed=True, seed=seed)


@pytest.mark.parametrize("seed", range(NUM_CONV_CONFIGS))
def test_conv_matches_torch(seed):
    check_against_torch(conv_config(seed), transposed=False, seed=seed)


LECTURE = [  # (kwargs, conv output, transposed-conv output) on a (2, 8, 64, 64) input
    (dict(kernel_size=5), 60, 64),
    (dict(kernel_size=5, padding=2), 64, 64),
    (dict(kernel_size=5, stride=2), 30, 63),
    (dict(kernel_size=5, stride=2, output_padding=1), 30, 64),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kwargs, conv_size, back_size", LECTURE)
def test_lecture_round_trip_through_the_modules(kwargs, conv_size, back_size, impl):
    x = torch.randn(2, 8, 64, 64)
    conv_kwargs = {k: v for k, v in kwargs.items() if k != "output_padding"}
    y = torch.nn.Conv2d(8, 8, **conv_kwargs)(x)
    back = torch.nn.ConvTranspose2d(8, 8, **kwargs)(y)
    assert y.shape[2:] == (conv_size, conv_size) and back.shape[2:] == (back_size, back_size)

    x_jax = jnp.asarray(channels_last(x))
    conv = jnn.Conv(8, impl=impl, **conv_kwargs)
    y_jax = conv.apply(conv.init(jax.random.key(0), x_jax), x_jax)
    convt = jnn.ConvTranspose(8, impl=impl, **kwargs)
    back_jax = convt.apply(convt.init(jax.random.key(1), y_jax), y_jax)
    assert y_jax.shape == (2, conv_size, conv_size, 8)
    assert back_jax.shape == (2, back_size, back_size, 8)
