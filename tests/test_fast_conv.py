"""The fast implementation against the reference: selection, paths, and derivatives.

Backend-neutral: every test names its implementation (``"auto"`` is the fast one on
the CPU only) and compares float32 results computed with float32 products (conftest).
First-order parity with PyTorch, for every implementation, is in test_parity_torch.py.
"""

import functools
import itertools
import math
import os
import re
import subprocess
import sys

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from layer_parity import QUICK_COMPILE

from jaxconv import fast_conv, ops
from jaxconv import nn as jnn

KEY = jax.random.key(0)
_YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="  # XLA:CPU's YNN fusion off

TRANSPOSED = dict(
    features=4, kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
    dilation=(1, 2), groups=2,
)  # fmt: skip
CONV = dict(
    features=4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2
)
BOTH_LAYERS = pytest.mark.parametrize(
    "cls, kwargs", [(jnn.ConvTranspose, TRANSPOSED), (jnn.Conv, CONV)]
)


@pytest.fixture
def xla_kernel_gradient(monkeypatch):
    """``R`` by XLA's route, the native kernel off: for tests of that route's structure."""
    monkeypatch.setattr(fast_conv, "NATIVE_MAX_CHANNEL_PAIRS", 0)


def _layers(cls, **kwargs):
    return {impl: cls(impl=impl, **kwargs) for impl in ("reference", "fast")}


def _normal(shape, seed=0, dtype=jnp.float32):
    """Standard normal values drawn by NumPy: an eager ``jax.random`` draw compiles."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _params(layer, x):
    """Random parameters of ``layer``'s shapes (cheaper than compiling ``init``)."""
    shapes = jax.eval_shape(layer.init, KEY, x)["params"]
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), shapes)


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    assert float(np.abs(a - b).max(initial=0.0)) <= rtol * scale


def _fast_agrees(compute, layers, *args, rtol=1e-5):
    """``compute(layer, *args)`` for every implementation, in one jit: fast == reference.
    Returns the results by implementation."""
    results = jax.jit(
        lambda *a: {impl: compute(layer, *a) for impl, layer in layers.items()},
        compiler_options=QUICK_COMPILE,
    )(*args)
    for got, expected in zip(
        jax.tree.leaves(results["fast"]), jax.tree.leaves(results["reference"])
    ):
        _close(got, expected, rtol)
    return results


def _forward_and_vjp(layer, params, x):
    y, vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
    return y, vjp(jnp.cos(y))


@pytest.mark.parametrize(
    "call",
    [
        lambda impl: jnn.ConvTranspose(2, 3, impl=impl).init(KEY, jnp.zeros((1, 4, 4, 2))),
        lambda impl: jnn.Conv(2, 3, impl=impl).init(KEY, jnp.zeros((1, 4, 4, 2))),
        lambda impl: ops.conv_transpose(jnp.zeros((1, 4, 2)), jnp.zeros((3, 2, 2)), impl=impl),
        lambda impl: ops.conv(jnp.zeros((1, 4, 2)), jnp.zeros((3, 2, 2)), impl=impl),
    ],
)
@pytest.mark.parametrize("impl", ["Fast", "xla", None])
def test_an_unknown_impl_is_a_value_error_naming_the_choices(call, impl):
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'reference', 'fast'\)"):
        call(impl)


