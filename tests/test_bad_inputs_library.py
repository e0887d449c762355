"""Bad input to the library gets a TypeError (wrong type) or ValueError (wrong value)
that names the argument, raised before anything is traced or computed.

One row per case: ``V`` (ValueError) or ``T`` (TypeError), an id, the argument the message
must name (as a word), the callable and its arguments.
"""

import functools

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from jaxconv import embedding, interop, ops, shapes
from jaxconv import nn as jnn
from jaxconv import nnx as jnnx
from jaxconv.models import AutoencoderConfig

KEY = jax.random.key(0)
X = np.zeros((1, 6, 6, 4), np.float32)  # a valid 2-D input with 4 channels
K = np.zeros((3, 3, 4, 8), np.float32)  # a valid conv kernel for X (transposed: 8 -> 4)
KT = np.zeros((3, 3, 8, 4), np.float32)  # a valid transposed-conv kernel for X: 4 -> 8
CONFIG = AutoencoderConfig()


def linen(cls, *args, x=X, call=None, **kwargs):
    """Initialises the linen layer abstractly on ``x`` (errors raise at trace time)."""
    layer = cls(*args, **kwargs)
    return jax.eval_shape(functools.partial(layer.init, **(call or {})), KEY, x)


def nnx_layer(cls, *args, **kwargs):
    """Constructs the NNX layer abstractly (no initialisation computed)."""
    return nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))


def nnx_call(cls, *args, x=X, call=None, **kwargs):
    """Constructs the NNX layer and calls it on ``x``, abstractly."""
    return nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0))(x, **(call or {})))


def abstract_nnx_conv():
    return nnx_layer(jnnx.Conv, 4, 8, 3)


def _case(exc, id, argument, fn, *args, **kwargs):
    return pytest.param(fn, args, kwargs, exc, rf"\b{argument}\b", id=id)


def V(id, argument, fn, *args, **kwargs):
    """A case where ``fn(*args, **kwargs)`` raises ValueError naming ``argument``."""
    return _case(ValueError, id, argument, fn, *args, **kwargs)


def T(id, argument, fn, *args, **kwargs):
    """A case where ``fn(*args, **kwargs)`` raises TypeError naming ``argument``."""
    return _case(TypeError, id, argument, fn, *args, **kwargs)


