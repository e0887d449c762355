"""jaxconv.nnx's torch-semantics layers around the convs, on a few hand-picked cases:
names and shapes of parameters and statistics, train/eval switching, torch's
initialisation, and agreement with torch on one input each.

The random-configuration parity with torch is in test_*_parity_torch.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxconv import nnx as jnnx
from jaxconv import ops
from jaxconv.torch_reference import channels_first, channels_last

torch.manual_seed(0)


def _close(got, expected, tol=1e-5):
    expected = np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.asarray(got).shape == expected.shape
    assert float(np.abs(np.asarray(got) - expected).max()) <= tol * scale


@nnx.jit
def _call(layer: nnx.Module, x: jax.Array) -> jax.Array:
    """``layer(x)`` compiled as one program (eagerly, each operation compiles)."""
    return layer(x)


def _state_names(module, kind):
    return set(nnx.to_pure_dict(nnx.state(module, kind)))


# norms


def test_batch_norm_holds_torchs_parameters_and_statistics_by_the_agreed_names():
    bn = jnnx.BatchNorm(5)
    assert _state_names(bn, nnx.Param) == {"scale", "bias"}
    stats = {"running_mean", "running_var", "num_batches_tracked"}
    assert _state_names(bn, nnx.BatchStat) == stats
    assert bn.running_mean[...].dtype == jnp.float32 and bn.running_var[...].shape == (5,)
    count = bn.num_batches_tracked[...]
    assert count.shape == () and count.dtype == jnp.int32
    bare = jnnx.BatchNorm(5, affine=False, track_running_stats=False)
    assert bare.scale is None and bare.running_mean is None and bare.num_batches_tracked is None


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_batch_norm_follows_torch_through_training_steps_under_jit_then_eval(momentum):
    torch_bn = torch.nn.BatchNorm2d(3, momentum=momentum)
    bn = jnnx.BatchNorm(3, momentum=momentum)
    step = nnx.jit(lambda m, x: m(x))
    for _ in range(3):
        x = torch.randn(4, 3, 5, 6) * 3 + 1
        _close(
            channels_first(step(bn, jnp.asarray(channels_last(x), jnp.float32))),
            torch_bn(x).detach(),
        )
    for name in ("running_mean", "running_var"):
        _close(getattr(bn, name)[...], getattr(torch_bn, name))
    assert int(bn.num_batches_tracked[...]) == 3
    torch_bn.eval()
    bn.eval()
    x = torch.randn(2, 3, 5, 6)
    _close(
        channels_first(step(bn, jnp.asarray(channels_last(x), jnp.float32))), torch_bn(x).detach()
    )
    assert int(bn.num_batches_tracked[...]) == 3  # evaluation leaves the statistics alone


def test_train_and_eval_switch_every_norm_with_running_statistics():
    class Net(nnx.Module):
        def __init__(self):
            self.bn = jnnx.BatchNorm(2)
            self.inorm = jnnx.InstanceNorm(2, track_running_stats=True)

    net = Net()
    assert not net.bn.use_running_average and not net.inorm.use_running_average  # torch: training
    net.eval()
    assert net.bn.use_running_average and net.inorm.use_running_average
    net.train()
    assert not net.bn.use_running_average and not net.inorm.use_running_average


def test_batch_norm_without_running_statistics_uses_the_batch_in_eval_too():
    torch_bn = torch.nn.BatchNorm1d(3, track_running_stats=False).eval()
    bn = jnnx.BatchNorm(3, track_running_stats=False)
    bn.eval()
    x = torch.randn(5, 3) * 2
    _close(_call(bn, jnp.asarray(x.numpy(), jnp.float32)), torch_bn(x).detach())


def test_instance_norm_has_torchs_defaults_no_affine_and_no_statistics():
    inorm = jnnx.InstanceNorm(4)
    assert inorm.scale is None and inorm.running_mean is None
    assert not _state_names(inorm, nnx.Param)
    x = torch.randn(2, 4, 7)
    got = _torch_nchw(inorm, x)
    _close(got, torch.nn.InstanceNorm1d(4)(x))


def test_instance_norm_warns_as_torch_for_unused_num_features():
    x = torch.randn(2, 4, 3, 3)
    with pytest.warns(UserWarning):
        torch.nn.InstanceNorm2d(3)(x)
    with pytest.warns(UserWarning, match="num_features"):
        jnnx.InstanceNorm(3)(jnp.asarray(channels_last(x), jnp.float32))


def test_group_norm_groups_consecutive_channels_as_torch():
    torch_gn = torch.nn.GroupNorm(2, 6)
    with torch.no_grad():
        torch_gn.weight.normal_()
        torch_gn.bias.normal_()
    gn = jnnx.GroupNorm(2, 6)
    gn.scale[...], gn.bias[...] = (
        jnp.asarray(p.detach().numpy(), jnp.float32) for p in torch_gn.parameters()
    )
    x = torch.randn(2, 6, 4, 3) * torch.arange(1.0, 7.0).reshape(1, 6, 1, 1)
    _close(_torch_nchw(gn, x), torch_gn(x).detach())


def test_layer_norm_normalises_the_last_axes_of_the_same_array():
    torch_ln = torch.nn.LayerNorm((4, 5), bias=False)
    ln = jnnx.LayerNorm((4, 5), bias=False)
    assert ln.bias is None and ln.scale[...].shape == (4, 5)
    x = torch.randn(3, 4, 5)
    _close(_call(ln, jnp.asarray(x.numpy(), jnp.float32)), torch_ln(x).detach())


# Linear, PReLU, Flatten


def test_linear_kernel_is_torchs_weight_transposed_with_torchs_init_bound():
    layer = jnnx.Linear(64, 10, rngs=nnx.Rngs(0))
    assert layer.kernel[...].shape == (64, 10) and layer.bias[...].shape == (10,)
    for param in (layer.kernel[...], layer.bias[...]):
        assert 0.8 / 8 < float(jnp.abs(param).max()) <= 1 / 8  # U(-1/sqrt(64), 1/sqrt(64))
    torch_layer = torch.nn.Linear(64, 10)
    layer.kernel[...] = jnp.asarray(torch_layer.weight.detach().numpy().T, jnp.float32)
    layer.bias[...] = jnp.asarray(torch_layer.bias.detach().numpy(), jnp.float32)
    x = torch.randn(2, 3, 64)
    _close(_call(layer, jnp.asarray(x.numpy(), jnp.float32)), torch_layer(x).detach())
    assert jnnx.Linear(3, 2, bias=False, rngs=nnx.Rngs(0)).bias is None


def test_prelu_slopes_run_along_the_channels_last_axis():
    torch_prelu = torch.nn.PReLU(3)
    with torch.no_grad():
        torch_prelu.weight.copy_(torch.tensor([0.1, -0.5, 2.0]))
    prelu = jnnx.PReLU(3)
    assert np.allclose(prelu.weight[...], 0.25)
    prelu.weight[...] = jnp.asarray([0.1, -0.5, 2.0])
    x = torch.randn(2, 3, 4, 4)
    _close(
        _torch_nchw(prelu, x),
        torch_prelu(x).detach(),
    )


def test_flatten_then_linear_takes_torchs_weight_as_it_is():
    torch_head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 2))
    linear = jnnx.Linear(60, 2, rngs=nnx.Rngs(0))
    linear.kernel[...] = jnp.asarray(torch_head[1].weight.detach().numpy().T, jnp.float32)
    linear.bias[...] = jnp.asarray(torch_head[1].bias.detach().numpy(), jnp.float32)
    head = nnx.Sequential(jnnx.Flatten(), linear)
    x = torch.randn(2, 3, 4, 5)
    _close(_call(head, jnp.asarray(channels_last(x), jnp.float32)), torch_head(x).detach())


@pytest.mark.parametrize("start_dim", [0, 1, 2, 3, -1, -4])
def test_flatten_is_torchs_on_the_channels_first_array(start_dim):
    x = torch.randn(2, 3, 4, 5)
    expected = torch.flatten(x, start_dim).numpy()
    if start_dim % 4 >= 2:  # the channel axis survives: channels-last out
        expected = np.moveaxis(expected, 1, -1)
    np.testing.assert_array_equal(
        ops.flatten(jnp.asarray(channels_last(x), jnp.float32), start_dim), expected
    )


def test_the_layers_train_under_nnx_jit_and_grad():
    model = nnx.Sequential(
        jnnx.Conv(2, 4, 3, rngs=nnx.Rngs(0)), jnnx.BatchNorm(4), jnnx.PReLU(4),
        jnnx.GroupNorm(2, 4), jnnx.Flatten(), jnnx.Linear(4 * 6 * 6, 1, rngs=nnx.Rngs(1)),
    )  # fmt: skip
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 8, 2)), jnp.float32)

    @nnx.jit
    def step(model):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads))
        return loss

    losses = [float(step(model)) for _ in range(4)]
    assert losses[3] < losses[2] < losses[1] < losses[0]
    assert int(model.layers[1].num_batches_tracked[...]) == 4


# pooling, up-sampling, pixel shuffling


def _torch_nchw(layer, x):
    return channels_first(_call(layer, jnp.asarray(channels_last(x), jnp.float32)))


def test_max_pool_pads_with_minus_infinity_as_torch():
    x = -1 - torch.rand(1, 2, 5, 5)  # all negative: a zero padding would win every border window
    got = _torch_nchw(jnnx.MaxPool(3, stride=2, padding=1), x)
    np.testing.assert_array_equal(got, torch.nn.MaxPool2d(3, stride=2, padding=1)(x))
    assert got.max() < 0


def test_ceil_mode_keeps_torchs_last_window_rule():
    x = torch.randn(1, 1, 5)
    for padding in (0, 1):
        expected = torch.nn.MaxPool1d(2, stride=2, padding=padding, ceil_mode=True)(x)
        got = _torch_nchw(jnnx.MaxPool((2,), stride=2, padding=padding, ceil_mode=True), x)
        np.testing.assert_array_equal(got, expected)
        assert got.shape[-1] == 3


@pytest.mark.parametrize(
    "kwargs",
    [dict(count_include_pad=True), dict(count_include_pad=False), dict(divisor_override=3)],
    ids=["count_include_pad", "exclude_pad", "divisor_override"],
)
def test_avg_pool_divides_as_torch(kwargs):
    x = torch.randn(2, 3, 6, 7)
    args = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, **kwargs)
    _close(_torch_nchw(jnnx.AvgPool(**args), x), torch.nn.AvgPool2d(**args)(x))


def test_a_pools_kernel_size_fixes_its_spatial_dimensions():
    assert jnnx.MaxPool((2, 2, 2))(jnp.zeros((1, 4, 4, 4, 3))).shape == (1, 2, 2, 2, 3)
    with pytest.raises(ValueError, match="an int kernel_size means 2-D"):
        jnnx.AvgPool(2)(jnp.zeros((1, 4, 3)))


def test_nearest_by_scale_factor_picks_torchs_pixels():
    """1-D: floor(i / 2.1) (0, 0, 0, 1, ...), not i // 2; torch's 2-D kernel halves where
    out == 2n, whatever the scale."""
    x1, x2 = torch.arange(5.0).reshape(1, 1, 5), torch.arange(5.0).reshape(1, 1, 5, 1)
    for x, factor in ((x1, 2.1), (x2, (2.1, 1.0))):
        expected = torch.nn.Upsample(scale_factor=factor)(x)
        np.testing.assert_array_equal(_torch_nchw(jnnx.Upsample(scale_factor=factor), x), expected)
    assert _torch_nchw(jnnx.Upsample(scale_factor=2.1), x1).ravel().tolist()[:4] == [0, 0, 0, 1]


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_by_a_non_integer_scale_is_torchs(align_corners):
    x = torch.randn(1, 2, 4, 5)
    args = dict(scale_factor=(1.7, 0.6), mode="bilinear", align_corners=align_corners)
    _close(_torch_nchw(jnnx.Upsample(**args), x), torch.nn.Upsample(**args)(x))


def test_pixel_shuffle_uses_torchs_channel_order_and_unshuffle_inverts_it():
    x = torch.randn(2, 12, 3, 4)
    shuffled = _torch_nchw(jnnx.PixelShuffle(2), x)
    np.testing.assert_array_equal(shuffled, torch.nn.PixelShuffle(2)(x))
    back = _torch_nchw(jnnx.PixelUnshuffle(2), torch.tensor(np.asarray(shuffled)))
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("dilation", [1, 2])
def test_max_pool_gives_a_tied_windows_gradient_to_its_first_maximum_as_torch(dilation):
    x = torch.zeros(1, 1, 6, 6, requires_grad=True)  # every window tied (as after a ReLU)
    torch.nn.MaxPool2d(2, stride=1, dilation=dilation)(x).sum().backward()
    layer = jnnx.MaxPool(2, stride=1, dilation=dilation)
    grad = jax.jit(jax.grad(lambda x: layer(x).sum()))(jnp.zeros((1, 6, 6, 1)))
    np.testing.assert_array_equal(channels_first(grad), x.grad)


def test_max_pool_gives_a_window_with_nans_gradient_to_its_last_nan_as_torch():
    x = torch.tensor([[[[1.0, np.nan, 2.0], [np.nan, 3.0, np.nan]]]], requires_grad=True)
    torch.nn.MaxPool2d(2, stride=1)(x).sum().backward()
    layer = jnnx.MaxPool(2, stride=1)
    grad = jax.jit(jax.grad(lambda x: layer(x).sum()))(jnp.asarray(channels_last(x.detach())))
    np.testing.assert_array_equal(channels_first(grad), x.grad)


@pytest.mark.parametrize("dilation", [1, 2])
def test_max_pool_gradient_is_no_scatter(dilation):
    """The gradient is the tangent at each window's maximum, selected and placed by strided
    pads (XLA fuses them): JAX's derivative of the maximum over windows, a select and
    scatter (XLA:CPU expands it into a scatter of indices), took 2x2 pooling of 16 x 64 x 64
    x 64 from 2.7 to 54 ms forward and backward."""
    layer = jnnx.MaxPool(3, stride=2, padding=1, dilation=dilation)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: layer(x).sum()))(jnp.zeros((2, 9, 9, 3)))
    primitives = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert not {p for p in primitives if "scatter" in p or "gather" in p}


def test_max_pool_tangent_is_the_adjoint_of_its_gradient():
    """Forward mode: ``<J t, g> = <t, J^T g>``."""
    layer = jnnx.MaxPool(3, stride=2, padding=1)
    x, t = jax.random.normal(jax.random.key(0), (2, 9, 9, 3)), jnp.arange(486.0).reshape(2, 9, 9, 3)
    y, tangent = jax.jvp(layer, (x,), (t,))
    g = jax.random.normal(jax.random.key(1), y.shape)
    (gradient,) = jax.vjp(layer, x)[1](g)
    np.testing.assert_allclose(jnp.vdot(tangent, g), jnp.vdot(t, gradient), rtol=1e-5)


@pytest.mark.parametrize("kind", ["batch", "group", "instance"])
def test_norms_of_values_with_a_large_offset_are_exact_to_float32(kind):
    """Activations 10 +- 0.01: a plain float32 two-pass mean is off by half a unit of 10,
    which x - mean carries into every value (~1e-4 of the output scale); the corrected
    mean keeps within 1e-6 of torch in float64 (torch's float32 is ~2e-5 off here)."""
    torch_layer, layer = {
        "batch": (torch.nn.BatchNorm2d(4), jnnx.BatchNorm(4)),
        "group": (torch.nn.GroupNorm(2, 4), jnnx.GroupNorm(2, 4)),
        "instance": (torch.nn.InstanceNorm2d(4), jnnx.InstanceNorm(4)),
    }[kind]
    x = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.01 + 10
    exact = torch_layer.double()(x.double()).detach().numpy()
    _close(_torch_nchw(layer, x), exact, tol=1e-6)


def test_a_bfloat16_upsamples_gradient_is_summed_in_float32_and_rounded_once():
    """Nearest up-sampling by 7 sums 7 cotangents into each input position: in bfloat16
    each addition would round (up to 8e-2 off here); summed in float32 the result is
    the exact sum rounded once to bfloat16."""
    layer = jnnx.Upsample(scale_factor=7)
    r = jnp.asarray(np.random.default_rng(1).standard_normal((2, 35, 3)), jnp.bfloat16)
    x = jnp.zeros((2, 5, 3), jnp.bfloat16)
    grad = jax.jit(lambda x, r: jax.vjp(layer, x)[1](r)[0])(x, r)
    exact = np.asarray(r, np.float32).reshape(2, 5, 7, 3).sum(axis=2)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_array_equal(grad, jnp.asarray(exact).astype(jnp.bfloat16))
