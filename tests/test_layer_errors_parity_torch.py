"""Bad arguments of the torch-semantics layers: torch raises (at construction or at the
call) exactly where jaxconv raises, and jaxconv's error is a ValueError or TypeError
naming the argument; the edge cases torch accepts are accepted.

Each case builds and calls torch's layer on a channels-first input and jaxconv's on the
channels-last one (abstractly: no computation). The random parity suites test the
same on random configurations; this table names the rules.
"""

import warnings
from functools import partial as P

import jax
import pytest
import torch
from flax import nnx
from layer_parity import TORCH_ERRORS

from jaxconv import nnx as jnnx

pytestmark = pytest.mark.parity

T = torch.nn
J = jnnx


def _linear(in_features, out_features):
    return jnnx.Linear(in_features, out_features, rngs=nnx.Rngs(0))


def _channels_last(shape):
    return (shape[0], *shape[2:], shape[1]) if len(shape) > 2 else shape


# (id, torch layer, jaxconv layer, torch input shape or None (construction only),
#  jaxconv's error or None, text of its message). The jaxconv input is the torch shape
#  channels-last, except where both layers read the same array (SAME_ARRAY); an id
#  ending in "eval" calls both in evaluation mode.
CASES = [
    # BatchNorm
    ("bn-negative", P(T.BatchNorm2d, -1), P(J.BatchNorm, -1), None, ValueError, "num_features"),
    ("bn-float", P(T.BatchNorm2d, 2.5), P(J.BatchNorm, 2.5), None, TypeError, "num_features"),
    ("bn-zero", P(T.BatchNorm2d, 0), P(J.BatchNorm, 0), None, None, None),
    (
        "bn-eps-str",
        P(T.BatchNorm1d, 3, eps="a"),
        P(J.BatchNorm, 3, eps="a"),
        (2, 3),
        TypeError,
        "eps",
    ),
    (
        "bn-momentum-str",
        P(T.BatchNorm1d, 3, momentum="a"),
        P(J.BatchNorm, 3, momentum="a"),
        (2, 3),
        TypeError,
        "momentum",
    ),
    (
        "bn-momentum-2",
        P(T.BatchNorm1d, 3, momentum=2.0),
        P(J.BatchNorm, 3, momentum=2.0),
        (2, 3),
        None,
        None,
    ),
    (
        "bn-eps-0-train",
        P(T.BatchNorm1d, 3, eps=0.0),
        P(J.BatchNorm, 3, eps=0.0),
        (2, 3),
        ValueError,
        "eps",
    ),
    ("bn-eps-0-eval", P(T.BatchNorm1d, 3, eps=0.0), P(J.BatchNorm, 3, eps=0.0), (2, 3), None, None),
    (
        "bn-eps-negative-eval",
        P(T.BatchNorm1d, 3, eps=-1.0),
        P(J.BatchNorm, 3, eps=-1.0),
        (2, 3),
        ValueError,
        "eps",
    ),
    (
        "bn-one-value-train",
        P(T.BatchNorm2d, 3),
        P(J.BatchNorm, 3),
        (1, 3, 1, 1),
        ValueError,
        "more than 1 value",
    ),
    ("bn-one-value-eval", P(T.BatchNorm2d, 3), P(J.BatchNorm, 3), (1, 3, 1, 1), None, None),
    (
        "bn-one-value-no-stats-eval",
        P(T.BatchNorm1d, 3, track_running_stats=False),
        P(J.BatchNorm, 3, track_running_stats=False),
        (1, 3),
        ValueError,
        "more than 1 value",
    ),
    ("bn-channels", P(T.BatchNorm2d, 3), P(J.BatchNorm, 3), (2, 4, 3, 3), ValueError, "channels"),
    (
        "bn-channels-stateless",
        P(T.BatchNorm2d, 3, affine=False, track_running_stats=False),
        P(J.BatchNorm, 3, affine=False, track_running_stats=False),
        (2, 4, 3, 3),
        None,
        None,
    ),
    # InstanceNorm
    ("in-float-unused", P(T.InstanceNorm1d, 2.5), P(J.InstanceNorm, 2.5), (2, 3, 4), None, None),
    (
        "in-float-affine",
        P(T.InstanceNorm1d, 2.5, affine=True),
        P(J.InstanceNorm, 2.5, affine=True),
        None,
        TypeError,
        "num_features",
    ),
    (
        "in-channels-affine",
        P(T.InstanceNorm2d, 3, affine=True),
        P(J.InstanceNorm, 3, affine=True),
        (2, 4, 3, 3),
        ValueError,
        "channels",
    ),
    (
        "in-channels-stats",
        P(T.InstanceNorm2d, 3, track_running_stats=True),
        P(J.InstanceNorm, 3, track_running_stats=True),
        (2, 4, 3, 3),
        ValueError,
        "channels",
    ),
    (
        "in-one-position",
        P(T.InstanceNorm1d, 3),
        P(J.InstanceNorm, 3),
        (2, 3, 1),
        ValueError,
        "more than 1 spatial",
    ),
    (
        "in-one-position-stats-eval",
        P(T.InstanceNorm1d, 3, track_running_stats=True),
        P(J.InstanceNorm, 3, track_running_stats=True),
        (2, 3, 1),
        None,
        None,
    ),
    # GroupNorm
    (
        "gn-indivisible",
        P(T.GroupNorm, 2, 3),
        P(J.GroupNorm, 2, 3),
        None,
        ValueError,
        "num_channels",
    ),
    ("gn-zero-groups", P(T.GroupNorm, 0, 3), P(J.GroupNorm, 0, 3), None, ValueError, "num_groups"),
    (
        "gn-negative-groups",
        P(T.GroupNorm, -1, 3),
        P(J.GroupNorm, -1, 3),
        (2, 3, 4),
        ValueError,
        "num_groups",
    ),
    (
        "gn-float-groups",
        P(T.GroupNorm, 2.0, 4),
        P(J.GroupNorm, 2.0, 4),
        (2, 4, 3),
        TypeError,
        "num_groups",
    ),
    (
        "gn-channels-affine",
        P(T.GroupNorm, 2, 4),
        P(J.GroupNorm, 2, 4),
        (2, 6, 3),
        ValueError,
        "channels",
    ),
    (
        "gn-channels-no-affine",
        P(T.GroupNorm, 2, 4, affine=False),
        P(J.GroupNorm, 2, 4, affine=False),
        (2, 6, 3),
        None,
        None,
    ),
    (
        "gn-channels-indivisible",
        P(T.GroupNorm, 2, 4, affine=False),
        P(J.GroupNorm, 2, 4, affine=False),
        (2, 5, 3),
        ValueError,
        "num_groups",
    ),
    (
        "gn-one-value",
        P(T.GroupNorm, 2, 2),
        P(J.GroupNorm, 2, 2),
        (1, 2),
        ValueError,
        "more than 1 value",
    ),
    ("gn-rank-1", P(T.GroupNorm, 2, 4), P(J.GroupNorm, 2, 4), (4,), ValueError, "x must be"),
    # LayerNorm (the same array in both)
    ("ln-empty", P(T.LayerNorm, ()), P(J.LayerNorm, ()), (2, 3), ValueError, "normalized_shape"),
    ("ln-negative", P(T.LayerNorm, -1), P(J.LayerNorm, -1), None, ValueError, "normalized_shape"),
    ("ln-float", P(T.LayerNorm, 2.5), P(J.LayerNorm, 2.5), None, TypeError, "normalized_shape"),
    ("ln-mismatch", P(T.LayerNorm, 4), P(J.LayerNorm, 4), (2, 3), ValueError, "normalized_shape"),
    (
        "ln-too-long",
        P(T.LayerNorm, (2, 3, 4)),
        P(J.LayerNorm, (2, 3, 4)),
        (3, 4),
        ValueError,
        "normalized_shape",
    ),
    (
        "ln-eps-str",
        P(T.LayerNorm, 3, eps="a"),
        P(J.LayerNorm, 3, eps="a"),
        (2, 3),
        TypeError,
        "eps",
    ),
    (
        "ln-eps-negative",
        P(T.LayerNorm, 3, eps=-1.0),
        P(J.LayerNorm, 3, eps=-1.0),
        (2, 3),
        None,
        None,
    ),
    # Linear (the same array in both)
    ("linear-negative", P(T.Linear, -1, 3), P(_linear, -1, 3), None, ValueError, "in_features"),
    ("linear-float", P(T.Linear, 2.5, 3), P(_linear, 2.5, 3), None, TypeError, "in_features"),
    ("linear-zero", P(T.Linear, 0, 3), P(_linear, 0, 3), (2, 0), None, None),
    ("linear-mismatch", P(T.Linear, 4, 3), P(_linear, 4, 3), (2, 3), ValueError, "features"),
    ("linear-scalar", P(T.Linear, 1, 3), P(_linear, 1, 3), (), ValueError, "x must have"),
    ("linear-vector", P(T.Linear, 4, 3), P(_linear, 4, 3), (4,), None, None),
    # PReLU
    ("prelu-negative", P(T.PReLU, -1), P(J.PReLU, -1), None, ValueError, "num_parameters"),
    ("prelu-float", P(T.PReLU, 2.5), P(J.PReLU, 2.5), None, TypeError, "num_parameters"),
    ("prelu-init-str", P(T.PReLU, 1, init="a"), P(J.PReLU, 1, init="a"), None, TypeError, "init"),
    ("prelu-channels", P(T.PReLU, 3), P(J.PReLU, 3), (2, 4, 5), ValueError, "channels"),
    ("prelu-scalar", P(T.PReLU, 3), P(J.PReLU, 3), (), ValueError, "channel axis"),
    ("prelu-one-scalar", P(T.PReLU, 1), P(J.PReLU, 1), (), None, None),
    # pooling
    ("pool-kernel-0", P(T.MaxPool2d, 0), P(J.MaxPool, 0), (1, 1, 4, 4), ValueError, "kernel_size"),
    ("pool-stride-0", P(T.MaxPool2d, 2, 0), P(J.MaxPool, 2, 0), (1, 1, 4, 4), ValueError, "stride"),
    ("pool-stride-empty", P(T.MaxPool2d, 2, ()), P(J.MaxPool, 2, ()), (1, 1, 4, 4), None, None),
    (
        "pool-padding-half",
        P(T.MaxPool2d, 3, padding=2),
        P(J.MaxPool, 3, padding=2),
        (1, 1, 6, 6),
        ValueError,
        "padding",
    ),
    (
        "pool-negative-padding",
        P(T.AvgPool2d, 3, padding=-1),
        P(J.AvgPool, 3, padding=-1),
        (1, 1, 6, 6),
        ValueError,
        "padding",
    ),
    (
        "pool-dilation-0",
        P(T.MaxPool2d, 2, dilation=0),
        P(J.MaxPool, 2, dilation=0),
        (1, 1, 4, 4),
        ValueError,
        "dilation",
    ),
    (
        "pool-ceil-int",
        P(T.MaxPool2d, 2, ceil_mode=1),
        P(J.MaxPool, 2, ceil_mode=1),
        (1, 1, 4, 4),
        TypeError,
        "ceil_mode",
    ),
    (
        "pool-too-small",
        P(T.MaxPool2d, 3, dilation=2),
        P(J.MaxPool, 3, dilation=2),
        (1, 1, 4, 4),
        ValueError,
        "output size",
    ),
    (
        "pool-kernel-float",
        P(T.AvgPool2d, 2.5),
        P(J.AvgPool, 2.5),
        (1, 1, 4, 4),
        TypeError,
        "kernel_size",
    ),
    (
        "avg-count-int",
        P(T.AvgPool2d, 2, count_include_pad=1),
        P(J.AvgPool, 2, count_include_pad=1),
        (1, 1, 4, 4),
        TypeError,
        "count_include_pad",
    ),
    (
        "avg-divisor-0",
        P(T.AvgPool2d, 2, divisor_override=0),
        P(J.AvgPool, 2, divisor_override=0),
        (1, 1, 4, 4),
        ValueError,
        "divisor_override",
    ),
    (
        "avg-divisor-float",
        P(T.AvgPool2d, 2, divisor_override=2.5),
        P(J.AvgPool, 2, divisor_override=2.5),
        (1, 1, 4, 4),
        TypeError,
        "divisor_override",
    ),
    (
        "avg-divisor-negative",
        P(T.AvgPool2d, 2, divisor_override=-2),
        P(J.AvgPool, 2, divisor_override=-2),
        (1, 1, 4, 4),
        None,
        None,
    ),
    (
        "avg-3d-input-below-kernel",
        P(T.AvgPool3d, 3, padding=1),
        P(J.AvgPool, (3, 3, 3), padding=1),
        (1, 1, 2, 4, 4),
        ValueError,
        "kernel_size",
    ),
    # up-sampling
    ("up-neither", P(T.Upsample), P(J.Upsample), (1, 1, 4), ValueError, "scale_factor"),
    (
        "up-both",
        P(T.Upsample, size=2, scale_factor=2.0),
        P(J.Upsample, size=2, scale_factor=2.0),
        (1, 1, 4),
        ValueError,
        "scale_factor",
    ),
    (
        "up-zero-scale-is-none",
        P(T.Upsample, size=3, scale_factor=0),
        P(J.Upsample, size=3, scale_factor=0),
        (1, 1, 4),
        None,
        None,
    ),
    (
        "up-zero-scale-alone",
        P(T.Upsample, scale_factor=0),
        P(J.Upsample, scale_factor=0),
        (1, 1, 4),
        ValueError,
        "scale_factor",
    ),
    (
        "up-align-nearest",
        P(T.Upsample, scale_factor=2, align_corners=False),
        P(J.Upsample, scale_factor=2, align_corners=False),
        (1, 1, 4),
        ValueError,
        "align_corners",
    ),
    (
        "up-align-str",
        P(T.Upsample, scale_factor=2, mode="linear", align_corners="x"),
        P(J.Upsample, scale_factor=2, mode="linear", align_corners="x"),
        (1, 1, 4),
        TypeError,
        "align_corners",
    ),
    (
        "up-mode",
        P(T.Upsample, scale_factor=2, mode="bogus"),
        P(J.Upsample, scale_factor=2, mode="bogus"),
        (1, 1, 4),
        ValueError,
        "mode",
    ),
    (
        "up-mode-rank",
        P(T.Upsample, scale_factor=2, mode="bilinear"),
        P(J.Upsample, scale_factor=2, mode="bilinear"),
        (1, 1, 4),
        ValueError,
        "mode",
    ),
    (
        "up-size-length",
        P(T.Upsample, size=(2, 3)),
        P(J.Upsample, size=(2, 3)),
        (1, 1, 4),
        ValueError,
        "size",
    ),
    (
        "up-size-float",
        P(T.Upsample, size=2.5),
        P(J.Upsample, size=2.5),
        (1, 1, 4),
        TypeError,
        "size",
    ),
    (
        "up-scale-length",
        P(T.Upsample, scale_factor=(2.0,)),
        P(J.Upsample, scale_factor=(2.0,)),
        (1, 1, 4, 4),
        ValueError,
        "scale_factor",
    ),
    (
        "up-recompute-size",
        P(T.Upsample, size=3, recompute_scale_factor=True),
        P(J.Upsample, size=3, recompute_scale_factor=True),
        (1, 1, 4),
        ValueError,
        "recompute_scale_factor",
    ),
    (
        "up-to-zero",
        P(T.Upsample, scale_factor=0.1),
        P(J.Upsample, scale_factor=0.1),
        (1, 1, 5),
        ValueError,
        "output size",
    ),
    # pixel shuffling, flattening
    (
        "shuffle-0",
        P(T.PixelShuffle, 0),
        P(J.PixelShuffle, 0),
        (1, 4, 2, 2),
        ValueError,
        "upscale_factor",
    ),
    (
        "shuffle-float",
        P(T.PixelShuffle, 2.5),
        P(J.PixelShuffle, 2.5),
        (1, 4, 2, 2),
        TypeError,
        "upscale_factor",
    ),
    (
        "shuffle-channels",
        P(T.PixelShuffle, 2),
        P(J.PixelShuffle, 2),
        (1, 6, 2, 2),
        ValueError,
        "upscale_factor",
    ),
    ("shuffle-rank", P(T.PixelShuffle, 2), P(J.PixelShuffle, 2), (4, 2), ValueError, "x must be"),
    (
        "unshuffle-height",
        P(T.PixelUnshuffle, 2),
        P(J.PixelUnshuffle, 2),
        (1, 3, 3, 2),
        ValueError,
        "downscale_factor",
    ),
    ("flatten-range", P(T.Flatten, 4), P(J.Flatten, 4), (2, 3, 4, 5), ValueError, "start_dim"),
    ("flatten-float", P(T.Flatten, 1.0), P(J.Flatten, 1.0), (2, 3, 4, 5), TypeError, "start_dim"),
]
SAME_ARRAY = ("ln-", "linear-", "prelu-scalar", "prelu-one-scalar", "shuffle-rank")