SHAPES = [
    V("conv_output_shape kernel 0", "kernel_size", shapes.conv_output_shape, (5, 5), 0),
    T("conv_output_shape kernel float", "kernel_size", shapes.conv_output_shape, (5, 5), 2.5),
    T("conv_output_shape kernel bool", "kernel_size", shapes.conv_output_shape, (5, 5), True),
    T("conv_output_shape kernel str", "kernel_size", shapes.conv_output_shape, (5, 5), "3"),
    V(
        "conv_output_shape kernel 3-tuple in 2-D",
        "kernel_size",
        shapes.conv_output_shape,
        (5, 5),
        (3, 3, 3),
    ),
    V("conv_output_shape kernel empty tuple", "kernel_size", shapes.conv_output_shape, (5, 5), ()),
    V("conv_output_shape kernel too large", "kernel_size", shapes.conv_output_shape, (5, 5), 7),
    V("conv_output_shape stride 0", "stride", shapes.conv_output_shape, (5, 5), 3, stride=0),
    T(
        "conv_output_shape stride None in tuple",
        "stride",
        shapes.conv_output_shape,
        (5, 5),
        3,
        stride=(1, None),
    ),
    T(
        "conv_output_shape stride numpy float",
        "stride",
        shapes.conv_output_shape,
        (5, 5),
        3,
        stride=np.float64(2),
    ),
    T(
        "conv_output_shape stride numpy bool",
        "stride",
        shapes.conv_output_shape,
        (5, 5),
        3,
        stride=np.True_,
    ),
    V("conv_output_shape padding -1", "padding", shapes.conv_output_shape, (5, 5), 3, padding=-1),
    V(
        "conv_output_shape padding 'full'",
        "padding",
        shapes.conv_output_shape,
        (5, 5),
        3,
        padding="full",
    ),
    T(
        "conv_output_shape padding float",
        "padding",
        shapes.conv_output_shape,
        (5, 5),
        3,
        padding=1.5,
    ),
    V(
        "conv_output_shape padding same strided",
        "padding",
        shapes.conv_output_shape,
        (5, 5),
        3,
        stride=2,
        padding="same",
    ),
    V("conv_output_shape dilation 0", "dilation", shapes.conv_output_shape, (5, 5), 3, dilation=0),
    V(
        "conv_output_shape dilation 3-tuple",
        "dilation",
        shapes.conv_output_shape,
        (5, 5),
        3,
        dilation=(1, 2, 3),
    ),
    V(
        "conv_output_shape input size 0",
        "input_shape",
        shapes.conv_output_shape,
        (0, 5),
        1,
        padding=1,
    ),
    V("conv_output_shape input empty", "input_shape", shapes.conv_output_shape, (), 1),
    T("conv_output_shape input int", "input_shape", shapes.conv_output_shape, 5, 1),
    T("conv_output_shape input float sizes", "input_shape", shapes.conv_output_shape, (5.0,), 1),
    V("conv_output_shape input negative", "input_shape", shapes.conv_output_shape, (-3,), 1),
    V(
        "transpose output_padding >= stride",
        "output_padding",
        shapes.conv_transpose_output_shape,
        (5,),
        3,
        stride=2,
        output_padding=2,
    ),
    V(
        "transpose output_padding -1",
        "output_padding",
        shapes.conv_transpose_output_shape,
        (5,),
        3,
        output_padding=-1,
    ),
    T(
        "transpose output_padding float",
        "output_padding",
        shapes.conv_transpose_output_shape,
        (5,),
        3,
        output_padding=0.5,
    ),
    V(
        "transpose padding 'same'",
        "padding",
        shapes.conv_transpose_output_shape,
        (5,),
        3,
        padding="same",
    ),
    V(
        "transpose padding too large",
        "padding",
        shapes.conv_transpose_output_shape,
        (1, 1),
        1,
        padding=1,
    ),
    V(
        "transpose stride 3-tuple in 2-D",
        "stride",
        shapes.conv_transpose_output_shape,
        (1, 1),
        3,
        stride=(1, 1, 1),
    ),
    V(
        "transpose input numpy zero",
        "input_shape",
        shapes.conv_transpose_output_shape,
        (np.int64(0),),
        3,
    ),
    V(
        "output_padding_for asymmetric same",
        "padding",
        shapes.output_padding_for,
        (10,),
        4,
        padding="same",
    ),
    T("output_padding_for input str", "input_shape", shapes.output_padding_for, "ab", 3),
    V(
        "output_size unreachable",
        "output_size",
        shapes.output_padding_for_size,
        (5,),
        (8,),
        3,
        stride=2,
        padding=1,
    ),
    T("output_size int", "output_size", shapes.output_padding_for_size, (5,), 10, 3),
    T("output_size float", "output_size", shapes.output_padding_for_size, (5,), (10.0,), 3),
    T("output_size bool", "output_size", shapes.output_padding_for_size, (5,), (True,), 3),
    V("output_size wrong length", "output_size", shapes.output_padding_for_size, (5,), (10, 10), 3),
    V("output_size kernel 0", "kernel_size", shapes.output_padding_for_size, (5,), (7,), 0),
    V("conv_transpose_padding kernel 0", "kernel_size", shapes.conv_transpose_padding, 0),
    V(
        "conv_transpose_padding padding str",
        "padding",
        shapes.conv_transpose_padding,
        3,
        padding="valid",
    ),
    V("conv_padding 'SAME'", "padding", shapes.conv_padding, 2, 3, padding="SAME"),
    V("kernel shape groups 0", "groups", shapes.conv_kernel_shape, 2, 4, 8, 3, groups=0),
    T("kernel shape groups float", "groups", shapes.conv_kernel_shape, 2, 4, 8, 3, groups=1.0),
    V("kernel shape in_channels 0", "in_channels", shapes.conv_kernel_shape, 2, 0, 8, 3),
    V("kernel shape out_channels -2", "out_channels", shapes.conv_kernel_shape, 2, 4, -2, 3),
    V(
        "kernel shape in_channels by groups",
        "in_channels",
        shapes.conv_kernel_shape,
        2,
        3,
        8,
        3,
        groups=2,
    ),
    T("kernel shape out_channels str", "out_channels", shapes.conv_kernel_shape, 2, 4, "8", 3),
    V(
        "transpose kernel shape out by groups",
        "out_channels",
        shapes.conv_transpose_kernel_shape,
        2,
        4,
        3,
        3,
        groups=2,
    ),
    V("kernel_ndim 4-tuple", "kernel_size", shapes.kernel_ndim, (3, 3, 3, 3)),
    T("kernel_ndim None", "kernel_size", shapes.kernel_ndim, None),
    V(
        "check_conv_args padding_mode",
        "padding_mode",
        shapes.check_conv_args,
        2,
        3,
        padding_mode="mirror",
    ),
    V(
        "check_conv_transpose_args reflect",
        "padding_mode",
        shapes.check_conv_transpose_args,
        2,
        3,
        padding_mode="reflect",
    ),
    V(
        "check_conv_transpose_args None mode",
        "padding_mode",
        shapes.check_conv_transpose_args,
        2,
        3,
        padding_mode=None,
    ),
    V("per_dim wrong length", "stride", shapes.per_dim, "stride", [1, 2, 3], 2),
    T("positive_int numpy bool", "groups", shapes.positive_int, "groups", np.True_),
]

