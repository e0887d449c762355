"""jaxconv.nn: parameters, PyTorch's initialisation, and input validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from layer_parity import QUICK_COMPILE

from jaxconv import nn as jnn
from jaxconv import ops

KEY = jax.random.key(0)
torch.manual_seed(0)  # the torch layers below are drawn at collection


def _params(layer, x):
    return jax.jit(layer.init, compiler_options=QUICK_COMPILE)(KEY, x)["params"]


def _shapes(layer, x):
    """``layer``'s parameters as shapes (nothing computed)."""
    return jax.eval_shape(layer.init, KEY, x)["params"]


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_spatial_rank_comes_from_the_input(ndim):
    x = jax.ShapeDtypeStruct((2, *([6] * ndim), 4), jnp.float32)
    conv = jnn.Conv(8, 3)
    assert jax.eval_shape(conv.init_with_output, KEY, x)[0].shape == (2, *([4] * ndim), 8)
    layer = jnn.ConvTranspose(8, 3, stride=2, padding=1, output_padding=1)
    assert jax.eval_shape(layer.init_with_output, KEY, x)[0].shape == (2, *([12] * ndim), 8)


def test_parameters_are_kernel_and_bias_in_the_documented_layouts():
    x = jnp.zeros((1, 5, 5, 6))
    conv = _shapes(jnn.Conv(4, (3, 2), groups=2), x)
    convt = _shapes(jnn.ConvTranspose(4, (3, 2), groups=2), x)
    assert {k: v.shape for k, v in conv.items()} == {"kernel": (3, 2, 3, 4), "bias": (4,)}
    assert {k: v.shape for k, v in convt.items()} == {"kernel": (3, 2, 2, 6), "bias": (4,)}


def test_use_bias_false_has_no_bias_parameter():
    x = jnp.zeros((1, 5, 3))
    assert set(_shapes(jnn.ConvTranspose(4, 3, use_bias=False), x)) == {"kernel"}


@pytest.mark.parametrize(
    "ours, theirs, in_channels",
    [
        (jnn.Conv(48, 5, groups=2), torch.nn.Conv2d(64, 48, 5, groups=2), 64),
        (jnn.ConvTranspose(48, 4, groups=3), torch.nn.ConvTranspose2d(96, 48, 4, groups=3), 96),
    ],
)
def test_default_init_has_torchs_distribution(ours, theirs, in_channels):
    """U(-b, b) with b = 1/sqrt(weight.shape[1] * prod(kernel_size)), weight and bias."""
    params = _params(ours, jnp.zeros((1, 8, 8, in_channels)))
    weight = theirs.weight.detach().numpy()
    bound = 1 / np.sqrt(np.prod(weight.shape[1:]))
    for got, ref in ((params["kernel"], weight), (params["bias"], theirs.bias.detach().numpy())):
        got, ref = np.asarray(got).ravel(), ref.ravel()
        assert got.size == ref.size
        for sample in (got, ref):  # torch's sample confirms the bound
            assert bound * 0.8 < np.abs(sample).max() <= bound
    kernel = np.asarray(params["kernel"]).ravel()
    assert abs(kernel.mean()) < 0.02 * bound
    assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.03)


def test_default_init_draws_what_a_direct_uniform_draw_gives():
    """The flat draw (fast to compile) gives the numbers of ``uniform(key, shape)``."""
    shape = (7, 7, 32, 64)

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)  # one compile for both
    def draws(key):
        return jnn.torch_uniform(0.25)(key, shape), jax.random.uniform(
            key, shape, jnp.float32, -0.25, 0.25
        )

    got, direct = draws(KEY)
    np.testing.assert_array_equal(got, direct)


@pytest.mark.parametrize(
    "layer, shape, message",
    [
        (jnn.Conv(4, 3), (5, 3), "spatial dimensions"),
        (jnn.ConvTranspose(4, 3), (1, 2, 2, 2, 2, 3), "spatial dimensions"),
        (jnn.Conv(4, (3, 3, 3)), (1, 5, 5, 3), "kernel_size"),
        (jnn.Conv(4, 3, groups=2), (1, 5, 5, 3), "divisible by groups"),
        (jnn.ConvTranspose(3, 3, groups=2), (1, 5, 5, 4), "features"),
        (jnn.Conv(4, 3, groups=0), (1, 5, 5, 4), "groups"),
        (jnn.Conv(4, 3, padding=-1), (1, 5, 5, 4), "padding"),
        (jnn.Conv(4, 3, stride=2, padding="same"), (1, 5, 5, 4), "same"),
        (jnn.Conv(4, 7), (1, 5, 5, 4), "kernel_size"),
        (jnn.Conv(4, 3, padding=5, padding_mode="reflect"), (1, 5, 5, 4), "reflect"),
        (jnn.Conv(4, 3, padding_mode="mirror"), (1, 5, 5, 4), "padding_mode"),
        (jnn.ConvTranspose(4, 3, stride=2, output_padding=2), (1, 5, 5, 4), "output_padding"),
        (jnn.ConvTranspose(4, 1, padding=1), (1, 1, 1, 4), "padding"),
    ],
)
def test_bad_input_raises_value_error_before_tracing(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        jax.jit(layer.init)(KEY, jnp.zeros(shape))


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_a_bfloat16_bias_gradient_is_summed_in_float32(op, impl):
    # d<y, r>/d bias is the sum of r over batch and pixels: 64 * 16 * 16 = 16,384 terms,
    # which a bfloat16 running sum rounds far off; float32 gets it to bfloat16's precision.
    x = jnp.ones((64, 16, 16, 4), jnp.bfloat16)
    kernel = jnp.ones((3, 3, 4, 4), jnp.bfloat16)
    r = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (64, 16, 16, 4)), jnp.float32)

    def loss(bias):
        fn = getattr(ops, op)
        y = fn(x, kernel, bias, padding=1, impl=impl)
        return jnp.sum(y.astype(jnp.float32) * r)

    grad = jax.jit(jax.grad(loss), compiler_options=QUICK_COMPILE)(jnp.zeros(4, jnp.bfloat16))
    grad = grad.astype(jnp.float32)
    expected = jnp.sum(r.astype(jnp.bfloat16).astype(jnp.float32), axis=(0, 1, 2))
    np.testing.assert_allclose(grad, expected, rtol=2**-7)
