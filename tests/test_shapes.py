"""jaxconv.shapes: the lecture's round trips, the formulas, and PyTorch's argument errors."""

import subprocess
import sys

import numpy as np
import pytest

from jaxconv import shapes

# The lecture: Conv2d then ConvTranspose2d(8, 8, kernel_size=5, ...) on a 64x64 input.
LECTURE_ROUND_TRIPS = [
    # (conv/transposed-conv kwargs, conv output, transposed-conv output)
    (dict(kernel_size=5), (60, 60), (64, 64)),
    (dict(kernel_size=5, padding=2), (64, 64), (64, 64)),
    (dict(kernel_size=5, stride=2), (30, 30), (63, 63)),
    (dict(kernel_size=5, stride=2, output_padding=1), (30, 30), (64, 64)),
]


@pytest.mark.parametrize("kwargs, conv_out, back", LECTURE_ROUND_TRIPS)
def test_lecture_round_trip_shapes(kwargs, conv_out, back):
    conv_kwargs = {k: v for k, v in kwargs.items() if k != "output_padding"}
    assert shapes.conv_output_shape((64, 64), **conv_kwargs) == conv_out
    assert shapes.conv_transpose_output_shape(conv_out, **kwargs) == back


def test_output_padding_for_fixes_the_strided_round_trip():
    assert shapes.output_padding_for((64, 64), 5, stride=2) == (1, 1)
    assert shapes.output_padding_for((64, 64), 5) == (0, 0)


def test_output_padding_for_is_per_dimension():
    assert shapes.output_padding_for((28, 27), 3, stride=2, padding=1) == (1, 0)


def test_output_padding_for_rejects_asymmetric_same_padding():
    with pytest.raises(ValueError, match="asymmetric"):
        shapes.output_padding_for((10,), 4, padding="same")


def test_output_padding_for_accepts_symmetric_same_padding():
    assert shapes.output_padding_for((10,), 5, padding="same") == (0,)


def test_conv_padding_same_puts_the_odd_pixel_high():
    assert shapes.conv_padding(2, (4, 3), padding="same", dilation=(1, 2)) == ((1, 2), (2, 2))


def test_conv_transpose_padding_pairs():
    # lo = d(k-1) - p, hi = lo + output_padding
    assert shapes.conv_transpose_padding(3, 2, 1, 1) == ((1, 2),)
    assert shapes.conv_transpose_padding((5, 3), 1, (4, 0), 0, (1, 2)) == ((0, 0), (4, 4))
    assert shapes.conv_transpose_padding(3, padding=4, ndim=3) == ((-2, -2),) * 3


def test_a_one_tuple_is_broadcast_like_pytorch():
    assert shapes.conv_output_shape((9, 9), (3,), stride=(2,)) == (4, 4)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=3, stride=0), "stride"),
        (dict(kernel_size=3, padding=-1), "padding"),
        (dict(kernel_size=3, dilation=0), "dilation"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(kernel_size=3, padding="full"), "padding"),
        (dict(kernel_size=3, stride=2, padding="same"), "same"),
        (dict(kernel_size=9), "kernel_size"),
    ],
)
def test_conv_errors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        shapes.conv_output_shape((5, 5), **kwargs)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(kernel_size=3, stride=2, output_padding=2), "output_padding"),
        (dict(kernel_size=3, output_padding=-1), "output_padding"),
        (dict(kernel_size=1, padding=1), "padding"),
        (dict(kernel_size=3, padding="same"), "padding"),
        (dict(kernel_size=3, stride=(1, 1, 1)), "stride"),
    ],
)
def test_conv_transpose_errors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        shapes.conv_transpose_output_shape((1, 1), **kwargs)


def test_output_padding_below_dilation_is_allowed():
    assert shapes.conv_transpose_output_shape((5,), 3, dilation=3, output_padding=2) == (13,)


def test_shapes_imports_without_jax():
    code = "import sys, jaxconv.shapes; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# torch's output_size: ConvTransposeNd._output_padding


def test_output_padding_for_size_is_the_size_above_the_smallest():
    # 5 -> smallest (5-1)*2 - 2 + 2 + 1 = 9, largest 10
    assert shapes.output_padding_for_size((5,), (10,), 3, stride=2, padding=1) == (1,)
    assert shapes.output_padding_for_size((5, 5), (9, 10), 3, stride=2, padding=1) == (0, 1)


def test_output_size_may_be_the_whole_channels_last_shape():
    assert shapes.output_padding_for_size((5,), (8, 10, 3), 3, stride=2, padding=1) == (1,)


@pytest.mark.parametrize("size", [(8,), (11,)])
def test_an_unreachable_output_size_raises_naming_the_range(size):
    with pytest.raises(
        ValueError, match=r"output_size .* valid sizes range from \(9,\) to \(10,\)"
    ):
        shapes.output_padding_for_size((5,), size, 3, stride=2, padding=1)


def test_an_output_size_of_another_length_raises():
    with pytest.raises(ValueError, match="output_size must have 2 .* or 4"):
        shapes.output_padding_for_size((5, 5), (10,), 3, stride=2)


# numpy integers, bools and zero sizes


def test_numpy_integers_count_as_ints():
    assert shapes.conv_output_shape((np.int64(9),), np.int32(3), stride=np.int64(2)) == (4,)
    assert shapes.per_dim("stride", (np.int16(1), 2), 2) == (1, 2)