OPS = [
    T("conv x int", "x", ops.conv, X.astype(np.int32), K),
    T("conv x complex", "x", ops.conv, X.astype(np.complex64), K),
    T("conv x bool", "x", ops.conv, X.astype(bool), K),
    T("conv x str", "x", ops.conv, "abc", K),
    T("conv x None", "x", ops.conv, None, K),
    T("conv kernel int", "kernel", ops.conv, X, K.astype(np.int8)),
    T("conv bias int", "bias", ops.conv, X, K, np.zeros(8, np.int32)),
    V("conv bias wrong shape", "bias", ops.conv, X, K, np.zeros(4, np.float32)),
    V("conv x rank 2", "x", ops.conv, np.zeros((6, 4), np.float32), K),
    V("conv x rank 6", "x", ops.conv, np.zeros((1, 2, 2, 2, 2, 4), np.float32), K),
    V("conv x zero spatial", "x", ops.conv, np.zeros((1, 0, 6, 4), np.float32), K),
    V("conv x zero channels", "x", ops.conv, np.zeros((1, 6, 6, 0), np.float32), K),
    V("conv kernel rank 2", "kernel", ops.conv, X, np.zeros((4, 8), np.float32)),
    V("conv kernel zero size", "kernel", ops.conv, X, np.zeros((0, 3, 4, 8), np.float32)),
    V("conv x rank != kernel's", "x", ops.conv, np.zeros((1, 6, 4), np.float32), K),
    V("conv x channels != kernel's", "x", ops.conv, np.zeros((1, 6, 6, 3), np.float32), K),
    V("conv groups 0", "groups", ops.conv, X, K, groups=0),
    T("conv groups float", "groups", ops.conv, X, K, groups=2.0),
    V(
        "conv out_channels by groups",
        "out_channels",
        ops.conv,
        np.zeros((1, 6, 6, 6), np.float32),
        np.zeros((3, 3, 2, 5), np.float32),
        groups=3,
    ),
    V("conv stride 0", "stride", ops.conv, X, K, stride=0),
    V("conv padding same strided", "padding", ops.conv, X, K, stride=2, padding="same"),
    V("conv padding_mode bogus", "padding_mode", ops.conv, X, K, padding_mode="mirror"),
    V(
        "conv reflect padding too large",
        "padding_mode",
        ops.conv,
        X,
        K,
        padding=6,
        padding_mode="reflect",
    ),
    V("conv impl", "impl", ops.conv, X, K, impl="xla"),
    T("conv dtype int", "dtype", ops.conv, X, K, dtype=np.int32),
    T("conv dtype complex", "dtype", ops.conv, X, K, dtype="complex64"),
    T("conv dtype nonsense", "dtype", ops.conv, X, K, dtype="float33"),
    V(
        "conv kernel larger than input",
        "kernel_size",
        ops.conv,
        np.zeros((1, 2, 2, 4), np.float32),
        K,
    ),
    T("conv_transpose x int", "x", ops.conv_transpose, X.astype(np.int64), KT),
    T("conv_transpose x complex", "x", ops.conv_transpose, X.astype(np.complex128), KT),
    V(
        "conv_transpose output_padding too large",
        "output_padding",
        ops.conv_transpose,
        X,
        KT,
        stride=2,
        output_padding=2,
    ),
    V(
        "conv_transpose output_size unreachable",
        "output_size",
        ops.conv_transpose,
        X,
        KT,
        stride=2,
        output_size=(20, 20),
    ),
    V(
        "conv_transpose output_size and output_padding",
        "output_size",
        ops.conv_transpose,
        X,
        KT,
        stride=2,
        output_padding=1,
        output_size=(14, 14),
    ),
    V(
        "conv_transpose output_size wrong length",
        "output_size",
        ops.conv_transpose,
        X,
        KT,
        output_size=(8,),
    ),
    T(
        "conv_transpose output_size float",
        "output_size",
        ops.conv_transpose,
        X,
        KT,
        output_size=(8.0, 8),
    ),
    V(
        "conv_transpose in_channels by groups",
        "in_channels",
        ops.conv_transpose,
        np.zeros((1, 6, 6, 5), np.float32),
        np.zeros((3, 3, 2, 5), np.float32),
        groups=2,
    ),
    V("conv_transpose padding too large", "padding", ops.conv_transpose, X, KT, padding=9),
    V("conv_transpose padding same", "padding", ops.conv_transpose, X, KT, padding="same"),
    V("conv_transpose dilation 0", "dilation", ops.conv_transpose, X, KT, dilation=0),
    V(
        "conv_transpose bias wrong shape",
        "bias",
        ops.conv_transpose,
        X,
        KT,
        np.zeros(4, np.float32),
    ),
    T("conv_transpose dtype bool", "dtype", ops.conv_transpose, X, KT, dtype=bool),
    T("conv_transpose groups bool", "groups", ops.conv_transpose, X, KT, groups=True),
    V("conv_transpose impl None", "impl", ops.conv_transpose, X, KT, impl=None),
]