def _torch_raises(make, shape, evaluation) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = make().train(not evaluation)
            if shape is not None:
                layer(torch.randn(shape))
    except TORCH_ERRORS:
        return True
    return False


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_raises_exactly_where_jaxconv_raises_naming_the_argument(case):
    name, torch_make, ours_make, shape, error, text = case
    evaluation = name.endswith("eval")
    torch_raises = _torch_raises(torch_make, shape, evaluation)
    assert torch_raises == (error is not None), "torch's behaviour changed"
    same_array = name.startswith(SAME_ARRAY)
    x = None if shape is None else jax.ShapeDtypeStruct(
        shape if same_array else _channels_last(shape), "float32"
    )  # fmt: skip

    def ours():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = ours_make()
            layer.eval() if evaluation else layer.train()
            if x is not None:
                graphdef, state = nnx.split(layer)
                jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)

    if error is None:
        ours()
    else:
        with pytest.raises(error, match=text):
            ours()


def test_unbatched_inputs_are_refused_where_torch_takes_them():
    """The one deliberate difference: torch reads a rank-(1 + spatial) input as one
    unbatched example (C, *spatial); jaxconv's inputs always have a batch axis (a
    channels-last (*spatial, C) could not be told from a batch)."""
    torch.nn.InstanceNorm1d(3)(torch.randn(3, 5))
    torch.nn.MaxPool2d(2)(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="x must be"):
        jnnx.InstanceNorm(3)(jax.numpy.zeros((5, 3)))
    with pytest.raises(ValueError, match="x must be"):
        jnnx.MaxPool(2)(jax.numpy.zeros((4, 4, 3)))