@pytest.mark.parametrize(
    "backend, auto", [("cpu", "fast"), ("gpu", "reference"), ("tpu", "reference")]
)
def test_auto_is_fast_on_the_cpu_and_the_reference_elsewhere(backend, auto, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert ops.resolve_impl("auto") == auto
    assert ops.resolve_impl("fast") == "fast" and ops.resolve_impl("reference") == "reference"


def _equations(f, *args):
    """The equations of ``f``'s jaxpr, sub-jaxprs included."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from walk(sub)

    return list(walk(jax.make_jaxpr(f)(*args).jaxpr))


def _slice_steps(equations):
    """The steps of every slice among ``equations`` (``None``: unstrided)."""
    return [e.params["strides"] for e in equations if e.primitive.name == "slice"]


def _strided(steps):
    return [s for s in steps if s and max(s) > 1]


def _convs(f, *args):
    """The conv_general_dilated equations of ``f``'s jaxpr, sub-jaxprs included."""
    return [e for e in _equations(f, *args) if e.primitive.name == "conv_general_dilated"]


def _products_by_rows(f, *args):
    """The shapes held by optimization barriers in ``f``'s jaxpr: those of
    :func:`_matmul_t`'s products by rows ``y^T columns``, ``(channels, depth)``, each
    after its ``y^T``, ``(channels, rows)``, where that is written out."""
    return [
        e.invars[0].aval.shape
        for e in _equations(f, *args)
        if e.primitive.name == "optimization_barrier"
    ]


@BOTH_LAYERS
def test_fast_training_convolves_no_dilated_input(cls, kwargs):
    """The reference's transposed conv, or a strided conv's input gradient, dilates
    the input with zeros (``lhs_dilation``); the fast path never does."""
    x = _normal((2, 7, 8, 6))
    used = {}
    for impl, layer in _layers(cls, **kwargs).items():
        params = jax.eval_shape(layer.init, KEY, x)

        def loss(params, x, layer=layer):
            return jnp.sum(layer.apply(params, x) ** 2)

        convs = _convs(jax.grad(loss, argnums=(0, 1)), params, x)
        used[impl] = any(max(e.params["lhs_dilation"]) > 1 for e in convs)
    assert used == {"reference": True, "fast": False}


def _loss(layer, params, x):
    return jnp.sum(jnp.tanh(layer.apply({"params": params}, x)))


@BOTH_LAYERS
def test_second_derivatives_agree(cls, kwargs):
    """Grad of grad (in the parameters and the input) and ``jax.hessian`` (forward over
    reverse) in the kernel."""
    x = _normal((2, 5, 6, 6))
    layers = _layers(cls, **kwargs)

    def derivatives(layer, params, x):
        def grad_norm(params, x):
            return jnp.sum(jax.grad(lambda x: _loss(layer, params, x))(x) ** 2)

        kernel_hessian = jax.hessian(lambda k: _loss(layer, {**params, "kernel": k}, x))(
            params["kernel"]
        )
        return jax.grad(grad_norm, argnums=(0, 1))(params, x), kernel_hessian

    _fast_agrees(derivatives, layers, _params(layers["reference"], x), x, rtol=1e-4)


@BOTH_LAYERS
def test_forward_mode_agrees(cls, kwargs):
    """``jax.jvp`` in the parameters and the input, and ``jax.jacfwd``."""
    x = _normal((2, 5, 6, 6))
    dx = _normal(x.shape, seed=1)
    layers = _layers(cls, **kwargs)

    def forward_mode(layer, params, x, dx):
        dparams = jax.tree.map(jnp.ones_like, params)
        jvp = jax.jvp(lambda p, x: layer.apply({"params": p}, x), (params, x), (dparams, dx))
        jacobian = jax.jacfwd(lambda b: _loss(layer, {**params, "bias": b}, x))(params["bias"])
        return jvp, jacobian

    _fast_agrees(forward_mode, layers, _params(layers["reference"], x), x, dx)


@pytest.mark.parametrize(
    "cls, shape, kwargs",
    [
        # the decoder's first layer: a 1x1 input is one matmul, and so is its gradient
        (jnn.ConvTranspose, (3, 1, 1, 8), dict(features=6, kernel_size=7)),
        (jnn.ConvTranspose, (3, 1, 1, 8), dict(
            features=6, kernel_size=(3, 4), padding=1, output_padding=(1, 0), stride=2,
            dilation=(2, 1),
        )),
        (jnn.ConvTranspose, (3, 1, 8), dict(features=4, kernel_size=5, padding=2, groups=2)),
        # the encoder's last layer: a kernel that covers the input once is one matmul
        (jnn.Conv, (3, 7, 7, 8), dict(features=6, kernel_size=7)),
        (jnn.Conv, (3, 6, 5, 8), dict(
            features=6, kernel_size=(3, 4), padding=1, stride=5, dilation=(2, 1),
        )),
        (jnn.Conv, (3, 2, 2, 2, 4), dict(features=4, kernel_size=2, groups=2)),
    ],
)  # fmt: skip
def test_one_window_paths_agree_with_the_reference(cls, shape, kwargs):
    x = _normal(shape)
    layers = _layers(cls, **kwargs)
    _fast_agrees(_forward_and_vjp, layers, _params(layers["reference"], x), x)


def test_a_one_pixel_inputs_kernel_gradient_is_a_product_by_rows():
    """A 1x1 input of 100 channels to 4x4x64 (DCGAN's first layer, fewer outputs): the
    kernel gradient, 1024 deep, is :func:`_matmul_t`'s product by rows, ``(x^T g)^T``,
    not XLA's dot of ``g^T x``, the wide operand transposed (DCGAN G1: 3.0 -> 1.6 ms)."""
    x = _normal((8, 1, 1, 100))
    layers = _layers(jnn.ConvTranspose, features=64, kernel_size=4)
    params = _params(layers["reference"], x)
    gradients = functools.partial(jax.grad(_loss, (1, 2)), layers["fast"])
    assert _products_by_rows(gradients, params, x) == [(100, 8), (100, 1024)]
    _fast_agrees(_forward_and_vjp, layers, params, x)


# Groups: depthwise (one channel per group: tap by tap), with a channel multiplier (the
# other direction group by group, in and out widths unequal: a wrong group order would
# mix channels), a 1x1 input and 3-D. (BOTH_LAYERS, groups=2, go group by group.)
GROUPED = [
    (jnn.ConvTranspose, (2, 5, 6, 6), dict(
        features=6, kernel_size=4, stride=2, padding=1, groups=6,
    )),
    (jnn.ConvTranspose, (2, 5, 6, 6), dict(
        features=12, kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
        dilation=(1, 2), groups=6,
    )),
    (jnn.ConvTranspose, (2, 1, 1, 4), dict(features=4, kernel_size=3, stride=2, groups=4)),
    (jnn.Conv, (2, 7, 8, 6), dict(features=12, kernel_size=3, stride=2, padding=1, groups=6)),
    (jnn.Conv, (1, 5, 4, 5, 4), dict(features=4, kernel_size=(2, 3, 2), stride=(2, 1, 2),
                                     padding=1, groups=4)),
]  # fmt: skip


@pytest.mark.parametrize("cls, shape, kwargs", GROUPED)
def test_grouped_and_depthwise_layers_agree_with_the_reference(cls, shape, kwargs):
    """Outputs and vjps, fast against the reference."""
    x = _normal(shape)
    layers = _layers(cls, **kwargs)

    def both(params, x):
        return {impl: _forward_and_vjp(layer, params, x) for impl, layer in layers.items()}

    results = jax.jit(both, compiler_options=QUICK_COMPILE)(_params(layers["reference"], x), x)
    for got, expected in zip(*(jax.tree.leaves(results[impl]) for impl in ("fast", "reference"))):
        _close(got, expected)


@pytest.mark.parametrize(
    "shape, kernel_shape, kwargs",
    [
        ((1, 4, 4, 1), (4, 4, 1, 1), dict(stride=2, padding=1)),  # depthwise: tap by tap
        ((1, 4, 4, 2), (3, 3, 2, 2), dict(stride=2, output_padding=1)),  # group by group
    ],
)
@pytest.mark.usefixtures("xla_kernel_gradient")
def test_the_fast_path_is_one_program_whatever_the_groups(shape, kernel_shape, kwargs):
    """Forward and backward of a transposed conv and of a conv with 64 groups trace to
    as many operations as with 32 groups: no per-group repetition (past the 16 groups up
    to which a kernel gradient goes group by group unrolled)."""

    def size(layer, groups):
        x = jnp.zeros((*shape[:-1], shape[-1] * groups))
        kernel = jnp.zeros((*kernel_shape[:-1], kernel_shape[-1] * groups))
        args = dict(kwargs, groups=groups, impl="fast")
        if layer is ops.conv:
            args.pop("output_padding", None)

        def loss(x, kernel):
            return jnp.sum(layer(x, kernel, **args) ** 2)

        return len(_equations(jax.grad(loss, argnums=(0, 1)), x, kernel))

    for layer in (ops.conv_transpose, ops.conv):
        assert size(layer, 64) == size(layer, 32)


def _xla_conv(x, kernel, geometry: fast_conv.Geometry):
    """``C`` by XLA: the 'VALID' conv of ``x`` padded by the geometry's pads."""
    return jax.lax.conv_general_dilated(
        fast_conv._pad(x, geometry.pads), kernel, geometry.strides, "VALID",
        rhs_dilation=geometry.dilation,
        dimension_numbers=fast_conv._dimension_numbers(x.ndim - 2),
        feature_group_count=geometry.groups,
    )  # fmt: skip


def _xla_transposed(y, kernel, geometry: fast_conv.Geometry):
    """``T`` by XLA: the transpose of :func:`_xla_conv`, to ``T``'s output shape."""
    x = fast_conv._transposed_out(y, kernel, geometry)
    return jax.linear_transpose(lambda x: _xla_conv(x, kernel, geometry), x)(y)[0]


def _transposed_conv(y, kernel, geometry: fast_conv.Geometry):
    return fast_conv.conv_transpose(y, kernel, **geometry._asdict())


def _kernel_gradient_problem(x_shape, kernel_shape, geometry: fast_conv.Geometry):
    """``x``, a cotangent ``y`` of ``C(x, K)`` and XLA's ``R(x, y)``: the transpose of its
    conv in the kernel."""
    x = _normal(x_shape)
    kernel = jax.ShapeDtypeStruct(kernel_shape, x.dtype)
    y = _normal(jax.eval_shape(lambda k: _xla_conv(x, k, geometry), kernel).shape, seed=1)

    def xla_kernel_grad(x, y):
        return jax.linear_transpose(lambda k: _xla_conv(x, k, geometry), kernel)(y)[0]

    return x, y, xla_kernel_grad


@pytest.mark.parametrize(
    "x_shape, kernel_shape, geometry",
    [
        ((2, 9, 8, 3), (3, 3, 3, 5), fast_conv.Geometry((2, 2), ((1, 1), (1, 0)), (1, 1))),
        ((2, 10, 10, 4), (4, 4, 4, 6), fast_conv.Geometry((2, 2), ((1, 1), (1, 1)), (1, 1))),
        ((2, 13, 7, 2), (3, 2, 2, 3), fast_conv.Geometry((3, 1), ((2, -1), (0, 2)), (2, 3))),
        ((3, 17, 2), (5, 2, 4), fast_conv.Geometry((4,), ((3, 1),), (2,))),
        ((1, 5, 6, 4, 2), (2, 3, 2, 2, 3), fast_conv.Geometry((2, 1, 3), ((0, 1),) * 3, (1, 2, 1))),
        # depthwise, 4 groups, tap by tap: taps 0 and 2 of the first dimension read only padding
        ((2, 1, 8, 4), (3, 3, 1, 4), fast_conv.Geometry((3, 2), ((4, 4), (3, 0)), (1, 2), 4)),
        # depthwise: k4 s2 p1 and k8 s4 p2 (CenterNet's), rows not a multiple of the stride,
        # dilated, a negative hi, 1-D and 3-D
        ((2, 8, 8, 4), (4, 4, 1, 4), fast_conv.Geometry((2, 2), ((1, 1), (1, 1)), (1, 1), 4)),
        ((1, 16, 16, 2), (8, 8, 1, 2), fast_conv.Geometry((4, 4), ((2, 2), (2, 2)), (1, 1), 2)),
        ((2, 11, 9, 4), (3, 3, 1, 4), fast_conv.Geometry((3, 2), ((1, 2), (0, 0)), (2, 1), 4)),
        ((2, 9, 4), (3, 1, 4), fast_conv.Geometry((2,), ((1, -1),), (1,), 4)),
        ((3, 17, 2), (5, 1, 2), fast_conv.Geometry((4,), ((3, 1),), (2,), 2)),
        (
            (1, 6, 5, 4, 3),
            (2, 3, 2, 1, 3),
            fast_conv.Geometry((2, 1, 2), ((0, 0), (1, 1), (0, 0)), (1, 1, 1), 3),
        ),
    ],
)
def test_both_kernel_gradients_agree_with_xla(x_shape, kernel_shape, geometry):
    """R(x, y) = d<C(x, K), y>/dK by im2col of x, and in the phase domain of T.

    The pads are exact (C reads all of x), as :func:`jaxconv.fast_conv.conv` makes them.
    """
    x, y, xla_kernel_grad = _kernel_gradient_problem(x_shape, kernel_shape, geometry)

    # XLA's and both of ours: one compile
    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def gradients(x, y):
        expected = xla_kernel_grad(x, y)
        ours = [grad(x, y, kernel_shape, geometry) for grad in (
            fast_conv._kernel_grad_direct, fast_conv._kernel_grad_by_phases)]  # fmt: skip
        return expected, ours

    expected, ours = gradients(x, y)
    for got in ours:
        _close(got, expected)


def test_a_3d_kernel_gradient_of_windows_that_do_not_overlap_transposes_no_im2col():
    """k <= s on every axis (k2 s2, k1 s3, k3 s3 with pads): slabs of ``x`` against ``y``,
    one per tap of the leading axes, no transposition of ``x`` into an im2col; equal to
    XLA's."""
    geometry = fast_conv.Geometry((2, 3, 3), ((0, 0), (1, 1), (1, 1)), (1, 1, 1))
    kernel_shape = (2, 1, 3, 2, 3)
    x, y, xla_kernel_grad = _kernel_gradient_problem((2, 6, 5, 7, 2), kernel_shape, geometry)

    def ours(x, y):
        return fast_conv._kernel_grad_direct(x, y, kernel_shape, geometry)

    transposed = [
        e.invars[0].aval.shape for e in _equations(ours, x, y) if e.primitive.name == "transpose"
    ]
    assert not [shape for shape in transposed if len(shape) > 2]
    _close(ours(x, y), xla_kernel_grad(x, y))


def test_a_depthwise_kernel_gradient_sums_once_per_shift_not_per_tap():
    """k4 s2 p1, 8 groups of one channel: 16 taps in 4 shifts of 2x2 phases, so 4 sums and
    no strided slice; equal to XLA's."""
    geometry = fast_conv.Geometry((2, 2), ((1, 1), (1, 1)), (1, 1), 8)
    kernel_shape = (4, 4, 1, 8)
    x, y, xla_kernel_grad = _kernel_gradient_problem((2, 8, 8, 8), kernel_shape, geometry)

    def ours(x, y):
        return fast_conv._kernel_grad(x, y, kernel_shape, geometry)

    equations = _equations(ours, x, y)
    sums = [e for e in equations if e.primitive.name == "reduce_sum"]
    assert len(sums) == 4 and not _strided(_slice_steps(equations))
    _close(ours(x, y), xla_kernel_grad(x, y))


def _one_channel_kernel_gradient_is_chunked(y_channels: int) -> bool:
    """R of 4 images of 32 rows of one channel, 5 taps at stride 4 (an im2col of 8 rows of
    5 numbers, 160 bytes, per image) against ``y``'s ``y_channels``: checked against
    XLA's, and whether it runs a loop over chunks."""
    geometry = fast_conv.Geometry((4,), ((0, 1),), (1,))
    kernel_shape = (5, 1, y_channels)
    x, y, xla_kernel_grad = _kernel_gradient_problem((4, 32, 1), kernel_shape, geometry)

    def ours(x, y):
        return fast_conv._kernel_grad(x, y, kernel_shape, geometry)

    _close(ours(x, y), xla_kernel_grad(x, y))
    return any(e.primitive.name in ("scan", "while") for e in _equations(ours, x, y))


@pytest.mark.parametrize("y_channels, chunked", [(16, False), (2, True)])
def test_a_kernel_gradient_goes_by_chunks_only_where_its_im2col_outweighs_y(
    y_channels, chunked, monkeypatch
):
    """An im2col of 5 numbers per output against ``y``'s 16 (each chunk's matmul would
    copy ``y`` out: the whole batch) or 2 (by chunks)."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", 64)
    assert _one_channel_kernel_gradient_is_chunked(y_channels) == chunked


@pytest.mark.parametrize(
    "chunk_bytes, min_added_bytes, chunked", [(320, 40, False), (320, 41, True), (256, 0, True)]
)
def test_a_kernel_gradient_within_two_chunks_goes_over_the_whole_batch_where_it_is_large(
    chunk_bytes, min_added_bytes, chunked, monkeypatch
):
    """4 images of an im2col of 160 bytes each, against ``y``'s 2 channels: over the whole
    batch where its 640 bytes are at most 2 chunks and the gradient, 5 taps by 2 channels
    (40 bytes), is at least ``WHOLE_MIN_ADDED_BYTES``; a smaller one is added up chunk by
    chunk at little cost."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(fast_conv, "WHOLE_MIN_ADDED_BYTES", min_added_bytes)
    assert _one_channel_kernel_gradient_is_chunked(2) == chunked


@pytest.mark.parametrize(
    "op, x_shape, kernel_shape, kwargs, xla",
    [
        # MelGAN up 1 and 2's form, k16 s8 p4, 64 channels or more each side
        (ops.conv_transpose, (2, 6, 64), (16, 72, 64), dict(stride=8, padding=4), True),
        (ops.conv, (2, 48, 64), (16, 64, 72), dict(stride=8, padding=4), True),
        # a smaller stride (MelGAN up 3's k4 s2), 32 channels on one side, or 25 taps
        (ops.conv_transpose, (2, 24, 64), (4, 72, 64), dict(stride=2, padding=1), False),
        (ops.conv, (2, 24, 64), (3, 64, 72), dict(padding=1), False),
        (ops.conv_transpose, (2, 6, 64), (16, 32, 64), dict(stride=8, padding=4), False),
        (ops.conv_transpose, (2, 24, 64), (25, 72, 64), dict(stride=8, padding=11), False),
    ],
)
def test_a_1d_kernel_gradient_of_stride_8_and_many_channels_is_xlas_conv(
    op, x_shape, kernel_shape, kwargs, xla
):
    """``R`` in 1-D with stride 8 or more, at most 16 taps and 64 channels or more on both
    sides is XLA's conv (the transpose of its conv in the kernel: a conv whose result is
    the kernel's size), and equal to the reference's."""
    x, kernel = _normal(x_shape, 1), _normal(kernel_shape, 2)

    def kernel_gradient(kernel, impl):
        return jax.grad(lambda k: jnp.sum(op(x, k, impl=impl, **kwargs) ** 2))(kernel)

    convs = _convs(functools.partial(kernel_gradient, impl="fast"), kernel)
    size = math.prod(kernel_shape)
    assert any(math.prod(e.outvars[0].aval.shape) == size for e in convs) == xla
    _close(kernel_gradient(kernel, "fast"), kernel_gradient(kernel, "reference"), rtol=1e-4)


@pytest.mark.parametrize("by_rows", [False, True])
def test_a_kernel_gradient_by_rows_or_by_columns_agrees_with_xla(by_rows, monkeypatch):
    """``columns^T y`` as a dot over both operands' rows, or by rows as ``(y^T
    columns)^T``, in both of ``R``'s domains."""
    monkeypatch.setattr(fast_conv, "NN_MAX_CHANNELS", 1 << 30 if by_rows else 0)
    monkeypatch.setattr(fast_conv, "NN_WIDE_MAX_CHANNELS", 0)
    monkeypatch.setattr(fast_conv, "NN_MIN_DEPTH", 0)
    geometry = fast_conv.Geometry((2, 2), ((1, 1), (1, 0)), (1, 1))
    kernel_shape = (3, 3, 4, 5)
    x, y, xla_kernel_grad = _kernel_gradient_problem((2, 9, 8, 4), kernel_shape, geometry)
    grads = [fast_conv._kernel_grad_direct, fast_conv._kernel_grad_by_phases]
    products = _products_by_rows(lambda x, y: grads[0](x, y, kernel_shape, geometry), x, y)
    assert products == ([(5, 36)] if by_rows else [])

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def gradients(x, y):
        return xla_kernel_grad(x, y), [grad(x, y, kernel_shape, geometry) for grad in grads]

    expected, ours = gradients(x, y)
    for got in ours:
        _close(got, expected)


@pytest.mark.parametrize(
    "depth, channels, by_rows",
    [
        (144, 32, True),  # few channels (seg U-Net)
        (256, 128, True),  # an im2col 2x deeper than up to 256 channels (MelGAN up 3)
        (192, 128, False),  # only 1.5x deeper
        (4096, 512, False),  # over 256 channels, 8 rows
    ],
)
def test_a_kernel_gradient_goes_by_rows_of_y_where_its_im2col_is_the_deeper(
    depth, channels, by_rows
):
    """``columns^T y`` by rows, as ``(y^T columns)^T``, with at most 64 channels in ``y``,
    or at most 256 and an im2col at least 2x as deep; else as it is. (Over 8 rows, ``y^T``
    is written out.)"""
    columns, other = _normal((8, depth)), _normal((8, channels), seed=1)
    got = fast_conv._matmul_t(columns, other)
    products = _products_by_rows(fast_conv._matmul_t, columns, other)
    assert products == ([(channels, 8), (channels, depth)] if by_rows else [])
    _close(got, columns.T @ other)


@pytest.mark.parametrize(
    "rows, depth, channels, by_rows",
    [
        (256, 1024, 512, True),  # MelGAN up 1: 256 rows, 4096 deep
        (255, 1024, 512, False),
        (256, 1023, 512, False),  # under twice as deep
        (256, 1026, 513, False),  # over 512 channels
    ],
)
def test_a_product_of_up_to_512_channels_goes_by_rows_where_they_are_long(
    rows, depth, channels, by_rows
):
    """Up to 512 channels, ``columns^T y`` goes by rows, ``y^T`` written out, over at
    least 256 rows and an im2col at least 2x as deep."""
    columns, other = _normal((rows, depth)), _normal((rows, channels), seed=1)
    got = fast_conv._matmul_t(columns, other)
    products = _products_by_rows(fast_conv._matmul_t, columns, other)
    assert products == ([(channels, rows), (channels, depth)] if by_rows else [])
    _close(got, columns.T @ other)


@pytest.mark.parametrize(
    "rows, depth, channels, written",
    [(72, 144, 32, True), (73, 144, 32, False), (600, 256, 128, True)],
)
def test_a_product_by_rows_writes_y_transposed_out_for_short_rows_or_many_channels(
    rows, depth, channels, written
):
    """``(y^T columns)^T`` with ``y^T`` written out for a contraction at most half as long
    as the im2col is deep (DCGAN G3's 1024 rows, 2048 deep) or ``y`` of at least 128
    channels (3-D U-Net's 128), else folded into the dot."""
    columns, other = _normal((rows, depth)), _normal((rows, channels), seed=1)
    got = fast_conv._matmul_t(columns, other)
    products = _products_by_rows(fast_conv._matmul_t, columns, other)
    assert products == [(channels, rows)] * written + [(channels, depth)]
    _close(got, columns.T @ other)


@pytest.mark.parametrize("block", [2, 3])
@pytest.mark.parametrize(
    "x_shape, kernel_shape, geometry",
    [
        # a head row (lo 1), no tail: the rows of x are those of whole blocks
        ((2, 12, 7, 3), (3, 3, 3, 4), fast_conv.Geometry((2, 2), ((1, 0), (1, 0)), (1, 1))),
        # no head, a tail of 2 rows
        ((2, 11, 6, 3), (3, 3, 3, 4), fast_conv.Geometry((1, 1), ((0, 0), (1, 1)), (1, 1))),
        # dilated: a head of 2 rows and a tail of 2
        ((1, 13, 5, 2), (3, 2, 2, 3), fast_conv.Geometry((1, 1), ((2, 0), (0, 0)), (2, 1))),
        # stride 3 over 2 taps: a block reads one row fewer than its own (tail -1)
        ((2, 14, 6, 3), (2, 2, 3, 2), fast_conv.Geometry((3, 2), ((0, 0), (0, 0)), (1, 1))),
        # hi -1: x has a row that no block reads
        ((2, 10, 5, 3), (3, 3, 3, 2), fast_conv.Geometry((2, 1), ((1, -1), (1, 1)), (1, 1))),
        ((1, 8, 4, 3, 2), (3, 2, 2, 2, 3), fast_conv.Geometry((2, 1, 1), ((1, 0),) * 3, (1,) * 3)),
    ],
)
def test_kernel_gradient_by_row_blocks_agrees_with_xla(
    x_shape, kernel_shape, geometry, block, monkeypatch
):
    """R(x, y) summed over blocks of ``block`` rows of y, the last padded where the rows
    do not divide."""
    monkeypatch.setattr(fast_conv, "_row_block", lambda *_: block)
    x, y, xla_kernel_grad = _kernel_gradient_problem(x_shape, kernel_shape, geometry)

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def gradients(x, y):
        expected = xla_kernel_grad(x, y)
        return expected, fast_conv._kernel_grad_by_row_blocks(x, y, kernel_shape, geometry)

    expected, got = gradients(x, y)
    _close(got, expected)


@pytest.mark.parametrize("kernel_size", [3, 5])  # 9 taps: tap by tap; 25: im2col
def test_a_conv_of_one_input_channel_agrees_with_the_reference(kernel_size):
    x = _normal((3, 11, 9, 1))
    layers = _layers(jnn.Conv, features=5, kernel_size=kernel_size, stride=2, padding=1)
    _fast_agrees(_forward_and_vjp, layers, _params(layers["reference"], x), x)


@pytest.mark.parametrize(
    "y_shape, kernel_shape, geometry",
    [
        ((2, 4, 4, 5), (3, 3, 3, 5), fast_conv.Geometry((2, 2), ((1, 1), (1, 0)), (1, 1))),
        ((2, 4, 4, 6), (4, 4, 4, 6), fast_conv.Geometry((2, 2), ((1, 1), (1, 1)), (1, 1))),
        ((2, 4, 3, 3), (3, 2, 2, 3), fast_conv.Geometry((3, 1), ((2, -1), (0, 2)), (2, 3))),
        ((3, 4, 4), (5, 2, 4), fast_conv.Geometry((4,), ((3, 1),), (2,))),
        ((1, 3, 2, 2, 3), (2, 3, 2, 2, 3), fast_conv.Geometry((2, 1, 3), ((0, 1),) * 3, (1, 2, 1))),
        # 2 groups of 3 input channels, 2 output channels each; stride 3 over a 2-tap
        # kernel: one phase gets no tap
        ((2, 3, 4, 6), (2, 3, 2, 6), fast_conv.Geometry((3, 2), ((0, 0), (1, 1)), (1, 1), 2)),
    ],
)
def test_both_transposed_conv_lowerings_agree_with_xla(
    y_shape, kernel_shape, geometry, monkeypatch
):
    """T(y, K), the adjoint of C in its input, by overlap-add and, with the overlap-add
    off (``OVERLAP_ADD_MAX_BYTES`` and ``PHASES_MIN_CHANNELS`` 0), by phases (groups:
    group by group), against the transpose of XLA's conv of the padded input."""
    y = _normal(y_shape)
    kernel = _normal(kernel_shape, seed=1)
    spatial = [
        (n - 1) * s + d * (k - 1) + 1 - lo - hi
        for n, k, s, (lo, hi), d in zip(
            y_shape[1:-1], kernel_shape, geometry.strides, geometry.pads, geometry.dilation
        )
    ]
    x = jax.ShapeDtypeStruct((y_shape[0], *spatial, kernel_shape[-2] * geometry.groups), y.dtype)

    def xla_conv(x):
        return _xla_conv(x, kernel, geometry)

    @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
    def transposed(y, kernel):
        expected = jax.linear_transpose(xla_conv, x)(y)[0]
        ours = []
        for bound, narrowest in ((1 << 40, 16), (0, 0)):
            monkeypatch.setattr(fast_conv, "OVERLAP_ADD_MAX_BYTES", bound)
            monkeypatch.setattr(fast_conv, "PHASES_MIN_CHANNELS", narrowest)
            ours.append(fast_conv._transposed(y, kernel, geometry))
        return expected, ours

    expected, ours = transposed(y, kernel)
    for got in ours:
        _close(got, expected)


@pytest.mark.parametrize(
    "x_shape, kernel_shape, geometry, transposed",
    [
        # 1-D, dilated, stride 3: taps reach two rows of the stride past their own
        ((2, 20, 1), (4, 1, 3), fast_conv.Geometry((3,), ((2, 0),), (2,)), True),
        # 3-D k3 s2 (jax#31662's windows)
        (
            (1, 9, 7, 5, 1),
            (3, 3, 3, 1, 4),
            fast_conv.Geometry((2,) * 3, ((1, 1),) * 3, (1,) * 3),
            True,
        ),
        # 2-D: the im2col as it is, rows first
        ((2, 9, 9, 1), (3, 3, 1, 4), fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1)), False),
    ],
)
def test_a_kernel_gradient_of_one_channel_in_1d_or_3d_takes_its_windows_transposed(
    x_shape, kernel_shape, geometry, transposed
):
    """``R`` of ``x`` of one channel: in 1-D and 3-D one plain matmul of the windows
    transposed, ``(taps, rows)``, against ``y``; in 2-D not; equal to XLA's."""
    x, y, xla_kernel_grad = _kernel_gradient_problem(x_shape, kernel_shape, geometry)
    grad = functools.partial(
        fast_conv._kernel_grad_direct, kernel_shape=kernel_shape, geometry=geometry
    )
    (dot,) = [e for e in _equations(grad, x, y) if e.primitive.name == "dot_general"]
    windows_t = (math.prod(kernel_shape[:-2]), math.prod(y.shape[:-1]))
    plain = dot.params["dimension_numbers"] == (((1,), (0,)), ((), ()))
    assert (dot.invars[0].aval.shape == windows_t and plain) == transposed
    _close(jax.jit(grad)(x, y), xla_kernel_grad(x, y))