LINEN = [
    V("Conv features 0", "features", linen, jnn.Conv, 0, 3),
    T("Conv features float", "features", linen, jnn.Conv, 2.0, 3),
    T("Conv groups bool", "groups", linen, jnn.Conv, 8, 3, groups=True),
    V("Conv kernel 3-D on 2-D", "kernel_size", linen, jnn.Conv, 8, (3, 3, 3)),
    T("Conv kernel numpy float", "kernel_size", linen, jnn.Conv, 8, np.float32(3)),
    V("Conv x rank 2", "x", linen, jnn.Conv, 8, 3, x=np.zeros((6, 4), np.float32)),
    T("Conv x int", "x", linen, jnn.Conv, 8, 3, x=X.astype(np.int32)),
    T("Conv x complex", "x", linen, jnn.Conv, 8, 3, x=X.astype(np.complex64)),
    V("Conv x zero channels", "x", linen, jnn.Conv, 8, 3, x=np.zeros((1, 6, 6, 0), np.float32)),
    V("Conv x channels by groups", "x", linen, jnn.Conv, 8, 3, groups=8),
    T("Conv param_dtype int", "param_dtype", linen, jnn.Conv, 8, 3, param_dtype=np.int32),
    T("Conv dtype complex", "dtype", linen, jnn.Conv, 8, 3, dtype=np.complex64),
    V("Conv padding_mode", "padding_mode", linen, jnn.Conv, 8, 3, padding_mode="edge"),
    V("Conv impl", "impl", linen, jnn.Conv, 8, 3, impl="cpu"),
    V("Conv padding negative", "padding", linen, jnn.Conv, 8, 3, padding=(1, -1)),
    V(
        "ConvTranspose padding_mode reflect",
        "padding_mode",
        linen,
        jnn.ConvTranspose,
        8,
        3,
        padding_mode="reflect",
    ),
    V("ConvTranspose features by groups", "features", linen, jnn.ConvTranspose, 3, 3, groups=2),
    V(
        "ConvTranspose output_size unreachable",
        "output_size",
        linen,
        jnn.ConvTranspose,
        8,
        3,
        call=dict(output_size=(3, 3)),
    ),
    T(
        "ConvTranspose output_size numpy float",
        "output_size",
        linen,
        jnn.ConvTranspose,
        8,
        3,
        call=dict(output_size=(np.float32(8), 8)),
    ),
    V(
        "ConvTranspose stride 3-tuple on 2-D",
        "stride",
        linen,
        jnn.ConvTranspose,
        8,
        3,
        stride=(2, 2, 2),
    ),
    T(
        "ConvTranspose param_dtype int8",
        "param_dtype",
        linen,
        jnn.ConvTranspose,
        8,
        3,
        param_dtype="int8",
    ),
    V(
        "ConvTranspose output_padding",
        "output_padding",
        linen,
        jnn.ConvTranspose,
        8,
        3,
        output_padding=1,
    ),
    T("ConvTranspose x bool", "x", linen, jnn.ConvTranspose, 8, 3, x=X.astype(bool)),
]

