"""jaxconv.nn and jaxconv.nnx against torch.nn with the same weights: outputs,
gradients and errors, on random configurations (:mod:`jaxconv.torch_reference`).

Every config runs every implementation (``impl``) of both the linen and the NNX layer.
The configs are checked ``CHUNK`` at a time: torch runs each, the ones torch rejects
must be refused by jaxconv (a ValueError), and the others are compiled together in
one jit (one program for the chunk: XLA's per-program cost is paid once, and the NNX
layers compute what the linen ones do on the same parameters, so XLA's
common-subexpression pass merges most of it). A quarter of the transposed-conv
configs call ``forward(x, output_size)``, reachable or one off torch's range.
By default a fixed sample (the first seeds); ``JAXCONV_PARITY=full`` runs all.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import parity_count
from flax import nnx
from layer_parity import QUICK_COMPILE

from jaxconv import interop
from jaxconv import nn as jnn
from jaxconv import nnx as jnnx
from jaxconv.torch_reference import (
    PARITY_IMPLS,
    PARITY_RTOL,
    TORCH_ERRORS,
    channels_first,
    channels_last,
    conv_config,
    jaxconv_layer,
    kernel_to_torch,
    output_size_request,
    torch_layer,
    transpose_config,
)

pytestmark = pytest.mark.parity

NUM_TRANSPOSE_CONFIGS = parity_count(500, 32)
NUM_CONV_CONFIGS = parity_count(300, 24)
CHUNK = 8  # configs per test, compiled as one program


def _chunks(count: int) -> list[range]:
    return [range(start, min(count, start + CHUNK)) for start in range(0, count, CHUNK)]


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
            layer = torch_layer(cfg, transposed)
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
    assert err <= PARITY_RTOL * scale, (
        f"{what}: max abs error {err:.3g} > {PARITY_RTOL} x {scale:.3g}"
    )


def _jax_call(cfg: dict, batch: int) -> dict:
    """The keyword arguments of jaxconv's call: torch's ``output_size``, channels-last."""
    size = cfg.get("output_size")
    if size is None:
        return {}
    whole = (batch, *size["sizes"], cfg["out_channels"])
    return dict(output_size=whole if size["whole"] else size["sizes"])


def _applies(cfg: dict, transposed: bool) -> dict:
    """``{name: apply(x, params)}`` for every implementation of the linen and NNX layers."""
    call = _jax_call(cfg, cfg["batch"])
    linen = {impl: jaxconv_layer(cfg, transposed, impl) for impl in PARITY_IMPLS}
    return {
        **{
            f"linen {impl}": lambda x, p, layer=layer: layer.apply({"params": p}, x, **call)
            for impl, layer in linen.items()
        },
        **{
            f"nnx {impl}": functools.partial(_nnx_forward(cfg, transposed, impl)[0], **call)
            for impl in PARITY_IMPLS
        },
    }


def _assert_refused(cfg: dict, transposed: bool, x_jax: jax.Array) -> None:
    """Every jaxconv layer refuses a configuration torch rejects, with a ValueError."""
    call = _jax_call(cfg, cfg["batch"])
    for impl in PARITY_IMPLS:
        with pytest.raises(ValueError):
            layer = jaxconv_layer(cfg, transposed, impl)
            jax.eval_shape(functools.partial(layer.init, **call), jax.random.key(0), x_jax)
        with pytest.raises(ValueError):
            apply, abstract = _nnx_forward(cfg, transposed, impl)
            jax.eval_shape(functools.partial(apply, **call), x_jax, abstract)


def _to_jax(a: np.ndarray) -> jax.Array:
    """``a`` on the device as float32 (``jnp.asarray`` without a dtype compiles a copy
    program per shape)."""
    return jnp.asarray(a, jnp.float32)


def check_against_torch(configs: dict[int, dict], transposed: bool) -> None:
    """Each ``{seed: cfg}`` against torch: refused where torch raises, else the output
    and the input, kernel and bias gradients of every implementation, in one jit."""
    accepted = {}  # seed -> (cfg, torch layer, x, y, r)
    for seed, cfg in configs.items():
        torch.manual_seed(seed)
        x = torch.randn(cfg["batch"], cfg["in_channels"], *cfg["spatial"], requires_grad=True)
        reference = _torch_run(cfg, transposed, x, seed)
        if reference is None:
            _assert_refused(cfg, transposed, _to_jax(channels_last(x)))
            continue
        layer, y, r = reference
        accepted[seed] = (cfg, layer, x, y, r)
    if not accepted:
        return
    to_params = interop.conv_transpose_params if transposed else interop.conv_params
    applies, args = {}, {}
    for seed, (cfg, layer, x, _, r) in accepted.items():
        applies[seed] = _applies(cfg, transposed)
        params = to_params(layer.weight, layer.bias, cfg["groups"])
        args[seed] = (_to_jax(channels_last(x)), params, _to_jax(channels_last(r)))

    # One compile for every config, implementation and layer (QUICK_COMPILE's options)
    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def forward_and_vjp(args):
        results = {}
        for seed, (x, params, cotangent) in args.items():
            for name, apply in applies[seed].items():
                y, vjp = jax.vjp(apply, x, params)
                results[seed, name] = (y, *vjp(cotangent))
        return results

    for (seed, name), (y_jax, dx, dparams) in forward_and_vjp(args).items():
        cfg, layer, x, y, _ = accepted[seed]
        what = f"seed {seed} {name}"
        assert_close(channels_first(y_jax), y.detach().numpy(), f"{what}: output")
        assert_close(channels_first(dx), x.grad.numpy(), f"{what}: input gradient")
        kernel = kernel_to_torch(dparams["kernel"])
        assert_close(kernel, layer.weight.grad.numpy(), f"{what}: kernel gradient")
        if cfg["bias"]:
            assert_close(dparams["bias"], layer.bias.grad.numpy(), f"{what}: bias gradient")


@pytest.mark.parametrize("seeds", _chunks(NUM_TRANSPOSE_CONFIGS), ids=str)
def test_conv_transpose_matches_torch(seeds):
    configs = {seed: transpose_config(seed) for seed in seeds}
    configs = {
        seed: {**cfg, "output_size": output_size_request(cfg, seed)}
        for seed, cfg in configs.items()
    }
    check_against_torch(configs, transposed=True)


@pytest.mark.parametrize("seeds", _chunks(NUM_CONV_CONFIGS), ids=str)
def test_conv_matches_torch(seeds):
    check_against_torch({seed: conv_config(seed) for seed in seeds}, transposed=False)


LECTURE = [  # (kwargs, conv output, transposed-conv output) on a (2, 8, 64, 64) input
    (dict(kernel_size=5), 60, 64),
    (dict(kernel_size=5, padding=2), 64, 64),
    (dict(kernel_size=5, stride=2), 30, 63),
    (dict(kernel_size=5, stride=2, output_padding=1), 30, 64),
]


@pytest.mark.parametrize("impl", PARITY_IMPLS)
@pytest.mark.parametrize("kwargs, conv_size, back_size", LECTURE)
def test_lecture_round_trip_through_the_modules(kwargs, conv_size, back_size, impl):
    x = torch.randn(2, 8, 64, 64)
    conv_kwargs = {k: v for k, v in kwargs.items() if k != "output_padding"}
    y = torch.nn.Conv2d(8, 8, **conv_kwargs)(x)
    back = torch.nn.ConvTranspose2d(8, 8, **kwargs)(y)
    assert y.shape[2:] == (conv_size, conv_size) and back.shape[2:] == (back_size, back_size)

    def round_trip(x):
        conv = jnn.Conv(8, impl=impl, **conv_kwargs)
        y = conv.apply(conv.init(jax.random.key(0), x), x)
        convt = jnn.ConvTranspose(8, impl=impl, **kwargs)
        return y, convt.apply(convt.init(jax.random.key(1), y), y)

    y_jax, back_jax = jax.eval_shape(round_trip, jnp.asarray(channels_last(x)))  # shapes only
    assert y_jax.shape == (2, conv_size, conv_size, 8)
    assert back_jax.shape == (2, back_size, back_size, 8)