@pytest.mark.parametrize(
    "y_shape, kernel_shape, kernel_first",
    [
        # 2x2 pixels against 4 taps x 4 channels: the kernel's 16 rows first
        ((1, 2, 2, 5), (2, 2, 4, 5), True),
        # 2x2 pixels against 4 taps x 3 channels, 12 rows: y first, as with YNNPACK
        ((1, 2, 2, 5), (2, 2, 3, 5), False),
    ],
)
def test_the_overlap_add_product_puts_a_far_larger_kernel_first_where_xla_runs_dots_itself(
    y_shape, kernel_shape, kernel_first, monkeypatch
):
    """With XLA:CPU's own dots (:func:`_dots_by_eigen`), the overlap-add's product of
    ``y`` and the kernel, both contracted over their last axis, has the kernel first
    where it has at least 4x as many rows; its result is the same (against the transpose
    of XLA's conv)."""
    geometry = fast_conv.Geometry((2, 2), ((0, 0), (0, 0)), (1, 1))
    y, kernel = _normal(y_shape), _normal(kernel_shape, seed=1)
    monkeypatch.setattr(fast_conv, "_dots_by_eigen", lambda: True)
    equations = _equations(
        functools.partial(fast_conv._by_overlap_add, geometry=geometry), y, kernel
    )
    (dot,) = [e for e in equations if e.primitive.name == "dot_general"]
    rows = math.prod(kernel_shape[:-1]) if kernel_first else math.prod(y_shape[:-1])
    assert dot.invars[0].aval.shape == (rows, y_shape[-1])
    _close(fast_conv._by_overlap_add(y, kernel, geometry), _xla_transposed(y, kernel, geometry))