NNX = [
    V("Conv in_features 0", "in_features", nnx_layer, jnnx.Conv, 0, 8, 3),
    T("Conv out_features float", "out_features", nnx_layer, jnnx.Conv, 4, 1.5, 3),
    V("Conv kernel 4-tuple", "kernel_size", nnx_layer, jnnx.Conv, 4, 8, (3, 3, 3, 3)),
    T("Conv kernel str", "kernel_size", nnx_layer, jnnx.Conv, 4, 8, "3"),
    T("Conv groups numpy float", "groups", nnx_layer, jnnx.Conv, 4, 8, 3, groups=np.float32(2)),
    V("Conv in_features by groups", "in_features", nnx_layer, jnnx.Conv, 4, 6, 3, groups=3),
    V("Conv stride 3-tuple in 2-D", "stride", nnx_layer, jnnx.Conv, 4, 8, 3, stride=(1, 2, 3)),
    V("Conv padding 'full'", "padding", nnx_layer, jnnx.Conv, 4, 8, 3, padding="full"),
    V("Conv padding_mode", "padding_mode", nnx_layer, jnnx.Conv, 4, 8, 3, padding_mode="wrap"),
    V("Conv impl", "impl", nnx_layer, jnnx.Conv, 4, 8, 3, impl="gpu"),
    T("Conv dtype int", "dtype", nnx_layer, jnnx.Conv, 4, 8, 3, dtype=np.int16),
    T(
        "Conv param_dtype complex",
        "param_dtype",
        nnx_layer,
        jnnx.Conv,
        4,
        8,
        3,
        param_dtype=np.complex64,
    ),
    V(
        "Conv call x 1-D on a 2-D layer",
        "x",
        nnx_call,
        jnnx.Conv,
        4,
        8,
        3,
        x=np.zeros((1, 6, 4), np.float32),
    ),
    T("Conv call x int", "x", nnx_call, jnnx.Conv, 4, 8, 3, x=X.astype(np.uint8)),
    V("Conv call x channels", "x", nnx_call, jnnx.Conv, 3, 8, 3),
    V("Conv call kernel larger than x", "kernel_size", nnx_call, jnnx.Conv, 4, 8, 9),
    V(
        "ConvTranspose padding_mode circular",
        "padding_mode",
        nnx_layer,
        jnnx.ConvTranspose,
        4,
        8,
        3,
        padding_mode="circular",
    ),
    V(
        "ConvTranspose out_features by groups",
        "out_features",
        nnx_layer,
        jnnx.ConvTranspose,
        4,
        6,
        3,
        groups=4,
    ),
    V(
        "ConvTranspose padding same",
        "padding",
        nnx_layer,
        jnnx.ConvTranspose,
        4,
        8,
        3,
        padding="same",
    ),
    V(
        "ConvTranspose call output_size unreachable",
        "output_size",
        nnx_call,
        jnnx.ConvTranspose,
        4,
        8,
        3,
        call=dict(output_size=(30, 30)),
    ),
    V(
        "ConvTranspose call output_padding",
        "output_padding",
        nnx_call,
        jnnx.ConvTranspose,
        4,
        8,
        3,
        output_padding=1,
    ),
    T(
        "ConvTranspose call x complex",
        "x",
        nnx_call,
        jnnx.ConvTranspose,
        4,
        8,
        3,
        x=X.astype(np.complex64),
    ),
    V("ConvTranspose call x 3-D on a 1-D layer", "x", nnx_call, jnnx.ConvTranspose, 4, 8, (3,)),
]