@pytest.mark.parametrize("value", [True, 2.0, "3", None, (1, 2.5)])
def test_a_non_int_is_a_type_error_naming_the_argument(value):
    with pytest.raises(TypeError, match="stride must be an int"):
        shapes.conv_output_shape((9, 9), 3, stride=value)


def test_a_zero_size_spatial_dimension_is_refused_as_torch_does():
    with pytest.raises(ValueError, match="input_shape"):
        shapes.conv_output_shape((0, 5), 1, padding=1)


# the layer checks shared by jaxconv.nn and jaxconv.nnx


def test_kernel_shapes_are_the_two_jaxconv_layouts():
    assert shapes.conv_kernel_shape(2, 6, 4, (3, 2), groups=2) == (3, 2, 3, 4)
    assert shapes.conv_transpose_kernel_shape(2, 6, 4, (3, 2), groups=2) == (3, 2, 2, 6)


def test_kernel_shape_errors_use_the_callers_names():
    with pytest.raises(ValueError, match=r"out_features \(5\) must be divisible by groups \(2\)"):
        shapes.conv_kernel_shape(1, 4, 5, 3, groups=2, names=("in_features", "out_features"))


@pytest.mark.parametrize("kernel_size, ndim", [(3, 2), ((3,), 1), ((3, 1), 2), ((1, 2, 3), 3)])
def test_kernel_ndim_is_the_tuple_length_and_two_for_an_int(kernel_size, ndim):
    assert shapes.kernel_ndim(kernel_size) == ndim


def test_torch_init_bound_is_one_over_root_fan_in():
    assert shapes.torch_init_bound((3, 3, 4, 8)) == pytest.approx(1 / 6)


# pooling and interpolation (torch's MaxPoolNd / AvgPoolNd, F.interpolate)


def test_pool_output_shape_is_the_conv_formula_with_stride_defaulting_to_the_kernel():
    assert shapes.pool_output_shape((9, 8), 2) == (4, 4)
    assert shapes.pool_output_shape((9,), 3, stride=2, padding=1, dilation=2) == (4,)


def test_ceil_mode_rounds_up_but_the_last_window_must_start_before_the_right_padding():
    assert shapes.pool_output_shape((5,), 2, stride=2) == (2,)
    assert shapes.pool_output_shape((5,), 2, stride=2, ceil_mode=True) == (3,)
    # n=5, k=2, s=2, p=1: rounding up gives 4 windows, starting at input positions -1, 1,
    # 3 and 5; the one at 5 would start in the right padding, so torch drops it
    assert shapes.pool_output_shape((5,), 2, stride=2, padding=1, ceil_mode=True) == (3,)
    assert shapes.pool_output_shape((6,), 2, stride=2, padding=1, ceil_mode=True) == (4,)


def test_pool_padding_reaches_exactly_the_last_window():
    assert shapes.pool_padding((5,), 2, stride=2, ceil_mode=True) == ((0, 1),)
    assert shapes.pool_padding((6,), 3, stride=2, padding=1) == ((1, 0),)


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(kernel_size=2, stride=0), ValueError, "stride"),
        (dict(kernel_size=2, padding=-1), ValueError, "padding"),
        (dict(kernel_size=3, padding=2), ValueError, "padding must be at most half"),
        (dict(kernel_size=2, dilation=0), ValueError, "dilation"),
        (dict(kernel_size=4, dilation=3), ValueError, "output size"),
        (dict(kernel_size=2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
        (dict(kernel_size=2.0), TypeError, "kernel_size"),
    ],
)
def test_pool_errors_name_the_argument(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        shapes.pool_output_shape((6, 6), **kwargs)


def test_interpolate_output_is_the_size_or_int_of_n_times_the_scale():
    assert shapes.interpolate_output_shape((5, 4), size=7) == (7, 7)
    assert shapes.interpolate_output_shape((5, 4), scale_factor=(2.1, 0.3)) == (10, 1)
    # the kernels get 1/scale_factor unless it is recomputed from the sizes
    assert shapes.interpolate_scales((5,), scale_factor=2.1) == ((10,), (2.1,))
    assert shapes.interpolate_scales((5,), scale_factor=2.1, recompute_scale_factor=True) == (
        (10,),
        (None,),
    )


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        (dict(), ValueError, "either size or scale_factor"),
        (dict(size=3, scale_factor=2.0), ValueError, "size or scale_factor, not both"),
        (dict(size=(3,)), ValueError, "size must be an int or a sequence of 2"),
        (dict(size=2.5), TypeError, "size"),
        (dict(size=True), TypeError, "size"),
        (dict(scale_factor=True), TypeError, "scale_factor"),
        (dict(scale_factor=(2.0,)), ValueError, "scale_factor must be a number or a sequence"),
        (dict(scale_factor=float("nan")), ValueError, "scale_factor must be finite"),
        (dict(scale_factor=0.1), ValueError, "output size"),
        (dict(size=0), ValueError, "output size"),
        (dict(size=3, recompute_scale_factor=True), ValueError, "recompute_scale_factor"),
    ],
)
def test_interpolate_errors_name_the_argument(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        shapes.interpolate_output_shape((5, 4), **kwargs)