def _fast_conv_says(function: str, flags: str) -> str:
    """What ``fast_conv.<function>()`` prints in a process started with ``XLA_FLAGS``."""
    code = f"from jaxconv import fast_conv; print(fast_conv.{function}())"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("flags, by_eigen", [("", False), (_YNN_OFF, True)])
def test_xla_running_its_own_dots_is_read_from_a_compiled_matmul(flags, by_eigen):
    """:func:`_dots_by_eigen`, in a process started with ``XLA_FLAGS`` as given: XLA:CPU
    hands plain matmuls to YNNPACK by default, to its own kernels with the fusion off."""
    assert _fast_conv_says("_dots_by_eigen", flags) == str(by_eigen)


@pytest.mark.parametrize("flags, by_ynn", [("", True), (_YNN_OFF, False)])
def test_xla_handing_its_2d_convs_to_ynnpack_is_read_from_a_compiled_conv(flags, by_ynn):
    assert _fast_conv_says("_convs_by_ynn", flags) == str(by_ynn)


UNPADDED = [
    # k3 s1 (an extra column cropped), k4 s2 of an even width (none), k3 s2 of an odd one,
    # a dilated k3, a 3x1 kernel
    ((2, 17, 18, 32), (3, 3, 32, 8), (1, 1), (1, 1)),
    ((2, 26, 26, 32), (4, 4, 32, 8), (2, 2), (1, 1)),
    ((2, 25, 27, 32), (3, 3, 32, 8), (2, 2), (1, 1)),
    ((2, 20, 20, 32), (3, 3, 32, 8), (1, 1), (2, 2)),
    ((2, 17, 18, 32), (3, 1, 32, 8), (1, 1), (1, 1)),
]  # over IM2COL_MAX_POSITIONS outputs: XLA's conv


@pytest.mark.parametrize("x_shape, kernel_shape, strides, dilation", UNPADDED)
@pytest.mark.parametrize("by_ynn", [True, False])
def test_an_unpadded_2d_conv_gets_a_column_of_padding_where_ynnpack_runs_it(
    x_shape, kernel_shape, strides, dilation, by_ynn, monkeypatch
):
    """YNNPACK's conv of an unpadded input was 1.3-5x slower than with one column of
    padding (a k3 conv of 64x32x32x64 to 128 channels 99 -> 52 ms): where it runs XLA's
    convs, ``C`` with no padding is XLA's conv padded by ``(0, 1)`` along the last axis,
    its output cropped; elsewhere XLA's 'VALID' conv. Equal to XLA's either way."""
    monkeypatch.setattr(fast_conv, "_convs_by_ynn", lambda: by_ynn)
    geometry = fast_conv.Geometry(strides, ((0, 0), (0, 0)), dilation)
    x, kernel = _normal(x_shape), _normal(kernel_shape, seed=1)
    equations = _equations(lambda x, k: fast_conv._strided(x, k, geometry), x, kernel)
    (conv,) = [e for e in equations if e.primitive.name == "conv_general_dilated"]
    assert conv.params["padding"] == (((0, 0), (0, 1)) if by_ynn else ((0, 0), (0, 0)))
    _close(jax.jit(fast_conv._strided, static_argnums=2)(x, kernel, geometry),
           _xla_conv(x, kernel, geometry))  # fmt: skip


def test_a_padded_2d_conv_gets_no_more_padding(monkeypatch):
    monkeypatch.setattr(fast_conv, "_convs_by_ynn", lambda: True)
    geometry = fast_conv.Geometry((1, 1), ((1, 1), (1, 1)), (1, 1))
    x, kernel = _normal((2, 17, 18, 32)), _normal((3, 3, 32, 8), seed=1)
    equations = _equations(lambda x, k: fast_conv._strided(x, k, geometry), x, kernel)
    (conv,) = [e for e in equations if e.primitive.name == "conv_general_dilated"]
    assert conv.params["padding"] == ((0, 0), (0, 0))  # the pad before it, which XLA folds in


FOLDED = [
    # seg U-Net's input gradient (k3 s2, lo 1, hi 0) and a cropped height; k4 x 5 s3 with
    # lo 2, hi 1; a negative hi (output_padding past the padding); lo past the stride (s4);
    # a kernel as wide as its stride
    ((2, 9, 8, 5), (3, 3, 5, 7), fast_conv.Geometry((2, 2), ((1, -1), (1, 0)), (1, 1))),
    ((2, 8, 12, 5), (4, 5, 5, 7), fast_conv.Geometry((1, 3), ((1, 0), (2, 1)), (1, 1))),
    ((2, 7, 8, 5), (3, 3, 5, 7), fast_conv.Geometry((2, 2), ((1, -1), (0, -1)), (1, 1))),
    ((2, 10, 8, 5), (2, 5, 5, 7), fast_conv.Geometry((3, 4), ((1, 0), (5, 2)), (1, 1))),
    ((2, 6, 6, 5), (3, 2, 5, 7), fast_conv.Geometry((1, 2), ((1, 0), (0, 0)), (1, 1))),
]  # fmt: skip


@pytest.mark.parametrize("x_shape, kernel_shape, geometry", FOLDED)
def test_a_conv_with_the_widths_phases_folded_into_channels_agrees_with_xla(
    x_shape, kernel_shape, geometry
):
    x, kernel = _normal(x_shape), _normal(kernel_shape, seed=1)
    folded = jax.jit(fast_conv._by_width_phases, static_argnums=2)(x, kernel, geometry)
    _close(folded, _xla_conv(x, kernel, geometry))


@pytest.mark.parametrize("by_ynn", [True, False])
def test_a_strided_2d_conv_of_16_channels_to_32_folds_the_widths_phases_where_ynnpack_runs_it(
    by_ynn, monkeypatch
):
    """YNNPACK's strided conv was slower than the conv unstrided along the width, its
    phases folded into the channels: seg U-Net's input gradient (64x64x16 -> 32 k3 s2, batch
    32) 4.9 -> 3.9 ms, forward+backward 14.5 -> 11.1."""
    monkeypatch.setattr(fast_conv, "_convs_by_ynn", lambda: by_ynn)
    geometry = fast_conv.Geometry((2, 2), ((1, 0), (1, 0)), (1, 1))
    x, kernel = _normal((2, 32, 32, 16)), _normal((3, 3, 16, 32), seed=1)
    equations = _equations(lambda x, k: fast_conv._strided(x, k, geometry), x, kernel)
    (conv,) = [e for e in equations if e.primitive.name == "conv_general_dilated"]
    assert conv.params["window_strides"] == ((2, 1) if by_ynn else (2, 2))
    assert conv.invars[0].aval.shape[-1] == (32 if by_ynn else 16)
    _close(jax.jit(fast_conv._strided, static_argnums=2)(x, kernel, geometry),
           _xla_conv(x, kernel, geometry))  # fmt: skip


@pytest.mark.parametrize(
    "x_shape, kernel_shape, strides",
    [
        ((2, 32, 32, 16), (3, 3, 16, 16), (2, 2)),  # 16 output channels (1.35x slower)
        ((2, 32, 32, 3), (4, 4, 3, 64), (2, 2)),  # 3 input channels (DCGAN G5: 1.9x)
        ((2, 32, 32, 128), (3, 3, 128, 256), (2, 2)),  # 128 (CycleGAN: 1.4x)
        ((2, 32, 33, 16), (3, 3, 16, 32), (2, 2)),  # a width not a multiple of the stride
        ((2, 32, 32, 16), (1, 1, 16, 32), (2, 2)),  # phases that no tap reads
        ((2, 32, 32, 16), (3, 3, 16, 32), (2, 1)),  # unstrided along the width
        ((1, 16, 16, 16), (3, 3, 16, 32), (2, 2)),  # 64 outputs: im2col
    ],
)
def test_a_strided_2d_conv_folds_the_widths_phases_only_where_that_was_faster(
    x_shape, kernel_shape, strides, monkeypatch
):
    monkeypatch.setattr(fast_conv, "_convs_by_ynn", lambda: True)
    geometry = fast_conv.Geometry(strides, ((1, 0), (1, 0)), (1, 1))
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    kernel = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    assert not fast_conv._width_fold_wanted(x, kernel, geometry)


def _phase_convs(argnums, monkeypatch) -> list:
    """The phase convs (``s**2 * 16`` output channels) in reverse mode of a k3 s2 transposed
    conv of 32 channels to 16 (the lecture decoder's second), differentiated in ``argnums``."""
    monkeypatch.setattr(fast_conv, "_convs_by_ynn", lambda: True)
    y, kernel = _normal((2, 16, 16, 32)), _normal((3, 3, 16, 32), seed=1)

    def loss(y, kernel):
        out = ops.conv_transpose(y, kernel, stride=2, padding=1, output_padding=1, impl="fast")
        return jnp.sum(out**2)

    equations = _equations(jax.value_and_grad(loss, argnums), y, kernel)
    convs = [e for e in equations if e.primitive.name == "conv_general_dilated"]
    return [e for e in convs if e.outvars[0].aval.shape[-1] == 4 * 16]


def test_a_transposed_conv_whose_input_gradient_folds_the_widths_phases_goes_by_phases(
    monkeypatch,
):
    """With the fold in the same program, the overlap-add was slower than the phases
    (forward+backward of the lecture decoder's second 6.05 -> 5.52 ms)."""
    assert len(_phase_convs((0, 1), monkeypatch)) == 1


def test_a_transposed_conv_differentiated_only_in_its_kernel_keeps_the_overlap_add(
    monkeypatch,
):
    assert not _phase_convs(1, monkeypatch)


BLOCKS = [
    # k16 s8 (FCN-8s's), rows of x not a multiple of the stride, split by phases of the first
    # axis (a kernel at most half of x) or not; k4 s2 and k2 s2 with pads; 3-D k2 s2 and k4
    # s2 with an unstrided axis
    ((2, 45, 37, 3), (16, 16, 3, 5), fast_conv.Geometry((8, 8), ((4, 4), (4, 3)), (1, 1))),
    ((2, 29, 21, 3), (16, 16, 3, 5), fast_conv.Geometry((8, 8), ((4, 4), (4, 3)), (1, 1))),
    ((3, 9, 8, 16), (4, 4, 16, 6), fast_conv.Geometry((2, 2), ((1, 1), (1, 1)), (1, 1))),
    ((2, 6, 7, 16), (2, 2, 16, 3), fast_conv.Geometry((2, 2), ((0, 0), (1, 1)), (1, 1))),
    ((1, 4, 6, 4, 8), (2, 2, 2, 8, 3), fast_conv.Geometry((2, 2, 2), ((0, 0),) * 3, (1,) * 3)),
    ((2, 5, 8, 4, 16), (4, 3, 2, 16, 3),
     fast_conv.Geometry((2, 1, 2), ((1, 1), (1, 1), (0, 0)), (1,) * 3)),
]  # fmt: skip


@pytest.fixture
def shallow_blocks(monkeypatch):
    """C by blocks however few channels (at least ``BLOCKS_MIN_DEPTH`` deep) and outputs,
    where the taps overlap blocks too: small shapes that take the path of large ones."""
    monkeypatch.setattr(fast_conv, "BLOCKS_OVERLAP_MIN_DEPTH", fast_conv.BLOCKS_MIN_DEPTH)
    monkeypatch.setattr(fast_conv, "BLOCKS_OVERLAP_MAX_EXTRA", math.inf)