_TORCH_DECODER = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3))

INTEROP = [
    V("conv_params weight 2-D", "weight", interop.conv_params, np.zeros((4, 8), np.float32)),
    T("conv_params weight int", "weight", interop.conv_params, np.zeros((8, 4, 3, 3), np.int32)),
    V(
        "conv_params groups 0",
        "groups",
        interop.conv_params,
        np.zeros((8, 4, 3, 3), np.float32),
        groups=0,
    ),
    T(
        "conv_params groups float",
        "groups",
        interop.conv_params,
        np.zeros((8, 4, 3, 3), np.float32),
        groups=1.5,
    ),
    V(
        "conv_params weight by groups",
        "weight",
        interop.conv_params,
        np.zeros((5, 4, 3, 3), np.float32),
        groups=2,
    ),
    T(
        "conv_params bias complex",
        "bias",
        interop.conv_params,
        np.zeros((8, 4, 3, 3), np.float32),
        np.zeros(8, np.complex64),
    ),
    V(
        "conv_transpose_params bias shape",
        "bias",
        interop.conv_transpose_params,
        np.zeros((4, 8, 3, 3), np.float32),
        np.zeros(4, np.float32),
    ),
    T(
        "params_from_state_dict list",
        "state_dict",
        interop.params_from_state_dict,
        [],
        jnn.Conv(8, 3),
        X,
    ),
    T("params_from_state_dict model", "model", interop.params_from_state_dict, {}, "model", X),
    T(
        "params_from_state_dict name_map list",
        "name_map",
        interop.params_from_state_dict,
        _TORCH_DECODER.state_dict(),
        jnn.Conv(8, 3),
        X,
        name_map=[("0", "Conv_0")],
    ),
    V(
        "params_from_state_dict name_map path",
        "name_map",
        interop.params_from_state_dict,
        _TORCH_DECODER.state_dict(),
        jnn.Conv(8, 3),
        X,
        name_map={"0": "Conv_9"},
    ),
    V(
        "params_from_state_dict weight count",
        "state_dict",
        interop.params_from_state_dict,
        {},
        jnn.Conv(8, 3),
        X,
    ),
    T(
        "name_map_by_order state_dict list",
        "state_dict",
        interop.name_map_by_order,
        [],
        jnn.Conv(8, 3),
        X,
    ),
    T("load_state_dict model", "model", interop.load_state_dict, jnn.Conv(8, 3), {}),
    T("load_state_dict state_dict", "state_dict", interop.load_state_dict, abstract_nnx_conv(), []),
    V(
        "load_state_dict missing key",
        "state_dict",
        interop.load_state_dict,
        abstract_nnx_conv(),
        {},
    ),
    T(
        "load_state_dict weight int",
        "weight",
        interop.load_state_dict,
        abstract_nnx_conv(),
        {"weight": np.zeros((8, 4, 3, 3), np.int64), "bias": np.zeros(8, np.float32)},
    ),
    T("to_state_dict source", "source", interop.to_state_dict, 3),
    V(
        "to_state_dict name_map with NNX",
        "name_map",
        interop.to_state_dict,
        abstract_nnx_conv(),
        {"": "x"},
    ),
    V("to_state_dict abstract NNX", "source", interop.to_state_dict, abstract_nnx_conv()),
    V(
        "to_state_dict name_map unmapped",
        "name_map",
        interop.to_state_dict,
        {"a": {"kernel": K}, "b": {"kernel": K}},
        {"0": "a"},
    ),
    V(
        "to_state_dict other params",
        "params",
        interop.to_state_dict,
        {"Dense_0": {"kernel": np.zeros((3, 4))}},
    ),
]

_GAUSSIAN = embedding.Gaussian(np.zeros(2), np.eye(2))
_RNG = np.random.default_rng(0)

