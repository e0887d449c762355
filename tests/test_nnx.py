"""jaxconv.nnx: the NNX layers, their agreement with the linen layers, and what both
gained with them (output_size, dtype / param_dtype, numpy ints).

Torch parity of the NNX layers on random configurations is in test_parity_torch.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from layer_parity import QUICK_COMPILE

from jaxconv import interop, ops, shapes
from jaxconv import nn as jnn
from jaxconv import nnx as jnnx
from jaxconv.torch_reference import channels_first, channels_last

KEY = jax.random.key(0)


def _nnx(transposed, in_features, out_features, kernel_size, **kwargs):
    cls = jnnx.ConvTranspose if transposed else jnnx.Conv
    return cls(in_features, out_features, kernel_size, **kwargs, rngs=nnx.Rngs(0))


def _linen_output(transposed, in_features, out_features, kernel_size, x, call=None, **kwargs):
    """The linen layer's output shape and dtype, and its parameters', traced abstractly."""
    cls = jnn.ConvTranspose if transposed else jnn.Conv
    layer = cls(out_features, kernel_size, **kwargs)
    params = jax.eval_shape(functools.partial(layer.init, **(call or {})), KEY, x)
    return jax.eval_shape(functools.partial(layer.apply, **(call or {})), params, x), params


def _nnx_output(transposed, in_features, out_features, kernel_size, x, call=None, **kwargs):
    """The NNX layer's output shape and dtype, and its parameters', traced abstractly."""

    def run():
        layer = _nnx(transposed, in_features, out_features, kernel_size, **kwargs)
        return layer(x, **(call or {})), nnx.to_pure_dict(nnx.state(layer, nnx.Param))

    y, params = nnx.eval_shape(run)
    return y, {"params": params}


BOTH_APIS = pytest.mark.parametrize("output", [_linen_output, _nnx_output], ids=["linen", "nnx"])
BOTH_OPS = pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transpose"])


@pytest.mark.parametrize(
    "kernel_size, x_shape, y_shape",
    [((3,), (2, 9, 4), (2, 7, 8)), ((3, 2), (2, 9, 9, 4), (2, 7, 8, 8)),
     (3, (1, 5, 5, 4), (1, 3, 3, 8)), ((3, 3, 3), (1, 5, 5, 5, 4), (1, 3, 3, 3, 8))],
)  # fmt: skip
def test_kernel_size_sets_the_rank_and_an_int_means_2d(kernel_size, x_shape, y_shape):
    y, _ = _nnx_output(False, 4, 8, kernel_size, jnp.zeros(x_shape))
    assert y.shape == y_shape


@BOTH_OPS
def test_an_input_of_another_rank_is_refused_naming_the_rule(transposed):
    with pytest.raises(ValueError, match=r"x must be .* 2 spatial dimensions.*int kernel_size"):
        _nnx_output(transposed, 4, 8, 3, jnp.zeros((2, 9, 4)))


@BOTH_OPS
def test_parameters_have_the_linen_layers_names_shapes_and_dtypes(transposed):
    kwargs = dict(kernel_size=(3, 2), groups=2)
    x = jnp.zeros((1, 6, 6, 6))
    _, linen = _linen_output(transposed, 6, 4, x=x, **kwargs)
    _, ours = _nnx_output(transposed, 6, 4, x=x, **kwargs)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
        lambda a: (a.shape, a.dtype), linen
    )


def test_use_bias_false_has_no_bias_parameter():
    layer = _nnx(True, 3, 4, (3,), use_bias=False)
    assert layer.bias is None and set(nnx.to_pure_dict(nnx.state(layer, nnx.Param))) == {"kernel"}


@BOTH_OPS
def test_default_init_is_torchs_uniform_bound(transposed):
    """U(-b, b), b = 1/sqrt(fan_in), for kernel and bias, as jaxconv.nn and torch."""
    layer = _nnx(transposed, 16, 32, (3, 3), groups=2)
    bound = shapes.torch_init_bound(layer.kernel.shape)
    torch_layer = (torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d)(16, 32, 3, groups=2)
    assert bound == pytest.approx(1 / np.sqrt(np.prod(torch_layer.weight.shape[1:])))
    for param in (layer.kernel[...], layer.bias[...]):
        assert 0.8 * bound < float(jnp.abs(param).max()) <= bound


@pytest.mark.parametrize(
    "transposed, kwargs",
    [
        (False, dict(kernel_size=3, stride=0)),
        (False, dict(kernel_size=3, padding=-1)),
        (False, dict(kernel_size=3, stride=2, padding="same")),
        (False, dict(kernel_size=3, padding="full")),
        (False, dict(kernel_size=3, dilation=(1, 2, 3))),
        (False, dict(kernel_size=3, padding_mode="mirror")),
        (False, dict(kernel_size=3, impl="xla")),
        (False, dict(kernel_size=2.0)),
        (False, dict(kernel_size=3, groups=True)),
        (False, dict(kernel_size=3, dtype=jnp.int32)),
        (True, dict(kernel_size=3, padding="same")),
        (True, dict(kernel_size=3, padding_mode="reflect")),
        (True, dict(kernel_size=0)),
        (True, dict(kernel_size=3, groups=0)),
        (True, dict(kernel_size=3, param_dtype="complex64")),
    ],
)
def test_linen_and_nnx_raise_the_same_error(transposed, kwargs):
    """One implementation of the checks: the same exception and message from both APIs."""
    x = jnp.zeros((1, 6, 6, 4))
    errors = []
    for output in (_linen_output, _nnx_output):
        with pytest.raises((TypeError, ValueError)) as caught:
            output(transposed, 4, 8, x=x, **kwargs)
        errors.append((caught.type, str(caught.value)))
    assert errors[0] == errors[1]


def test_channel_counts_are_named_as_each_api_has_them():
    with pytest.raises(ValueError, match=r"the channels of x \(3\) must be divisible by groups"):
        _linen_output(False, 3, 4, 3, jnp.zeros((1, 5, 5, 3)), groups=2)
    with pytest.raises(ValueError, match=r"in_features \(3\) must be divisible by groups"):
        _nnx(False, 3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"out_features \(3\) must be divisible by groups"):
        _nnx(True, 4, 3, 3, groups=2)


@BOTH_OPS
def test_nnx_and_linen_compute_the_same_on_the_same_parameters(transposed):
    kwargs = dict(stride=2, padding=1, dilation=(1, 2), groups=2)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 8, 4)), jnp.float32)
    graphdef, state = nnx.split(_nnx(transposed, 4, 6, (3, 2), **kwargs))
    linen = (jnn.ConvTranspose if transposed else jnn.Conv)(6, (3, 2), **kwargs)

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def both(state, x):
        params = nnx.to_pure_dict(state)
        return nnx.merge(graphdef, state)(x), linen.apply({"params": params}, x)

    np.testing.assert_array_equal(*both(state, x))


@BOTH_APIS
@BOTH_OPS
def test_bfloat16_compute_with_float32_parameters(output, transposed):
    y, params = output(transposed, 4, 8, 3, jnp.zeros((1, 6, 6, 4)), dtype=jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


@BOTH_APIS
def test_param_dtype_sets_the_parameters_and_none_promotes(output):
    y, params = output(True, 4, 8, 3, jnp.zeros((1, 6, 6, 4)), param_dtype=jnp.bfloat16)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert y.dtype == jnp.float32  # a float32 input with bfloat16 weights: float32


def test_a_bfloat16_layer_is_close_to_the_float32_one():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 4)), jnp.float32)
    layer = _nnx(True, 4, 8, 3, stride=2)
    half = _nnx(True, 4, 8, 3, stride=2, dtype=jnp.bfloat16)
    nnx.update(half, nnx.state(layer, nnx.Param))
    (graphdef, state), (half_graphdef, half_state) = nnx.split(layer), nnx.split(half)
    y32, y16 = jax.jit(
        lambda s, h, x: (nnx.merge(graphdef, s)(x), nnx.merge(half_graphdef, h)(x)),
        compiler_options=QUICK_COMPILE,
    )(state, half_state, x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), y32, atol=3e-2 * float(jnp.abs(y32).max()))


@BOTH_APIS
@BOTH_OPS
def test_numpy_integers_are_accepted_as_ints(output, transposed):
    kwargs = dict(stride=np.int64(2), padding=(np.int32(1), 1), groups=np.int64(2))
    x = jnp.zeros((1, 6, 6, 4))
    y, _ = output(transposed, np.int64(4), np.int64(8), np.int64(3), x, **kwargs)
    assert y.shape == ((1, 11, 11, 8) if transposed else (1, 3, 3, 8))


@BOTH_APIS
def test_conv_transpose_takes_padding_mode_zeros(output):
    y, _ = output(True, 4, 8, 3, jnp.zeros((1, 6, 6, 4)), padding_mode="zeros")
    assert y.shape == (1, 8, 8, 8)


@BOTH_APIS
@pytest.mark.parametrize("mode", ["reflect", "circular", "bogus"])
def test_conv_transpose_refuses_other_padding_modes_as_torch(output, mode):
    with pytest.raises(
        ValueError, match='Only "zeros" padding mode is supported for ConvTranspose2d'
    ):
        output(True, 4, 8, 3, jnp.zeros((1, 6, 6, 4)), padding_mode=mode)
    with pytest.raises(
        ValueError, match='Only "zeros" padding mode is supported for ConvTranspose2d'
    ):
        torch.nn.ConvTranspose2d(4, 8, 3, padding_mode=mode)


# output_size: torch's ConvTransposeNd.forward(x, output_size)

# on a 5x5 input, torch reaches output sizes 9..10 x 15..17
TORCH_KWARGS = dict(kernel_size=3, stride=(2, 3), padding=1, dilation=(1, 2))


@pytest.mark.parametrize(
    "torch_size, ours",
    [((10, 16), (10, 16)), ((9, 17), (9, 17)), ((2, 8, 10, 15), (2, 10, 15, 8))],
    ids=["spatial", "spatial-extremes", "whole"],
)
def test_output_size_gives_torchs_output(torch_size, ours):
    torch_layer = torch.nn.ConvTranspose2d(4, 8, **TORCH_KWARGS)
    x = torch.randn(2, 4, 5, 5)
    expected = torch_layer(x, output_size=torch_size).detach().numpy()
    x_jax = jnp.asarray(channels_last(x))
    params = interop.conv_transpose_params(torch_layer.weight, torch_layer.bias)
    layer = _nnx(True, 4, 8, 3, **{k: v for k, v in TORCH_KWARGS.items() if k != "kernel_size"})
    interop.load_state_dict(layer, torch_layer.state_dict())
    linen = jnn.ConvTranspose(8, **TORCH_KWARGS)
    both = nnx.jit(lambda layer, params, x: (layer(x, output_size=ours),
                                             linen.apply({"params": params}, x, ours)))  # fmt: skip
    for got in both(layer, params, x_jax):
        np.testing.assert_allclose(channels_first(got), expected, atol=1e-5)


@BOTH_APIS
@pytest.mark.parametrize("size", [(8, 16), (11, 16), (10, 14), (10, 18), (10,), (1, 10, 16)])
def test_output_size_raises_where_torch_raises(output, size):
    with pytest.raises(ValueError):
        torch.nn.ConvTranspose2d(4, 8, **TORCH_KWARGS)(torch.zeros(2, 4, 5, 5), output_size=size)
    with pytest.raises(ValueError, match="output_size"):
        output(True, 4, 8, x=jnp.zeros((2, 5, 5, 4)), call=dict(output_size=size), **TORCH_KWARGS)


@BOTH_APIS
def test_output_size_overrides_the_layers_output_padding_as_in_torch(output):
    y, _ = output(
        True, 4, 8, 3, jnp.zeros((1, 5, 5, 4)), call=dict(output_size=(12, 12)), stride=2,
        output_padding=5,  # invalid, and ignored, as torch ignores it
    )  # fmt: skip
    assert y.shape == (1, 12, 12, 8)


def test_ops_take_output_padding_or_output_size_not_both():
    x, kernel = (jax.ShapeDtypeStruct(shape, jnp.float32) for shape in ((1, 5, 4), (3, 8, 4)))
    only_size = functools.partial(ops.conv_transpose, stride=2, output_size=(12,))
    assert jax.eval_shape(only_size, x, kernel).shape == (1, 12, 8)  # shapes only
    with pytest.raises(ValueError, match="output_padding or output_size, not both"):
        jax.eval_shape(functools.partial(only_size, output_padding=1), x, kernel)


def test_nnx_jit_and_grad_train_a_layer():
    layer = _nnx(False, 2, 3, (3,), stride=2)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 9, 2)), jnp.float32)

    @nnx.jit
    def step(layer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(layer)
        nnx.update(
            layer, jax.tree.map(lambda p, g: p - 0.1 * g, nnx.state(layer, nnx.Param), grads)
        )
        return loss

    losses = [float(step(layer, x)) for _ in range(3)]
    assert losses[2] < losses[1] < losses[0]


@BOTH_OPS
def test_an_nchw_input_gets_a_channels_last_hint(transposed):
    """Issue 21: a torch-layout input used to get a bare channel-count error."""
    x_nchw = jnp.zeros((2, 4, 9, 7))  # 4 channels on axis 1, as torch has them
    with pytest.raises(ValueError, match=r"channels-first .* channels-last .*moveaxis\(x, 1, -1\)"):
        _nnx_output(transposed, 4, 8, 3, x_nchw)
    linen = (jnn.ConvTranspose if transposed else jnn.Conv)(8, 3)
    params = jax.eval_shape(linen.init, KEY, jnp.moveaxis(x_nchw, 1, -1))
    with pytest.raises(ValueError, match=r"channels-first .* channels-last .*moveaxis\(x, 1, -1\)"):
        jax.eval_shape(linen.apply, params, x_nchw)


def test_a_channel_mismatch_without_the_nchw_pattern_has_no_hint():
    with pytest.raises(ValueError, match=r"x has 5 channels") as caught:
        _nnx_output(False, 4, 8, 3, jnp.zeros((2, 9, 9, 5)))
    assert "channels-first" not in str(caught.value)