@pytest.mark.parametrize("x_shape, kernel_shape, geometry", BLOCKS)
def test_a_strided_conv_of_a_kernel_a_multiple_of_its_stride_is_matmuls_of_blocks(
    x_shape, kernel_shape, geometry, shallow_blocks
):
    """C with ``k = t*s``: ``x`` cut into blocks of ``s``, one matmul ``s**n * in`` deep (not
    an im2col's ``k**n * in``), or one per phase of the first axis ``s_1 * in`` deep where
    :func:`jaxconv.fast_conv._split_axes`; no conv; equal to XLA's."""
    x, kernel = _normal(x_shape), _normal(kernel_shape, seed=1)
    equations = _equations(lambda x, k: fast_conv._strided(x, k, geometry), x, kernel)
    depths = [e.invars[0].aval.shape[-1] for e in equations if e.primitive.name == "dot_general"]
    split = fast_conv._split_axes(x, kernel.shape)
    parts = math.prod(geometry.strides[:split])
    assert depths == [math.prod(geometry.strides) * kernel_shape[-2] // parts] * parts
    assert not [e for e in equations if e.primitive.name == "conv_general_dilated"]
    both = jax.jit(lambda x, k: (fast_conv._strided(x, k, geometry), _xla_conv(x, k, geometry)))
    _close(*both(x, kernel))


@pytest.mark.parametrize(
    "x_shape, kernel_shape, split",
    [
        ((2, 45, 37, 3), (16, 16, 3, 5), 1),  # a kernel at most half of x
        ((2, 29, 21, 3), (16, 16, 3, 5), 0),  # larger (U-Net 16->32's was slower split)
        ((2, 8, 8, 8, 4), (2, 2, 2, 4, 4), 0),  # 3-D (V-Net's was slower split)
    ],
)
def test_blocks_split_by_phases_of_the_first_axis_in_2d_with_a_small_kernel(
    x_shape, kernel_shape, split
):
    x, kernel = jnp.zeros(x_shape), jnp.zeros(kernel_shape)
    assert fast_conv._split_axes(x, kernel.shape) == split


@pytest.mark.parametrize(
    "kernel_shape, geometry",
    [
        ((3, 3, 32, 4), fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1))),  # k not t*s
        ((4, 4, 3, 4), fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1))),  # blocks 4 x 3 deep
        ((4, 32, 4), fast_conv.Geometry((2,), ((1, 1),), (1,))),  # 1-D
        ((4, 4, 32, 4), fast_conv.Geometry((2, 2), ((3, 3),) * 2, (2, 2))),  # dilated
        ((2, 2, 16, 8), fast_conv.Geometry((2, 2), ((0, 0),) * 2, (1, 1), 2)),  # groups
    ],
)
def test_a_strided_conv_goes_by_blocks_only_where_that_was_faster(kernel_shape, geometry):
    ndim = len(kernel_shape) - 2
    x = jax.ShapeDtypeStruct((1, *(16,) * ndim, kernel_shape[-2] * geometry.groups), jnp.float32)
    kernel = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    assert not fast_conv._blocks_wanted(x, kernel, geometry)


def test_a_strided_conv_goes_by_blocks_only_with_a_kernel_within_bounds(monkeypatch):
    """A large kernel, which the matmul reads rearranged (pix2pix's 32 MB was 3x slower),
    and past ``IM2COL_MAX_BYTES`` (XLA's convs only) not."""
    geometry = fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1))
    x = jax.ShapeDtypeStruct((1, 32, 32, 256), jnp.float32)
    kernel = jax.ShapeDtypeStruct((4, 4, 256, 8), jnp.float32)
    assert fast_conv._blocks_wanted(x, kernel, geometry)
    monkeypatch.setattr(fast_conv, "BLOCKS_MAX_KERNEL_BYTES", 4 * 4 * 256 * 8 * 4 - 1)
    assert not fast_conv._blocks_wanted(x, kernel, geometry)
    monkeypatch.undo()
    monkeypatch.setattr(fast_conv, "IM2COL_MAX_BYTES", 0)
    assert not fast_conv._blocks_wanted(x, kernel, geometry)


@pytest.mark.parametrize(
    "channels, kernel_size, shared, wanted",
    [
        (64, 4, False, False),  # k4 s2: blocks 4 x 64 deep, their products 4x as wide
        (256, 4, False, True),  # 1024 deep
        (64, 4, True, True),  # the cut shared with R
        (16, 2, False, True),  # k2 s2: the taps do not overlap blocks, 64 deep is enough
    ],
)
def test_a_strided_conv_whose_taps_overlap_blocks_goes_by_blocks_only_where_they_are_deep(
    channels, kernel_size, shared, wanted
):
    """Where ``k > s``, by blocks only ``BLOCKS_OVERLAP_MIN_DEPTH`` deep or where ``R``
    shares the cut: PyTorch's DCGAN discriminator's 32x32x64 -> 128 k4 s2 conv took 57
    ms by blocks against 22 for XLA's conv."""
    geometry = fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1))
    x = jax.ShapeDtypeStruct((8, 32, 32, channels), jnp.float32)
    kernel = jax.ShapeDtypeStruct((kernel_size, kernel_size, channels, 128), jnp.float32)
    assert fast_conv._blocks_wanted(x, kernel, geometry, shared=shared) == wanted


@pytest.mark.parametrize("size, wanted", [(8, False), (32, True)])
def test_a_strided_conv_whose_taps_overlap_blocks_goes_by_blocks_only_where_few_are_extra(
    size, wanted
):
    """k4 s2, 1024 deep: 8x8 inputs give 4x4 outputs from 5x5 blocks (1.56 times as
    many: DCGAN's 8x8x256 -> 512 took 21.2 ms by blocks against 14.9 by im2col); 32x32
    give 16x16 from 17x17 (1.13: 15.1 against 16.5)."""
    geometry = fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1))
    x = jax.ShapeDtypeStruct((8, size, size, 256), jnp.float32)
    kernel = jax.ShapeDtypeStruct((4, 4, 256, 8), jnp.float32)
    assert fast_conv._blocks_wanted(x, kernel, geometry) == wanted


@pytest.mark.parametrize(
    "x_shape, kernel_size, stride, im2col",
    [
        ((2, 32, 32, 128), 4, 2, True),  # 2048 deep, strided
        ((2, 32, 32, 128), 3, 2, False),  # 1152 deep
        ((2, 16, 16, 256), 3, 1, False),  # 2304 deep, unstrided
    ],
)
def test_a_deep_strided_2d_conv_goes_by_im2col(x_shape, kernel_size, stride, im2col):
    """YNNPACK's strided conv was slower than im2col and a matmul on deep windows:
    forwards (ms) 16x16x128 -> 256 k4 s2 at batch 64 19.2 -> 15.5, 28x28x256 -> 512 k3 s2
    at 16 32.9 -> 25.9; not 1152 deep (16x16x128 -> 128 k3 s1, 4.2 against 5.1) nor
    unstrided (16x16x256 -> 256 k3 s1, 7.3 against 7.6)."""
    geometry = fast_conv.Geometry((stride, stride), ((1, 1),) * 2, (1, 1))
    x = _normal(x_shape)
    kernel = _normal((kernel_size, kernel_size, x_shape[-1], 8), seed=1)
    equations = _equations(lambda x, k: fast_conv._strided(x, k, geometry), x, kernel)
    convs = [e for e in equations if e.primitive.name == "conv_general_dilated"]
    assert (not convs) == im2col
    _close(jax.jit(fast_conv._strided, static_argnums=2)(x, kernel, geometry),
           _xla_conv(x, kernel, geometry), rtol=1e-4)  # fmt: skip


def _by_blocks_calls(monkeypatch) -> list:
    """The ``x`` of every call of ``_by_blocks`` from now on."""
    calls = []
    by_blocks = fast_conv._by_blocks
    monkeypatch.setattr(fast_conv, "_by_blocks", lambda x, *a: calls.append(x) or by_blocks(x, *a))
    return calls


# k4 s2 on 64 channels: blocks 256 deep, short of BLOCKS_OVERLAP_MIN_DEPTH; R of 8 x 8
# rows of y by phases (they copy less than the im2col of x), whose phases are the blocks
KEPT_BLOCKS = fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1))


@pytest.mark.usefixtures("xla_kernel_gradient")
def test_a_conv_differentiated_in_its_kernel_goes_by_blocks_where_r_shares_their_cut(
    monkeypatch,
):
    """Its forward by blocks, whose cut XLA computes once for it and for ``R`` by phases
    (forward+backward of 64x32x32x64 -> 64, ms: blocks 56.4, XLA's conv 58.5, where alone
    XLA's conv took 17.8 against 29.5); alone, and differentiated only in ``x``, XLA's
    conv."""
    x, kernel = _normal((2, 16, 16, 64)), _normal((4, 4, 64, 8), seed=1)
    calls = _by_blocks_calls(monkeypatch)
    conv = functools.partial(fast_conv._conv, geometry=KEPT_BLOCKS)
    jax.jit(conv).lower(x, kernel)
    jax.jit(jax.grad(lambda x: jnp.sum(conv(x, kernel) ** 2))).lower(x)
    assert calls == []
    loss = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(conv(x, k) ** 2), (0, 1)))
    (value, grads), calls_kept = loss(x, kernel), list(calls)
    assert [c.shape for c in calls_kept] == [x.shape]
    expected = jax.value_and_grad(lambda x, k: jnp.sum(_xla_conv(x, k, KEPT_BLOCKS) ** 2), (0, 1))(
        x, kernel
    )
    for ours, theirs in zip(jax.tree.leaves((value, grads)), jax.tree.leaves(expected)):
        _close(ours, theirs, rtol=1e-4)


CONV_BLOCKS = dict(features=5, kernel_size=4, stride=2, padding=1)
TRANSPOSED_BLOCKS = dict(features=16, kernel_size=(4, 2), stride=2, padding=1)
# the first of each pair in one part, the second split by phases of the first axis
BLOCK_LAYERS = pytest.mark.parametrize(
    "cls, kwargs, x_shape",
    [
        (jnn.Conv, CONV_BLOCKS, (2, 6, 8, 16)),
        (jnn.Conv, CONV_BLOCKS, (2, 12, 16, 16)),
        (jnn.ConvTranspose, TRANSPOSED_BLOCKS, (2, 4, 4, 48)),
        (jnn.ConvTranspose, TRANSPOSED_BLOCKS, (2, 6, 8, 16)),
    ],
)


@BLOCK_LAYERS
def test_by_blocks_every_derivative_agrees(cls, kwargs, x_shape, shallow_blocks):
    """A conv by blocks, and a transposed conv whose input gradient (and forward-mode
    tangent) goes by blocks, split by phases and not: forward, reverse and forward mode,
    against the reference."""
    x = _normal(x_shape)
    layers = _layers(cls, **kwargs)

    def derivatives(layer, params, x, dx):
        tangent = jax.jvp(lambda x: layer.apply({"params": params}, x), (x,), (dx,))
        return _forward_and_vjp(layer, params, x), tangent

    _fast_agrees(derivatives, layers, _params(layers["reference"], x), x, _normal(x.shape, 1))


# k8 s4: C of the cotangent by blocks 4 * 4 * 16 deep, R by phases (they copy less than its
# im2col); p2 cuts both alike, p0 with output_padding 1 (hi = -1) does not
SHARED_BLOCKS = dict(features=16, kernel_size=8, stride=4)


def _cotangent_transposes(layer, params, x) -> int:
    """The spatial transpositions (not of a matrix, which XLA folds into its product) of a
    whole cotangent or more in ``layer``'s backward pass."""
    y, backward = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
    transposed = [
        e.invars[0].aval
        for e in _equations(backward, jnp.zeros(y.shape))
        if e.primitive.name == "transpose"
    ]
    return sum(a.ndim > 2 and a.size >= y.size for a in transposed)


# a cotangent of 2 x 12 x 12 x 16 against a kernel of 8 x 8 x 16 x 4: blocks in one part, a
# transposition; of 2 x 24 x 24 x 16: split by phases of the first axis (slices)
CUT_INTO_BLOCKS = pytest.mark.parametrize(
    "x_shape, transpositions", [((2, 3, 3, 4), 1), ((2, 6, 6, 4), 0)]
)


