"""The native CPU kernel gradient (``jaxconv.native``): its formula, where ``fast`` takes
it, and the derivatives around it."""

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import fast_conv, native, ops

NATIVE_TARGET = f'custom_call_target="{native.TARGET}"'


def _normal(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _r_by_loops(x, y, kernel_size, strides, lows, depthwise):
    """``R[*t, i, j] = sum x[n, *(s o + t - lo), i] y[n, *o, j]`` over the outputs ``o``,
    tap by tap in NumPy, ``x`` zero outside its bounds."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    outputs = y.shape[1:-1]
    margins = [k + s * n for k, s, n in zip(kernel_size, strides, outputs)]
    padded = np.pad(x, [(0, 0), *((m, m) for m in margins), (0, 0)])
    r = np.zeros((*kernel_size, 1 if depthwise else x.shape[-1], y.shape[-1]))
    for taps in itertools.product(*(range(k) for k in kernel_size)):
        at = zip(margins, taps, lows, strides, outputs)
        window = padded[
            np.ix_(
                range(x.shape[0]),
                *(m + t - lo + s * np.arange(n) for m, t, lo, s, n in at),
                range(x.shape[-1]),
            )
        ]
        window, cotangent = window.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        if depthwise:
            r[taps][0] = np.sum(window * cotangent, axis=0)
        else:
            r[taps] = window.T @ cotangent
    return r


CASES = {
    "2-D k3 s2, 16 by 1 channels": ((2, 9, 9, 1), (2, 4, 4, 16), (3, 3), (2, 2), (1, 1), False),
    "2-D k4 s2, channels not a multiple of 8": (
        (3, 8, 8, 5),
        (3, 4, 4, 11),
        (4, 4),
        (2, 2),
        (1, 1),
        False,
    ),
    "2-D k2 s3, taps that miss": ((1, 9, 7, 7), (1, 3, 2, 9), (2, 2), (3, 3), (0, 0), False),
    "2-D kernel wider than x": ((2, 3, 2, 2), (2, 3, 3, 8), (3, 5), (1, 1), (1, 2), False),
    "2-D stride 1, padding 2": ((1, 6, 5, 13), (1, 6, 5, 7), (5, 3), (1, 1), (2, 1), False),
    "2-D cropped (negative padding)": (
        (2, 10, 10, 3),
        (2, 4, 4, 8),
        (3, 3),
        (2, 2),
        (-1, 0),
        False,
    ),
    "1-D k25 s4 (WaveGAN-like)": ((2, 64, 1), (2, 16, 24), (25,), (4,), (11,), False),
    "1-D k4 s2, 12 by 20 channels": ((2, 30, 12), (2, 15, 20), (4,), (2,), (1,), False),
    "2-D, y in several tiles of rows": (
        (1, 81, 601, 3),
        (1, 40, 300, 24),
        (3, 3),
        (2, 2),
        (1, 1),
        False,
    ),
    "1-D, y in several tiles": ((1, 12001, 2), (1, 6000, 20), (4,), (2,), (1,), False),
    "2-D, 37 channels of y in panels": (
        (2, 16, 16, 5),
        (2, 8, 8, 37),
        (4, 4),
        (2, 2),
        (1, 1),
        False,
    ),
    "2-D, 256 channels of y in panels, x's rows copied": (
        (1, 9, 9, 3),
        (1, 4, 4, 256),
        (3, 3),
        (2, 2),
        (1, 1),
        False,
    ),
    "2-D k4 s2, 256 channels of y, taps outside x on both sides": (
        (1, 8, 8, 3),
        (1, 4, 4, 256),
        (4, 4),
        (2, 2),
        (1, 1),
        False,
    ),
    "2-D k4 s2, 256 channels of y, x padded by 3 before": (
        (1, 6, 6, 5),
        (1, 5, 5, 256),
        (4, 4),
        (2, 2),
        (3, 3),
        False,
    ),
    "1-D, 260 channels of y in panels": ((2, 41, 5), (2, 20, 260), (4,), (2,), (1,), False),
    "1-D, 64 channels of y in panels, several tiles": (
        (1, 4001, 6),
        (1, 2000, 64),
        (4,),
        (2,),
        (1,),
        False,
    ),
    "3-D k2 s2 (V-Net-like)": (
        (2, 8, 6, 6, 5),
        (2, 4, 3, 3, 24),
        (2, 2, 2),
        (2,) * 3,
        (0,) * 3,
        False,
    ),
    "3-D k3 s2 padded, 40 channels in panels": (
        (1, 9, 9, 7, 3),
        (1, 4, 4, 3, 40),
        (3, 3, 3),
        (2, 2, 2),
        (1, 1, 1),
        False,
    ),
    "2-D, a 9 MiB result (2 MiB pages advised)": (
        (1, 5, 5, 512),
        (1, 2, 2, 512),
        (3, 3),
        (2, 2),
        (0, 0),
        False,
    ),
    "2-D, an empty batch": ((0, 8, 8, 3), (0, 4, 4, 16), (3, 3), (2, 2), (1, 1), False),
    "depthwise k4 s2": ((2, 12, 12, 16), (2, 6, 6, 16), (4, 4), (2, 2), (1, 1), True),
    "depthwise, y in several tiles": (
        (1, 80, 600, 8),
        (1, 40, 300, 8),
        (4, 4),
        (2, 2),
        (1, 1),
        True,
    ),
    "depthwise k8 s4, 8 channels": ((1, 16, 16, 8), (1, 4, 4, 8), (8, 8), (4, 4), (2, 2), True),
}


@pytest.mark.parametrize(
    "x_shape, y_shape, kernel_size, strides, lows, depthwise", CASES.values(), ids=CASES
)
def test_the_native_kernel_gradient_is_its_formula(
    x_shape, y_shape, kernel_size, strides, lows, depthwise
):
    x, y = _normal(x_shape, 1), _normal(y_shape, 2)
    got = jax.jit(native.kernel_grad, static_argnums=(2, 3, 4, 5))(
        x, y, kernel_size, strides, lows, depthwise
    )
    expected = _r_by_loops(x, y, kernel_size, strides, lows, depthwise)
    # float32 sums of thousands of products: their rounding scales with the largest sums
    atol = max(1e-4, 1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=atol)


GROUPED = {
    "2-D k3 s2, 4 groups of 8 by 16 channels": ((2, 9, 9, 32), (2, 4, 4, 64), (3, 3), (2, 2), 4),
    "2-D k3 s2, 2 groups of 3 by 48 channels, several tiles": (
        (1, 33, 65, 6),
        (1, 16, 32, 96),
        (3, 3),
        (2, 2),
        2,
    ),
    "1-D k4 s2, 2 groups of 5 by 256 channels": ((2, 41, 10), (2, 20, 512), (4,), (2,), 2),
    "2-D k3 s2, 2 groups of 16 by 40 channels, each tile copied once for all rows": (
        (2, 9, 9, 32),
        (2, 4, 4, 80),
        (3, 3),
        (2, 2),
        2,
    ),
    "3-D k2 s2, 2 groups of 4 by 16 channels": (
        (1, 4, 4, 4, 8),
        (1, 2, 2, 2, 32),
        (2, 2, 2),
        (2, 2, 2),
        2,
    ),
}


@pytest.mark.parametrize(
    "x_shape, y_shape, kernel_size, strides, groups", GROUPED.values(), ids=GROUPED
)
def test_the_native_kernel_gradient_in_groups_is_each_groups_formula(
    x_shape, y_shape, kernel_size, strides, groups
):
    x, y = _normal(x_shape, 1), _normal(y_shape, 2)
    lows = (1,) * len(kernel_size)
    got = jax.jit(native.kernel_grad, static_argnums=(2, 3, 4, 5, 6))(
        x, y, kernel_size, strides, lows, False, groups
    )
    xs, ys = np.split(np.asarray(x), groups, axis=-1), np.split(np.asarray(y), groups, axis=-1)
    expected = np.concatenate(
        [_r_by_loops(a, b, kernel_size, strides, lows, False) for a, b in zip(xs, ys)], axis=-1
    )
    atol = max(1e-4, 1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=atol)


def test_taps_that_reach_no_pixel_are_zero_where_one_tile_writes_the_gradient():
    """One image in one tile: the kernel writes each reached row of ``R`` once, without
    reading it, and zeroes the rest (here the last of 5 taps reaches no column of ``x``),
    whatever its buffer held: that of a temporary of NaNs just before."""
    x, y = _normal((1, 3, 2, 2), 1), _normal((1, 3, 3, 8), 2)

    def nans_then_gradient(x, y, one):
        nans = jnp.sum(jnp.full((3, 5, 2, 8), jnp.nan) * one, axis=(0, 1))
        r = native.kernel_grad(x, y, (3, 5), (1, 1), (1, 2), False)
        return r * 2 - r, nans

    got, _ = jax.jit(nans_then_gradient)(x, y, jnp.float32(1))
    expected = _r_by_loops(x, y, (3, 5), (1, 1), (1, 2), False)
    assert not expected[:, 4].any()
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def _kernel_gradient(layer, x, kernel, **kwargs):
    return jax.grad(lambda k: jnp.sum(layer(x, k, impl="fast", **kwargs) ** 2))(kernel)


def _native_in_kernel_gradient(layer, x, kernel, **kwargs) -> bool:
    """Whether the compiled kernel gradient of ``layer`` calls the native kernel."""
    grad = jax.jit(lambda x, k: _kernel_gradient(layer, x, k, **kwargs))
    return NATIVE_TARGET in grad.lower(x, kernel).as_text(dialect="hlo")


LAYERS = {
    "transposed k3 s2 op1": (
        ops.conv_transpose,
        (4, 7, 7, 16),
        (3, 3, 1, 16),
        dict(stride=2, padding=1, output_padding=1),
    ),
    "transposed 1-D k4 s2": (
        ops.conv_transpose,
        (2, 32, 12),
        (4, 8, 12),
        dict(stride=2, padding=1),
    ),
    "transposed depthwise k4 s2": (
        ops.conv_transpose,
        (2, 8, 8, 16),
        (4, 4, 1, 16),
        dict(stride=2, padding=1, groups=16),
    ),
    "transposed k3 s2 in 4 groups": (
        ops.conv_transpose,
        (2, 8, 8, 32),
        (3, 3, 4, 32),
        dict(stride=2, padding=1, groups=4),
    ),
    "transposed 3-D k2 s2": (
        ops.conv_transpose,
        (2, 4, 4, 4, 16),
        (2, 2, 2, 8, 16),
        dict(stride=2),
    ),
    "conv k3 s2 of one channel": (
        ops.conv,
        (4, 14, 14, 1),
        (3, 3, 1, 16),
        dict(stride=2, padding=1),
    ),
}


@pytest.mark.parametrize("layer, x_shape, kernel_shape, kwargs", LAYERS.values(), ids=LAYERS)
def test_fast_takes_a_few_channel_kernel_gradient_from_the_native_kernel(
    layer, x_shape, kernel_shape, kwargs
):
    x, kernel = _normal(x_shape, 1), _normal(kernel_shape, 2)
    assert _native_in_kernel_gradient(layer, x, kernel, **kwargs)
    expected = jax.grad(lambda k: jnp.sum(layer(x, k, impl="reference", **kwargs) ** 2))(kernel)
    got = _kernel_gradient(layer, x, kernel, **kwargs)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_kernel_gradient_with_many_channel_pairs_stays_on_xlas_route():
    x, kernel = _normal((2, 4, 4, 512)), _normal((3, 3, 256, 512))
    assert not _native_in_kernel_gradient(ops.conv_transpose, x, kernel, stride=2, padding=1)


def test_groups_of_y_channels_not_a_multiple_of_8_stay_on_xlas_route():
    x, kernel = _normal((2, 8, 8, 12)), _normal((3, 3, 4, 12))
    kwargs = dict(stride=2, padding=1, groups=4)
    assert not _native_in_kernel_gradient(ops.conv_transpose, x, kernel, **kwargs)


def test_a_kernel_of_more_than_64_taps_stays_on_xlas_route():
    """FCN's k16 s8 (256 taps): XLA's route by phases was 1.5x faster than the native one."""
    x, kernel = _normal((1, 9, 9, 21)), _normal((16, 16, 21, 21))
    assert not _native_in_kernel_gradient(ops.conv_transpose, x, kernel, stride=8)


def _gradients_where_an_im2col_is_shared(x, kernel, argnums, output_padding: int) -> str:
    """The HLO of the gradients in ``argnums`` of a k s2 p1 transposed conv of ``x``, where
    XLA's route would take both from one im2col of the cotangent (checked first)."""
    kwargs = dict(stride=2, padding=1, output_padding=output_padding)
    out = ops.conv_transpose(x, kernel, impl="fast", **kwargs)
    pads = ((1, 1 - output_padding),) * 2
    assert fast_conv._shared_windows_wanted(
        out, x, kernel.shape, fast_conv.Geometry((2, 2), pads, (1, 1))
    )

    def loss(x, k):
        return jnp.sum(ops.conv_transpose(x, k, impl="fast", **kwargs) ** 2)

    return jax.jit(jax.grad(loss, argnums)).lower(x, kernel).as_text(dialect="hlo")


def test_both_gradients_take_the_native_kernel_gradient_over_one_shared_im2col():
    """Where XLA's route would take the input and kernel gradients from one im2col of the
    cotangent, the kernel gradient is native all the same (the autoencoder's train step,
    images/s against torch, medians of 11 paired rounds: 1.38x -> 1.49x at batch 1024,
    1.38x -> 1.52x at 256)."""
    x, kernel = _normal((4, 8, 8, 32)), _normal((3, 3, 16, 32))
    assert NATIVE_TARGET in _gradients_where_an_im2col_is_shared(x, kernel, (0, 1), 1)


def test_a_native_kernel_gradient_waits_for_the_input_gradient():
    """With both gradients of a transposed conv wanted and ``R`` native, ``R`` reads the
    cotangent from an optimization barrier that ``C``'s result passes too: XLA:CPU ran
    them at once, on the same 2 cores (Mask R-CNN's forward+backward 21.6 -> 19.2 ms)."""
    x, kernel = _normal((4, 8, 8, 32)), _normal((3, 3, 16, 32))
    kwargs = dict(stride=2, padding=1, output_padding=1)

    def loss(x, k):
        return jnp.sum(ops.conv_transpose(x, k, impl="fast", **kwargs) ** 2)

    equations = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, kernel).jaxpr.eqns
    barriers = [e for e in equations if e.primitive.name == "optimization_barrier"]
    (native_r,) = [e for e in equations if e.primitive.name == "jaxconv_native_kernel_grad"]
    assert any(native_r.invars[0] in b.outvars for b in barriers)
    grads = jax.jit(jax.grad(loss, (0, 1)))(x, kernel)
    expected = jax.grad(
        lambda x, k: jnp.sum(ops.conv_transpose(x, k, impl="reference", **kwargs) ** 2), (0, 1)
    )
    for got, want in zip(grads, expected(x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("argnums, native", [((0, 1), False), (1, True)])
def test_a_transposed_conv_to_3_channels_takes_both_gradients_from_one_shared_im2col(
    argnums, native
):
    """Not native where both gradients are wanted and XLA's route shares one im2col of the
    cotangent between them, which replaces a slow conv of 3 channels (DCGAN G5's
    forward+backward 17.0 -> 16.2 ms); native where only the kernel gradient is."""
    x, kernel = _normal((4, 16, 16, 64)), _normal((4, 4, 3, 64))
    grads = _gradients_where_an_im2col_is_shared(x, kernel, argnums, 0)
    assert (NATIVE_TARGET in grads) == native


@pytest.mark.parametrize("argnums, native", [((0, 1), False), (1, True)])
def test_a_3d_transposed_conv_to_one_channel_takes_both_gradients_from_one_shared_im2col(
    argnums, native
):
    """jax#31662's layer (3-D k3 s2 to one channel): with both gradients wanted, XLA's one
    im2col of the cotangent for both took 0.935 and 0.948 of the time of the native kernel
    gradient beside ``C``; native where only the kernel gradient is."""
    x, kernel = _normal((1, 6, 6, 6, 8)), _normal((3, 3, 3, 1, 8))
    kwargs = dict(stride=2, padding=1, output_padding=1)

    def loss(x, k):
        return jnp.sum(ops.conv_transpose(x, k, impl="fast", **kwargs) ** 2)

    hlo = jax.jit(jax.grad(loss, argnums)).lower(x, kernel).as_text(dialect="hlo")
    assert (NATIVE_TARGET in hlo) == native


ELIGIBLE = (ops.conv_transpose, (2, 6, 6, 8), (3, 3, 4, 8), dict(stride=2, padding=1))


def _with_xla_route(monkeypatch, f, *args):
    with monkeypatch.context() as m:
        m.setattr(fast_conv, "NATIVE_MAX_CHANNEL_PAIRS", 0)
        return f(*args)


def test_forward_mode_through_the_kernel_is_xlas_route_and_agrees(monkeypatch):
    layer, x_shape, kernel_shape, kwargs = ELIGIBLE
    x, kernel, tangent = _normal(x_shape, 1), _normal(kernel_shape, 2), _normal(kernel_shape, 3)

    def jvp(kernel, tangent):
        return jax.jvp(lambda k: layer(x, k, impl="fast", **kwargs), (kernel,), (tangent,))

    got = jvp(kernel, tangent)
    expected = _with_xla_route(monkeypatch, jvp, kernel, tangent)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_second_derivatives_through_the_native_kernel_gradient_agree(monkeypatch):
    """The gradient of a function of the kernel gradient, in the input and the kernel."""
    layer, x_shape, kernel_shape, kwargs = ELIGIBLE
    x, kernel = _normal(x_shape, 1), _normal(kernel_shape, 2)

    def outer(x, kernel):
        inner = jax.grad(lambda k: jnp.sum(jnp.sin(layer(x, k, impl="fast", **kwargs))))
        return jnp.sum(inner(kernel) ** 2)

    got = jax.grad(outer, argnums=(0, 1))(x, kernel)
    expected = _with_xla_route(monkeypatch, jax.grad(outer, argnums=(0, 1)), x, kernel)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_a_vmapped_kernel_gradient_is_each_ones():
    layer, x_shape, kernel_shape, kwargs = ELIGIBLE
    xs, kernel = _normal((3, *x_shape), 1), _normal(kernel_shape, 2)
    got = jax.vmap(lambda x: _kernel_gradient(layer, x, kernel, **kwargs))(xs)
    for x, g in zip(xs, got):
        np.testing.assert_allclose(g, _kernel_gradient(layer, x, kernel, **kwargs), rtol=1e-5)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )


PROBE = """
import warnings
import jax, jax.numpy as jnp
from jaxconv import native, ops
x, k = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
grad = jax.jit(jax.grad(lambda k: jnp.sum(ops.conv_transpose(x, k, stride=2, impl="fast"))))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    text = grad.lower(k).as_text(dialect="hlo")
print(native.available(), native.TARGET in text, int(grad(k).sum()))
print(*(str(w.message) for w in caught))
"""


def test_without_a_compiler_the_xla_route_gives_the_gradient_with_a_warning(tmp_path):
    run = _run(PROBE, CXX="/nonexistent/c++", JAXCONV_CACHE_DIR=str(tmp_path))
    assert run.returncode == 0, run.stderr
    first, warning = run.stdout.splitlines()[:2]
    assert first.split()[:2] == ["False", "False"]
    assert "did not build" in warning and "XLA's route is used" in warning
    native_run = _run(PROBE, JAXCONV_CACHE_DIR=str(tmp_path))
    assert native_run.stdout.split()[:2] == ["True", "True"], native_run.stderr
    assert first.split()[2] == native_run.stdout.split()[2]


def test_jaxconv_native_0_turns_the_kernel_off(tmp_path):
    run = _run(PROBE, JAXCONV_NATIVE="0", JAXCONV_CACHE_DIR=str(tmp_path))
    assert run.stdout.split()[:2] == ["False", "False"], run.stderr
    assert not list(tmp_path.iterdir())  # nothing built


def test_the_native_kernel_gradient_is_the_same_from_call_to_call():
    """Its threads' partial sums are added in one order, whichever thread made them (a
    resumed training run repeats an uninterrupted one bit for bit)."""
    x, y = _normal((8, 40, 40, 3), 1), _normal((8, 20, 20, 16), 2)
    call = jax.jit(native.kernel_grad, static_argnums=(2, 3, 4, 5))
    first = np.asarray(call(x, y, (3, 3), (2, 2), (1, 1), False))
    for _ in range(30):
        np.testing.assert_array_equal(np.asarray(call(x, y, (3, 3), (2, 2), (1, 1), False)), first)


@pytest.mark.parametrize(
    "channels, native", [((128, 64), True), ((256, 256), True), ((512, 256), False)]
)
def test_the_native_kernel_gradient_takes_at_most_256_x_256_channel_pairs(channels, native):
    """Past 256 x 256 channel pairs, XLA's route (kernel gradient alone over XLA's route,
    medians of 9 paired rounds: WaveGAN up 4's 128 -> 64, k25 s4, 0.69; WaveGAN up 3's 256
    -> 128 0.89; Mask R-CNN's 256 -> 256 0.82; 512 x 1024 and more 1.08-1.18)."""
    in_channels, out_channels = channels
    x, kernel = _normal((2, 64, in_channels)), _normal((25, out_channels, in_channels))
    kwargs = dict(stride=4, padding=11, output_padding=1)

    def loss(k):
        return jnp.sum(ops.conv_transpose(x, k, impl="fast", **kwargs) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(kernel).as_text(dialect="hlo")
    assert (NATIVE_TARGET in hlo) == native