EMBEDDING = [
    V("interpolate steps 1", "steps", embedding.interpolate, np.zeros(3), np.ones(3), 1),
    T("interpolate steps float", "steps", embedding.interpolate, np.zeros(3), np.ones(3), 2.0),
    V("interpolate shapes differ", "a", embedding.interpolate, np.zeros(3), np.ones(4), 3),
    T("interpolate a complex", "a", embedding.interpolate, np.zeros(3, complex), np.ones(3), 3),
    V("pca x 1-D", "x", embedding.pca, np.zeros(5)),
    V("pca n_components 0", "n_components", embedding.pca, np.zeros((5, 3)), 0),
    T("pca n_components float", "n_components", embedding.pca, np.zeros((5, 3)), 1.0),
    T("pca x strings", "x", embedding.pca, np.array([["a", "b"]])),
    V(
        "nearest_neighbours k 0",
        "k",
        embedding.nearest_neighbours,
        np.zeros((2, 3)),
        np.zeros((4, 3)),
        0,
    ),
    T(
        "nearest_neighbours k float",
        "k",
        embedding.nearest_neighbours,
        np.zeros((2, 3)),
        np.zeros((4, 3)),
        1.0,
    ),
    V(
        "nearest_neighbours k too large",
        "k",
        embedding.nearest_neighbours,
        np.zeros((2, 3)),
        np.zeros((4, 3)),
        5,
    ),
    V(
        "nearest_neighbours row shapes",
        "references",
        embedding.nearest_neighbours,
        np.zeros((2, 3)),
        np.zeros((4, 5)),
    ),
    V(
        "nearest_neighbours no queries",
        "queries",
        embedding.nearest_neighbours,
        np.zeros((0, 3)),
        np.zeros((4, 3)),
    ),
    V(
        "nearest_neighbours batch_size 0",
        "batch_size",
        embedding.nearest_neighbours,
        np.zeros((2, 3)),
        np.zeros((4, 3)),
        batch_size=0,
    ),
    T(
        "nearest_rms_distance queries complex",
        "queries",
        embedding.nearest_rms_distance,
        np.zeros((2, 3), complex),
        np.zeros((4, 3)),
    ),
    T(
        "knn_predict train_y float",
        "train_y",
        embedding.knn_predict,
        np.zeros((4, 3)),
        np.zeros(4),
        np.zeros((2, 3)),
    ),
    V(
        "knn_predict train_y length",
        "train_y",
        embedding.knn_predict,
        np.zeros((4, 3)),
        np.zeros(3, int),
        np.zeros((2, 3)),
    ),
    V(
        "knn_predict train_y negative",
        "train_y",
        embedding.knn_predict,
        np.zeros((4, 3)),
        -np.ones(4, int),
        np.zeros((2, 3)),
    ),
    V(
        "knn_accuracy test_y length",
        "test_y",
        embedding.knn_accuracy,
        np.zeros((4, 3)),
        np.zeros(4, int),
        np.zeros((2, 3)),
        np.zeros(3, int),
    ),
    V("chance_accuracy empty", "train_y", embedding.chance_accuracy, np.zeros(0, int)),
    V("fit_gaussian one row", "x", embedding.fit_gaussian, np.zeros((1, 2))),
    T("fit_gaussian complex", "x", embedding.fit_gaussian, np.zeros((3, 2), complex)),
    V("sample_gaussian n -1", "n", embedding.sample_gaussian, _GAUSSIAN, -1, _RNG),
    T("sample_gaussian rng", "rng", embedding.sample_gaussian, _GAUSSIAN, 2, 0),
    T("sample_gaussian gaussian", "gaussian", embedding.sample_gaussian, {"mean": 0}, 2, _RNG),
    V("default_pairs count 0", "count", embedding.default_pairs, np.arange(10), 0),
    T("default_pairs labels float", "labels", embedding.default_pairs, np.zeros(10)),
    V("encode images shape", "images", embedding.encode, CONFIG, {}, np.zeros((2, 28, 28))),
    V(
        "encode batch_size 0",
        "batch_size",
        embedding.encode,
        CONFIG,
        {},
        np.zeros((2, 28, 28, 1)),
        batch_size=0,
    ),
    V("decode embeddings size", "embeddings", embedding.decode, CONFIG, {}, np.zeros((2, 63))),
]


@pytest.mark.parametrize(
    "fn, args, kwargs, exc, match", SHAPES + OPS + LINEN + NNX + INTEROP + EMBEDDING
)
def test_bad_input_raises_naming_the_argument(fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