@CUT_INTO_BLOCKS
@pytest.mark.usefixtures("xla_kernel_gradient")
def test_where_c_goes_by_blocks_and_r_by_phases_the_cotangent_is_cut_into_blocks_once(
    x_shape, transpositions
):
    layer = jnn.ConvTranspose(impl="fast", padding=2, **SHARED_BLOCKS)
    x = _normal(x_shape)
    assert _cotangent_transposes(layer, _params(layer, x), x) == transpositions


@CUT_INTO_BLOCKS
@pytest.mark.parametrize("padding, output_padding", [(2, 0), (0, 1)])
def test_gradients_from_one_cut_into_blocks_agree(x_shape, transpositions, padding, output_padding):
    layers = _layers(
        jnn.ConvTranspose, padding=padding, output_padding=output_padding, **SHARED_BLOCKS
    )
    x = _normal(x_shape)
    _fast_agrees(_forward_and_vjp, layers, _params(layers["reference"], x), x)


# k8 s4 p2: x of 3 x 12 x 12 x 4 in phases by a transposition; of 3 x 24 x 24 x 4 (at least
# twice the kernel's size), by phases of the first axis (slices)
@pytest.mark.parametrize("x_shape, transpositions", [((3, 12, 12, 4), 1), ((3, 24, 24, 4), 0)])
def test_a_kernel_gradient_by_phases_that_are_blocks_cuts_x_by_slices(x_shape, transpositions):
    """R by phases alone (FCN's kernel gradient) takes ``x`` cut as C by blocks cuts it: in
    2-D with a kernel at most half of ``x``, one part per phase of the first axis."""
    geometry = fast_conv.Geometry((4, 4), ((2, 2), (2, 2)), (1, 1))
    kernel_shape = (8, 8, 4, 6)
    x, y, xla_kernel_grad = _kernel_gradient_problem(x_shape, kernel_shape, geometry)

    def by_phases(x, y):
        return fast_conv._kernel_grad_by_phases(x, y, kernel_shape, geometry)

    transposed = [
        e.invars[0].aval for e in _equations(by_phases, x, y) if e.primitive.name == "transpose"
    ]  # of x (its batch first), not of the phase kernel (its taps first)
    assert sum(a.shape[0] == 3 and a.size >= x.size for a in transposed) == transpositions
    _close(jax.jit(by_phases)(x, y), xla_kernel_grad(x, y))


GROUPED_TRANSPOSED = fast_conv.Geometry((2, 2), ((1, 0), (1, 0)), (1, 1), 4)


def _grouped_transposed_conv():
    """``T`` (``GROUPED_TRANSPOSED``: stride 2, 4 groups of 2 channels) and its operands."""
    y, kernel = _normal((2, 5, 5, 8)), _normal((3, 3, 2, 8), seed=1)
    return functools.partial(fast_conv._conv_transpose, geometry=GROUPED_TRANSPOSED), y, kernel


def _transposed_by_overlap_add(y, kernel, monkeypatch, geometry=None, bound=0) -> bool:
    """Whether ``T`` (by default 2-D k s2 p1) with ``OVERLAP_ADD_MAX_BYTES`` at ``bound``
    goes by overlap-add; its result checked against the transpose of XLA's conv."""
    monkeypatch.setattr(fast_conv, "OVERLAP_ADD_MAX_BYTES", bound)
    calls = []
    by_overlap_add = fast_conv._by_overlap_add
    monkeypatch.setattr(
        fast_conv, "_by_overlap_add", lambda y, *a: calls.append(y) or by_overlap_add(y, *a)
    )
    geometry = geometry or fast_conv.Geometry((2, 2), ((1, 1),) * 2, (1, 1))
    out = jax.jit(fast_conv._transposed, static_argnums=2)(y, kernel, geometry)
    _close(out, _xla_transposed(y, kernel, geometry))
    return len(calls) == 1


@pytest.mark.parametrize("y_shape, overlap_add", [((2, 3, 3, 16), True), ((2, 8, 8, 4), False)])
def test_a_transposed_conv_of_products_near_its_kernel_size_goes_by_overlap_add(
    y_shape, overlap_add, monkeypatch
):
    """Past ``OVERLAP_ADD_MAX_BYTES`` (here 0), the overlap-add where the products are at
    most 4 times the kernel (18 positions, 16 channels), not where they are 8 times (128
    positions, 4 channels). DCGAN's 4x4x512 -> 256 at batch 64, twice its kernel: 20.5 ms
    by phases, 11.9 by overlap-add."""
    y, kernel = _normal(y_shape), _normal((4, 4, 8, y_shape[-1]), seed=1)
    assert _transposed_by_overlap_add(y, kernel, monkeypatch) == overlap_add


@pytest.mark.parametrize("out_channels, overlap_add", [(3, True), (4, False)])
def test_a_transposed_conv_whose_phase_conv_is_narrow_goes_by_overlap_add(
    out_channels, overlap_add, monkeypatch
):
    """Past ``OVERLAP_ADD_MAX_BYTES`` (here 0), the overlap-add where the phase conv would
    have fewer than 16 channels (stride 2 in 2-D: 4 phases of 3 channels), not where it
    has 16 (4 of 4). FSRCNN's 56 -> 1, k9 s3 (9 channels): 12.3 ms by phases, 10.8 by
    overlap-add."""
    y, kernel = _normal((2, 8, 8, 5)), _normal((4, 4, out_channels, 5), seed=1)
    assert _transposed_by_overlap_add(y, kernel, monkeypatch) == overlap_add


@pytest.mark.parametrize("kernel_size, out_channels, overlap_add", [(3, 16, True), (4, 9, False)])
def test_the_overlap_adds_bound_grows_with_the_zeros_of_the_phase_kernel(
    kernel_size, out_channels, overlap_add, monkeypatch
):
    """The same 72 KiB of products, the bound 48 KiB: by overlap-add at k3 s2 (the phase
    kernel 16 slots for 9 taps: the bound times 16/9), by phases at k4 s2 (no zeros).
    seg U-Net's forward (18 MiB): 4.60 ms by phases, 4.03 by overlap-add."""
    geometry = fast_conv.Geometry((2, 2), ((1, 0),) * 2, (1, 1))
    y = _normal((2, 8, 8, 8))
    kernel = _normal((kernel_size, kernel_size, out_channels, 8), seed=1)
    assert 2 * 64 * kernel_size**2 * out_channels * 4 == 72 << 10
    by_overlap_add = _transposed_by_overlap_add(y, kernel, monkeypatch, geometry, 48 << 10)
    assert by_overlap_add == overlap_add


def test_the_overlap_add_stacks_its_phases_one_axis_at_a_time():
    """k9 s3 in 2-D (FSRCNN's): 9 phases as stacks of 3, no stack of 9 (XLA:CPU left
    that out of the overlap-add's fusion: 11.7 ms against 10.8 for FSRCNN's forward)."""
    geometry = fast_conv.Geometry((3, 3), ((4, 2),) * 2, (1, 1))
    y, kernel = _normal((2, 4, 4, 3)), _normal((9, 9, 1, 3), seed=1)
    overlap_add = functools.partial(fast_conv._by_overlap_add, geometry=geometry)
    stacks = [e for e in _equations(overlap_add, y, kernel) if e.primitive.name == "stack"]
    assert stacks and all(len(e.invars) == 3 for e in stacks)
    _close(overlap_add(y, kernel), _xla_transposed(y, kernel, geometry))


def test_a_grouped_transposed_conv_by_overlap_add_goes_group_by_group():
    """Each group's products in a plain matmul, never one batched over the groups, whose
    operands XLA:CPU copies groups first (the whole kernel: 38 MB in StyleGAN2)."""
    transposed, y, kernel = _grouped_transposed_conv()
    equations = _equations(transposed, y, kernel)
    dots = [e.params["dimension_numbers"] for e in equations if e.primitive.name == "dot_general"]
    assert dots and all(batch == ((), ()) for _, batch in dots)
    assert any(e.primitive.name in ("scan", "while") for e in equations)


@pytest.mark.parametrize("groups, unrolled", [(4, True), (16, True), (32, False)])
def test_a_kernel_gradient_of_few_groups_is_their_parts_concatenated(groups, unrolled):
    """Up to 16 groups, reverse mode's kernel gradient is each group's own operations,
    their parts concatenated (no loop); with more, one loop over the groups. Equal to
    XLA's either way."""
    geometry = GROUPED_TRANSPOSED._replace(groups=groups)
    transposed = functools.partial(fast_conv._conv_transpose, geometry=geometry)
    y, kernel = _normal((2, 5, 5, 2 * groups)), _normal((3, 3, 2, 2 * groups), seed=1)
    cotangent = _normal(jax.eval_shape(transposed, y, kernel).shape, seed=2)

    def kernel_grad(k):
        return jax.grad(lambda k: jnp.vdot(transposed(y, k), cotangent))(k)

    names = {e.primitive.name for e in _equations(kernel_grad, kernel)}
    assert ("while" not in names and "concatenate" in names) == unrolled

    def xla_transposed(k):
        conv = functools.partial(_xla_conv, kernel=k, geometry=geometry)
        return jax.linear_transpose(conv, cotangent)(y)[0]

    expected = jax.grad(lambda k: jnp.vdot(xla_transposed(k), cotangent))(kernel)
    _close(kernel_grad(kernel), expected)


def test_a_grouped_kernel_gradient_in_reverse_mode_writes_each_part_once():
    """The kernel gradient of a transposed conv in 32 groups of 2 channels (past the 16
    that go unrolled), by reverse mode: each group's part added into the zero gradient in
    the loop, not zeroed and then added to (an overwritten part, transposed twice); equal
    to XLA's."""
    geometry = GROUPED_TRANSPOSED._replace(groups=32)
    transposed = functools.partial(fast_conv._conv_transpose, geometry=geometry)
    y, kernel = _normal((2, 5, 5, 64)), _normal((3, 3, 2, 64), seed=1)
    cotangent = _normal(jax.eval_shape(transposed, y, kernel).shape, seed=2)

    def kernel_grad(y, kernel):
        return jax.grad(lambda k: jnp.vdot(transposed(y, k), cotangent))(kernel)

    updates = [
        e for e in _equations(kernel_grad, y, kernel) if e.primitive.name == "dynamic_update_slice"
    ]
    assert not [e for e in updates if e.invars[0].aval.shape == kernel.shape]

    def xla_transposed(k):  # T as the transpose of XLA's conv in its input
        conv = functools.partial(_xla_conv, kernel=k, geometry=geometry)
        return jax.linear_transpose(conv, cotangent)(y)[0]

    expected = jax.grad(lambda k: jnp.vdot(xla_transposed(k), cotangent))(kernel)
    _close(kernel_grad(y, kernel), expected)


@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_reverse_mode_of_a_grouped_conv_keeps_no_copy_of_each_groups_operands(op):
    """What the backward pass keeps of a conv in 4 groups of 2 channels: no array of 4
    per-group parts (each group's slice of the kernel and input, stacked by the loop)."""
    transposed, y, kernel = _grouped_transposed_conv()
    if op == "conv_transpose":
        f = transposed
    else:
        geometry = fast_conv.Geometry((2, 2), ((1, 1), (1, 1)), (1, 1), 4)
        f = functools.partial(fast_conv._conv, geometry=geometry)
    _, backward = jax.vjp(f, y, kernel)
    kept = [leaf.shape for leaf in jax.tree.leaves(backward) if leaf.dtype == jnp.float32]
    assert not [shape for shape in kept if len(shape) > 1 and shape[0] == 4], kept


@pytest.mark.parametrize(
    "x_shape, kernel_size, strides",
    [
        ((2, 7, 6, 5, 3), (2, 1, 3), (2, 3, 3)),  # x cropped to whole rows of s
        ((1, 5, 4, 4, 2), (2, 2, 1), (3, 2, 4)),  # x padded to whole rows of s
    ],
)
def test_3d_windows_that_do_not_overlap_are_one_transposition(x_shape, kernel_size, strides):
    """im2col where ``k <= s``: window ``j`` of row ``i`` at ``i*s + j``, without stacking."""
    x = _normal(x_shape)
    rows = [(n - k) // s + 1 for n, k, s in zip(x_shape[1:-1], kernel_size, strides)]
    args = (kernel_size, strides, (1, 1, 1), rows)
    primitives = {e.primitive.name for e in _equations(lambda x: fast_conv._windows(x, *args), x)}
    assert not primitives & {"stack", "concatenate"}
    expected = np.stack(
        [
            np.asarray(x)[:, j0 :: strides[0], j1 :: strides[1], j2 :: strides[2]][
                :, : rows[0], : rows[1], : rows[2]
            ]
            for j0, j1, j2 in np.ndindex(*kernel_size)
        ],
        axis=4,
    )
    _close(fast_conv._windows(x, *args), expected)


def _numpy_windows(x, kernel_size, strides, rows):
    """im2col of ``x`` tap by tap, ``(B, *rows, taps, C)``: window ``j`` of row ``i`` at
    ``i*s + j``."""
    x = np.asarray(x)
    per_tap = []
    for j in itertools.product(*map(range, kernel_size)):
        index = tuple(slice(t, t + (q - 1) * s + 1, s) for t, s, q in zip(j, strides, rows))
        per_tap.append(x[(slice(None), *index)])
    return np.stack(per_tap, axis=-2)


@pytest.mark.parametrize(
    "shape, kernel_size, strides, shifted",
    [
        ((2, 37, 3), (4,), (2,), True),
        ((2, 37, 3), (25,), (4,), True),  # 7 rows of 4 for 25 taps: 3 slots cropped
        ((2, 37, 3), (16,), (8,), True),
        ((2, 5, 37, 3), (1, 9), (1, 3), True),
        ((1, 3, 4, 37, 2), (1, 1, 4), (1, 1, 2), True),
        ((2, 37, 3), (3,), (2,), False),  # 2 rows of 2 for 3 taps: a quarter cropped
        ((2, 5, 37, 3), (1, 5), (1, 2), False),
    ],
)
def test_overlapping_windows_along_the_last_axis_are_shifted_rows_of_the_stride(
    shape, kernel_size, strides, shifted
):
    """im2col where ``k > s`` along the last axis: ``ceil(k/s)`` slices of ``x`` cut into
    rows of ``s`` (and a crop of the slots past ``k``), none strided; where over an eighth
    of the taps would be cropped, ``k`` strided slices."""
    x = _normal(shape)
    rows = tuple((n - k) // s + 1 for n, k, s in zip(shape[1:-1], kernel_size, strides))
    args = (kernel_size, strides, (1,) * len(rows), rows)
    slices = _slice_steps(_equations(lambda x: fast_conv._windows(x, *args), x))
    assert bool(_strided(slices)) != shifted
    _close(fast_conv._windows(x, *args), _numpy_windows(x, kernel_size, strides, rows))


def test_a_pointwise_phase_conv_is_xlas_conv(monkeypatch):
    """A k2 s2 3-D transposed conv by phases: its phase conv is 1x1x1, XLA's conv (which
    XLA makes one matmul), not an im2col."""
    monkeypatch.setattr(fast_conv, "OVERLAP_ADD_MAX_BYTES", 0)
    monkeypatch.setattr(fast_conv, "PHASES_MIN_CHANNELS", 0)
    y, kernel = _normal((2, 3, 4, 3, 5)), _normal((2, 2, 2, 6, 5), seed=1)

    def forward(impl, y, kernel):
        return ops.conv_transpose(y, kernel, stride=2, impl=impl)

    convs = _convs(functools.partial(forward, "fast"), y, kernel)
    assert [e.invars[1].aval.shape for e in convs] == [(1, 1, 1, 5, 8 * 6)]
    both = jax.jit(lambda *a: [forward(impl, *a) for impl in ("fast", "reference")])
    _close(*both(y, kernel))


@pytest.mark.parametrize(
    "forward, flat_shape",
    [
        # a 1x1 conv, and a k2 s2 transposed conv by phases (its phase conv is 1x1)
        (lambda impl, x, k: ops.conv(x, k.reshape(1, 1, 5, 12), impl=impl), (2, 30, 5)),
        (lambda impl, x, k: ops.conv_transpose(x, k, stride=2, impl=impl), (2, 30, 5)),
    ],
)
def test_a_2d_pointwise_conv_is_xlas_conv_of_its_rows_in_1d(forward, flat_shape, monkeypatch):
    """XLA makes a 1-D 1x1 conv its own matmul; a 2-D one went to YNNPACK's conv, 1.7-3x
    slower. A 2-D pointwise conv is XLA's conv of the rows flattened to 1-D."""
    monkeypatch.setattr(fast_conv, "OVERLAP_ADD_MAX_BYTES", 0)
    monkeypatch.setattr(fast_conv, "PHASES_MIN_CHANNELS", 0)
    x, kernel = _normal((2, 5, 6, 5)), _normal((2, 2, 3, 5), seed=1)
    convs = _convs(functools.partial(forward, "fast"), x, kernel)
    assert [e.invars[0].aval.shape for e in convs] == [flat_shape]
    both = jax.jit(lambda *a: [forward(impl, *a) for impl in ("fast", "reference")])
    _close(*both(x, kernel))


@BOTH_LAYERS
def test_without_im2col_xla_convs_agree(cls, kwargs, monkeypatch):
    """Past ``IM2COL_MAX_BYTES`` (here 0) every conv and kernel gradient is XLA's."""
    monkeypatch.setattr(fast_conv, "IM2COL_MAX_BYTES", 0)
    x = _normal((2, 5, 6, 6))
    layers = _layers(cls, **kwargs)
    _fast_agrees(_forward_and_vjp, layers, _params(layers["reference"], x), x)


def _row_block_calls(monkeypatch) -> list:
    """The arguments of every call of ``_kernel_grad_by_row_blocks`` from now on."""
    calls = []
    by_row_blocks = fast_conv._kernel_grad_by_row_blocks
    monkeypatch.setattr(
        fast_conv, "_kernel_grad_by_row_blocks", lambda *a: calls.append(a) or by_row_blocks(*a)
    )
    return calls


@BOTH_LAYERS
def test_kernel_gradients_by_row_blocks_agree(cls, kwargs, monkeypatch):
    """Images whose im2col is over ``CHUNK_BYTES`` (here 3 KiB) go by blocks of rows:
    8 channels, blocks of 3 rows whose windows overlap by one, a rest padded."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", 3 << 10)
    blocked = _row_block_calls(monkeypatch)
    x = _normal((2, 16, 6, 8))
    layers = _layers(cls, **dict(kwargs, groups=1, features=8))
    _fast_agrees(_forward_and_vjp, layers, _params(layers["reference"], x), x)
    assert blocked


@pytest.mark.parametrize("summed", [False, True])
def test_batch_chunks_give_the_whole_batch_result(summed, monkeypatch):
    """Chunks of 2 (a divisor would be 1: too small) and a rest of 1, from a batch of 5."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", 2 * 3 * 4)  # 2 images of 3 float32 columns
    x = _normal((5, 3))
    weights = jnp.arange(6.0).reshape(3, 2)

    def fn(x):
        return x.T @ x if summed else x @ weights

    chunked = jax.jit(lambda x: fast_conv._by_chunks(fn, (x,), 3, summed=summed))
    assert "while" in chunked.lower(x).as_text()
    _close(chunked(x), fn(x))


def test_chunks_give_a_tuple_of_results_each_added_or_concatenated(monkeypatch):
    """``summed=(False, True)``: the first result concatenated along the batch, the second
    added, over chunks of 2 and a rest of 1."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", 2 * 3 * 4)
    x = _normal((5, 3))
    weights = jnp.arange(6.0).reshape(3, 2)

    def fn(x):
        return x @ weights, x.T @ x

    chunked = jax.jit(lambda x: fast_conv._by_chunks(fn, (x,), 3, summed=(False, True)))
    assert "while" in chunked.lower(x).as_text()
    for got, expected in zip(chunked(x), fn(x)):
        _close(got, expected)


# one group, 2-D, 300 outputs of C in the batch: C(g) would be XLA's strided conv
SHARED_WINDOWS = dict(features=8, kernel_size=3, stride=2, padding=1, output_padding=1)


def _derivatives(layer, params, x, dx):
    """The gradients in the parameters and input, the gradient of the input gradient's
    norm, the kernel's Hessian and a jvp in both."""

    def grad_norm(params, x):
        return jnp.sum(jax.grad(lambda x: _loss(layer, params, x))(x) ** 2)

    kernel_hessian = jax.hessian(lambda k: _loss(layer, {**params, "kernel": k}, x))(
        params["kernel"]
    )
    dparams = jax.tree.map(jnp.ones_like, params)
    jvp = jax.jvp(lambda p, x: layer.apply({"params": p}, x), (params, x), (dparams, dx))
    return _forward_and_vjp(layer, params, x), jax.grad(grad_norm, (0, 1))(params, x), (
        kernel_hessian, jvp)  # fmt: skip


def _gradient_convs(layer, params, x):
    """The conv_general_dilated equations of ``layer``'s gradients in its parameters and
    input."""
    return _convs(lambda p, x: jax.grad(_loss, (1, 2))(layer, p, x), params, x)


# the whole batch, and chunks of 2 images (an im2col of 100 x 72 numbers each) and a rest of 1
@pytest.mark.parametrize("chunk_bytes", [1 << 30, 2 * 100 * 72 * 4])
@pytest.mark.usefixtures("xla_kernel_gradient")
def test_a_transposed_convs_gradients_share_one_im2col_of_the_cotangent(chunk_bytes, monkeypatch):
    """Reverse mode takes the input gradient ``C(g)`` from the im2col that the kernel
    gradient ``R(g, y)`` reads, not by XLA's strided conv; every derivative agrees."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", chunk_bytes)
    x = _normal((5, 10, 10, 8))
    layers = _layers(jnn.ConvTranspose, **SHARED_WINDOWS)
    params = _params(layers["reference"], x)
    convs = _gradient_convs(layers["fast"], params, x)
    assert convs and all(max(c.params["window_strides"]) == 1 for c in convs)
    _fast_agrees(_derivatives, layers, params, x, _normal(x.shape, seed=1), rtol=1e-4)


@pytest.mark.usefixtures("xla_kernel_gradient")
def test_by_row_blocks_the_input_gradient_too_comes_from_each_blocks_im2col(monkeypatch):
    """An image's im2col (10 rows of 10 x 72 numbers) over two chunks of 6 KiB: blocks of
    2 rows of ``y`` give both gradients, with no strided conv; they agree."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", 6 << 10)
    blocked = _row_block_calls(monkeypatch)
    x = _normal((2, 10, 10, 8))
    layers = _layers(jnn.ConvTranspose, **SHARED_WINDOWS)
    params = _params(layers["reference"], x)
    convs = _gradient_convs(layers["fast"], params, x)
    with_kernel = [len(args) == 5 for args in blocked]
    assert with_kernel == [True] and all(max(c.params["window_strides"]) == 1 for c in convs)
    _fast_agrees(_forward_and_vjp, layers, params, x)


def test_enets_forward_backward_needs_no_memory_beside_its_forwards_two_outputs():
    """ENet's last layer (the benchmark's): at the program's peak only the forward's phase
    conv output and its depth-to-space are live, 33,339,264 bytes (and 12 KB beside them
    since its kernel gradient is native), within glibc's largest mmap threshold (32 MiB),
    so its memory is reused from call to call, not mapped afresh. (The backward's row
    blocks, its route before, sliced their head rows in the loop: sliced before it, the
    heads lay beside the two, 15 KB past 32 MiB: forward+backward 30 -> 19-22 ms.)"""
    x = jax.ShapeDtypeStruct((2, 180, 240, 16), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 12, 16), jnp.float32)
    r = jax.ShapeDtypeStruct((2, 360, 480, 12), jnp.float32)

    def forward_backward(x, kernel, r):
        def loss(x, kernel):
            y = ops.conv_transpose(x, kernel, impl="fast", stride=2, padding=1, output_padding=1)
            return jnp.vdot(y, r)

        return jax.value_and_grad(loss, (0, 1))(x, kernel)

    compiled = jax.jit(forward_backward).lower(x, kernel, r).compile()
    phases, y = 2 * 181 * 241 * 48 * 4, 2 * 360 * 480 * 12 * 4
    assert compiled.memory_analysis().temp_size_in_bytes <= phases + y + (16 << 10) < 32 << 20


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((2, 200, 8), dict(features=8, kernel_size=4, stride=2, padding=1)),  # 1-D, 8 channels
        ((2, 20, 20, 8), dict(features=1, kernel_size=3, stride=2, padding=1)),  # C tap by tap
    ],
)
def test_where_the_cotangents_im2col_is_not_shared_the_input_gradient_is_c(
    shape, kwargs, monkeypatch
):
    """A 1-D layer of several channels, and one of one output channel and 9 taps: the
    input gradient is ``C``'s own (XLA's strided conv; tap by tap), which measured faster."""
    shared = []
    monkeypatch.setattr(fast_conv, "_input_and_kernel_grads", lambda *a, **k: shared.append(1))
    x = _normal(shape)
    layers = _layers(jnn.ConvTranspose, **kwargs)
    _fast_agrees(_forward_and_vjp, layers, _params(layers["reference"], x), x)
    assert not shared


SHARED_CONV = dict(features=8, kernel_size=3, stride=2, padding=1)  # x: (16, 10, 10, 16)


@pytest.mark.usefixtures("xla_kernel_gradient")
def test_a_conv_differentiated_in_its_kernel_is_the_product_of_its_kernel_gradients_im2col():
    """A 2-D conv of 16 channels whose batch's im2col is within ``CHUNK_BYTES``: in reverse
    mode its forward is the im2col's product, of the windows that the kernel gradient
    reads (XLA computes them once), not XLA's conv; every derivative agrees."""
    x = _normal((16, 10, 10, 16))
    layers = _layers(jnn.Conv, **SHARED_CONV)
    params = _params(layers["reference"], x)
    gradients = jax.jit(lambda p, x: jax.grad(_loss, (1, 2))(layers["fast"], p, x))
    assert "convolution(" not in gradients.lower(params, x).compile().as_text()
    _fast_agrees(_derivatives, layers, params, x, _normal(x.shape, seed=1), rtol=1e-4)


@pytest.mark.parametrize(
    "f",
    [
        lambda layer, p, x: layer.apply({"params": p}, x),  # the forward alone
        lambda layer, p, x: jax.grad(_loss, 2)(layer, p, x),  # the input gradient alone
    ],
)
def test_a_conv_not_differentiated_in_its_kernel_keeps_xlas_conv(f):
    """Where the kernel has no tangent, the forward stays XLA's conv, faster alone (the
    lecture encoder's second conv: 0.39 against the im2col's 0.60 ms)."""
    x = _normal((16, 10, 10, 16))
    layers = _layers(jnn.Conv, **SHARED_CONV)
    params = _params(layers["reference"], x)
    program = jax.jit(functools.partial(f, layers["fast"])).lower(params, x).compile().as_text()
    assert "convolution(" in program


@pytest.mark.parametrize(
    "x_shape, kernel_shape, geometry, shared",
    [
        ((16, 10, 10, 16), (3, 3, 16, 8), fast_conv.Geometry((2, 2), ((1, 0),) * 2, (1, 1)), True),
        # 1-D: XLA's conv was faster
        ((4, 40, 16), (3, 16, 8), fast_conv.Geometry((2,), ((1, 0),), (1,)), False),
        # the batch's im2col, 64 x 196 x 144 numbers, over CHUNK_BYTES: chunks, one per pass
        ((64, 28, 28, 16), (3, 3, 16, 8), fast_conv.Geometry((2, 2), ((1, 0),) * 2, (1, 1)), False),
        (
            (4, 10, 10, 16),
            (3, 3, 8, 8),
            fast_conv.Geometry((2, 2), ((1, 0),) * 2, (1, 1), 2),
            False,
        ),
        ((4, 10, 10, 1), (3, 3, 1, 8), fast_conv.Geometry((2, 2), ((1, 0),) * 2, (1, 1)), False),
        ((4, 10, 10, 16), (1, 1, 16, 8), fast_conv.Geometry((1, 1), ((0, 0),) * 2, (1, 1)), False),
    ],
)
def test_a_conv_shares_its_kernel_gradients_windows_only_where_that_was_faster(
    x_shape, kernel_shape, geometry, shared
):
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    kernel = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    assert fast_conv._windows_shared(x, kernel, geometry) == shared


@pytest.mark.parametrize("shape, chunk", [((4, 8, 8, 16), 1), ((8, 8, 8, 1), 2)])
def test_chunks_with_a_unit_axis_are_read_where_they_are(shape, chunk, monkeypatch):
    """Chunks of one image, or of one channel: the loop reads the batch in place, with no
    copy of it in the program."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", chunk * 4)
    x, y = _normal(shape), _normal(shape, seed=1)

    def fn(x, y):
        return jnp.sum(x * y, axis=0)

    chunked = jax.jit(lambda x, y: fast_conv._by_chunks(fn, (x, y), 1, summed=True))
    program = chunked.lower(x, y).compile().as_text()
    copies = re.findall(r"= f32\[([\d,]+)\]\S* copy\(", program)
    assert "while" in program
    assert [c for c in copies if np.prod([int(n) for n in c.split(",")]) == x.size] == []
    _close(chunked(x, y), fn(x, y))


@BOTH_LAYERS
def test_by_batch_chunks_first_and_second_derivatives_agree(cls, kwargs, monkeypatch):
    """One image per chunk (``CHUNK_BYTES`` 1): outputs, vjp and the kernel's Hessian."""
    monkeypatch.setattr(fast_conv, "CHUNK_BYTES", 1)
    x = _normal((3, 5, 6, 6))
    layers = _layers(cls, **kwargs)

    def derivatives(layer, params, x):
        kernel_hessian = jax.hessian(lambda k: _loss(layer, {**params, "kernel": k}, x))(
            params["kernel"]
        )
        return _forward_and_vjp(layer, params, x), kernel_hessian

    _fast_agrees(derivatives, layers, _params(layers["reference"], x), x, rtol=1e-4)


@BOTH_LAYERS
def test_a_bfloat16_input_computes_in_the_reference_dtype(cls, kwargs):
    """bfloat16 input, float32 parameters: both compute in float32, as Flax promotes."""
    x = _normal((2, 5, 6, 6), dtype=jnp.bfloat16)
    layers = _layers(cls, **kwargs)
    params = _params(layers["reference"], x)
    outputs = jax.jit(
        lambda p, x: {impl: layer.apply({"params": p}, x) for impl, layer in layers.items()},
        compiler_options=QUICK_COMPILE,
    )(params, x)
    assert outputs["fast"].dtype == outputs["reference"].dtype == jnp.float32
    _close(outputs["fast"], outputs["reference"])


@BOTH_LAYERS
def test_bfloat16_throughout_stays_bfloat16(cls, kwargs):
    x = _normal((2, 5, 6, 6), dtype=jnp.bfloat16)
    layers = _layers(cls, **kwargs)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params(layers["reference"], x))
    results = jax.jit(
        lambda p, x: {impl: _forward_and_vjp(layer, p, x) for impl, layer in layers.items()},
        compiler_options=QUICK_COMPILE,
    )(params, x)
    for got, expected in zip(*(jax.tree.leaves(results[impl]) for impl in ("fast", "reference"))):
        assert got.dtype == expected.dtype == jnp.bfloat16
        _close(got.astype(jnp.float32), expected.astype(jnp.float32), rtol=3e-2)


@pytest.mark.parametrize("cls, shape, kwargs", GROUPED[:1] + GROUPED[3:4])
def test_an_empty_batch_of_a_depthwise_layer_agrees(cls, shape, kwargs):
    """A batch of 0 through the tap sums: empty outputs and zero kernel gradients."""
    x = jnp.zeros((0, *shape[1:]))
    layers = _layers(cls, **kwargs)
    grads = _fast_agrees(_forward_and_vjp, layers, _params(layers["reference"], x), x)
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["fast"][1][0]))


@BOTH_LAYERS
def test_an_empty_batch_agrees(cls, kwargs):
    """A batch of 0 (PyTorch allows it): empty outputs and zero kernel gradients."""
    x = jnp.zeros((0, 5, 6, 6))
    layers = _layers(cls, **kwargs)
    params = _params(layers["reference"], x)
    grads = _fast_agrees(_forward_and_vjp, layers, params, x)["fast"][1][0]
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


def _tap_planes_calls(monkeypatch) -> list:
    """The calls of :func:`fast_conv._by_tap_planes` from now on."""
    calls = []
    by_tap_planes = fast_conv._by_tap_planes
    monkeypatch.setattr(
        fast_conv, "_by_tap_planes", lambda y, *a: calls.append(y) or by_tap_planes(y, *a)
    )
    return calls


@pytest.mark.parametrize(
    "out_channels, by_tap_planes", [(32, True), (48, True), (16, False), (64, False)]
)
def test_a_3d_transposed_conv_of_disjoint_taps_to_32_to_48_channels_goes_by_tap_planes(
    out_channels, by_tap_planes, monkeypatch
):
    """k2 s2 in 3-D, a forward: by tap planes to 32-48 output channels (V-Net's forward
    1.25-1.30x faster than by phases), not to 16 or 64 (slower there)."""
    calls = _tap_planes_calls(monkeypatch)
    geometry = fast_conv.Geometry((2, 2, 2), ((0, 0),) * 3, (1, 1, 1))
    y, kernel = _normal((1, 3, 4, 2, 8)), _normal((2, 2, 2, out_channels, 8), seed=1)
    out = jax.jit(_transposed_conv, static_argnums=2)(y, kernel, geometry)
    assert bool(calls) == by_tap_planes
    _close(out, _xla_transposed(y, kernel, geometry))


@pytest.mark.parametrize(
    "kernel_size, pads",
    [((2, 2, 2), ((1, 0), (0, 1), (1, 1))), ((3, 2, 1), ((1, -1), (0, 0), (0, -1)))],
)
def test_tap_planes_crop_and_pad_as_the_transposed_conv(kernel_size, pads):
    """Padding crops the output, ``output_padding`` (negative ``hi``) extends it; kernel
    sizes differ per axis (3, 2 and 1, each its stride)."""
    geometry = fast_conv.Geometry(kernel_size, pads, (1, 1, 1))
    y, kernel = _normal((2, 3, 2, 4, 5)), _normal((*kernel_size, 3, 5), seed=1)
    out = jax.jit(fast_conv._by_tap_planes, static_argnums=2)(y, kernel, geometry)
    _close(out, _xla_transposed(y, kernel, geometry))


def test_a_differentiated_3d_transposed_conv_does_not_go_by_tap_planes(monkeypatch):
    """In a forward+backward the forward runs beside the gradients, and there 3-D U-Net's
    took 1.03 and 1.10 times as long with tap planes: they serve a forward alone."""
    calls = _tap_planes_calls(monkeypatch)
    geometry = fast_conv.Geometry((2, 2, 2), ((0, 0),) * 3, (1, 1, 1))
    y, kernel = _normal((1, 3, 4, 2, 8)), _normal((2, 2, 2, 32, 8), seed=1)
    cotangent = _normal((1, 6, 8, 4, 32), seed=2)

    def loss(transposed, y, kernel):
        return jnp.vdot(transposed(y, kernel, geometry), cotangent)

    grads = jax.jit(jax.grad(functools.partial(loss, _transposed_conv), (0, 1)))(y, kernel)
    assert not calls
    for got, expected in zip(
        grads, jax.grad(functools.partial(loss, _xla_transposed), (0, 1))(y, kernel)
    ):
        _close(got, expected)
