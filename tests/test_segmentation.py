"""jaxconv.segmentation: any-size U-Net, loss, confusion and scores, predictor; the figure."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxconv import plots, segmentation, shapes
from jaxconv.segmentation import SegmentationConfig, UNet

TINY = SegmentationConfig(widths=(4, 8, 8), depth=0, norm_groups=2)


@pytest.fixture(scope="module")
def tiny_params():
    """TINY's parameters (transposed up-sampling), for the tests that compute with them."""
    return segmentation.init_params(TINY, 0)


@functools.cache
def _param_shapes(config: SegmentationConfig) -> dict:
    """The shapes of ``config``'s parameters, for the shape tests: no init compiled."""
    return jax.eval_shape(lambda: segmentation.init_params(config, 0))


# ---------------------------------------------------------------- config


def test_config_round_trips_through_a_dict():
    config = SegmentationConfig(widths=(8, 16, 32), depth=2, upsampling="resize", norm_groups=4)
    assert SegmentationConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"widths": (8,)}, "widths"),
        ({"widths": (8, 0)}, "widths"),
        ({"upsampling": "nearest"}, "upsampling"),
        ({"num_classes": 1}, "num_classes"),
        ({"depth": -1}, "depth"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationConfig(**kwargs)


# ---------------------------------------------------------------- any input size


@pytest.mark.parametrize("upsampling", segmentation.UPSAMPLINGS)
@pytest.mark.parametrize("height, width", [(17, 23), (33, 64), (16, 16), (65, 31)])
def test_logits_have_exactly_the_input_size(upsampling, height, width):
    config = dataclasses.replace(TINY, upsampling=upsampling)
    images = jax.ShapeDtypeStruct((2, height, width, 1), jnp.float32)
    logits = jax.eval_shape(
        lambda p, x: UNet(config).apply({"params": p}, x), _param_shapes(config), images
    )
    assert logits.shape == (2, height, width, segmentation.scenes.NUM_CLASSES)


@pytest.mark.parametrize("upsampling", segmentation.UPSAMPLINGS)
def test_every_up_sampling_layer_gives_back_its_skip_size(upsampling):
    config = dataclasses.replace(TINY, upsampling=upsampling)
    _, state = jax.eval_shape(
        lambda p, x: UNet(config).apply(
            {"params": p},
            x,
            capture_intermediates=lambda module, _: isinstance(module, segmentation.Up),
        ),
        _param_shapes(config),
        jax.ShapeDtypeStruct((1, 17, 23, 1), jnp.float32),
    )
    ups = {name: out["__call__"][0].shape for name, out in state["intermediates"].items()}
    # down: 17x23 -> 9x12 -> 5x6; up: 5x6 -> 9x12 -> 17x23
    assert sorted(ups.values()) == [(1, 9, 12, 8), (1, 17, 23, 4)]


@pytest.mark.parametrize(
    "skip, expected", [((17, 24), (0, 1)), ((9, 12), (0, 1)), ((16, 16), (1, 1)), ((5, 5), (0, 0))]
)
def test_up_output_padding_is_what_the_down_conv_dropped(skip, expected):
    assert segmentation.up_output_padding(skip) == expected
    down = shapes.conv_output_shape(skip, 3, 2, 1)
    assert shapes.conv_transpose_output_shape(down, 3, 2, 1, expected) == skip


def test_init_params_depend_on_the_seed_only():
    a, b, c = (segmentation.init_params(TINY, seed) for seed in (0, 0, 1))
    leaves = jax.tree.leaves
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


# ---------------------------------------------------------------- loss and metrics


def test_loss_of_uniform_logits_is_log_num_classes():
    logits = np.zeros((2, 3, 5, 11), np.float32)
    labels = np.arange(30, dtype=np.int32).reshape(2, 3, 5) % 11
    assert float(jax.jit(segmentation.loss)(logits, labels)) == pytest.approx(math.log(11))


def test_class_weights_weight_each_pixel_by_its_true_class():
    # pixel 0 (class 0): ce = log 2; pixel 1 (class 1): ce = log(1 + e^-2)
    logits = np.array([[0.0, 0.0], [0.0, 2.0]], np.float32)
    labels = np.array([0, 1], np.int32)
    ce = np.array([math.log(2), math.log(1 + math.exp(-2))])
    weighted = (1 * ce[0] + 4 * ce[1]) / 5
    both = jax.jit(lambda *a: (segmentation.loss(*a, [1.0, 4.0]), segmentation.loss(*a)))
    with_weights, without = both(logits, labels)
    assert float(with_weights) == pytest.approx(weighted)
    assert float(without) == pytest.approx(ce.mean())


def test_class_weights_are_one_for_the_background_and_foreground_weight_for_the_rest():
    np.testing.assert_array_equal(segmentation.class_weights(4, 5.0), [1.0, 5.0, 5.0, 5.0])


def test_bottom_loss_of_a_cell_of_one_digit_is_its_foreground_cross_entropy():
    labels = np.array([[[3, 3], [0, 0]]], np.int32)  # one 2x2 cell: half 3, half background
    logits = np.arange(11.0, dtype=np.float32).reshape(1, 1, 1, 11)
    foreground = logits[0, 0, 0, 1:]
    expected = np.log(np.sum(np.exp(foreground))) - foreground[3 - 1]
    assert float(jax.jit(segmentation.bottom_loss)(logits, labels)) == pytest.approx(expected)


def test_bottom_loss_of_background_only_is_zero_whatever_the_logits():
    logits = np.random.default_rng(0).normal(size=(2, 3, 4, 11)).astype(np.float32)
    labels = np.zeros((2, 12, 16), np.int32)
    assert float(jax.jit(segmentation.bottom_loss)(logits, labels)) == 0.0


def test_train_loss_is_the_weighted_pixel_loss_plus_the_bottom_loss(tiny_params):
    # the recipe (README): foreground pixels weigh 5, background 1; bottom loss weight 1
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((2, 16, 20, 1), np.float32),
        "label": rng.integers(0, 11, (2, 16, 20)).astype(np.int32),
    }

    @jax.jit  # one program: the model's outputs, their bottom loss and the objective under test
    def outputs_and_loss(params, batch):
        logits, bottom = UNet(TINY).apply({"params": params}, batch["image"], True)
        bottom_loss = segmentation.bottom_loss(bottom, batch["label"])
        return logits, bottom_loss, segmentation.train_loss(TINY, params, batch)

    logits, bottom_loss, actual = outputs_and_loss(tiny_params, batch)
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, batch["label"][..., None], -1)[..., 0]
    w = np.where(batch["label"] == 0, 1.0, 5.0)
    bottom_loss = float(bottom_loss)
    assert bottom_loss > 0.1  # so that leaving it out shows
    expected = np.sum(w * ce) / np.sum(w) + 1.0 * bottom_loss
    assert float(actual) == pytest.approx(expected, rel=1e-5)


def test_learning_rate_warms_up_then_decays_to_one_percent():
    schedule = segmentation.learning_rate_schedule(1.0, steps_per_epoch=50, epochs=4)
    warmup = round(segmentation.WARMUP * 200)
    rates = jax.jit(jax.vmap(schedule))(np.array([0, warmup // 2, warmup, 200], np.int32))
    assert float(rates[0]) == 0.0
    assert rates[1:] == pytest.approx([0.5, 1.0, 0.01])


def test_a_run_of_one_step_takes_it_at_the_peak_rate():
    """No step is left to warm up over: the one step is the decay's first, at the peak."""
    schedule = segmentation.learning_rate_schedule(1.0, steps_per_epoch=1, epochs=1)
    assert float(jax.jit(schedule)(np.int32(0))) == 1.0


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    labels = np.array([[[0, 1], [2, 2]]], np.int32)
    logits = np.eye(3, dtype=np.float32)[np.array([[[0, 2], [2, 1]]])]  # one-hot predictions
    np.testing.assert_array_equal(
        jax.jit(segmentation.confusion_matrix)(logits, labels), [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    )


def test_confusion_matrix_leaves_out_masked_images():
    labels = np.zeros((3, 2, 2), np.int32)
    predicted = np.broadcast_to(np.array([0, 1, 1])[:, None, None], (3, 2, 2))
    logits = np.eye(2, dtype=np.float32)[predicted]  # image 0 all 0s, images 1 and 2 all 1s
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    confusion = jax.jit(segmentation.confusion_matrix)(logits, labels, mask)
    np.testing.assert_array_equal(confusion, [[4, 4], [0, 0]])


def test_scores_of_a_perfect_prediction_are_one():
    result = segmentation.scores(np.diag([50, 3, 0, 7]))
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0
    assert result["per_class_iou"] == [1.0, 1.0, None, 1.0]


def test_scores_of_a_known_confusion():
    # class 0: TP 5, FN 1, FP 2 -> 5/8; class 1: TP 3, FN 2, FP 1 -> 1/2; class 2 absent
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    result = segmentation.scores(confusion)
    assert result["per_class_iou"] == [pytest.approx(5 / 8), pytest.approx(1 / 2), None]
    assert result["miou"] == pytest.approx((5 / 8 + 1 / 2) / 2)
    assert result["pixel_accuracy"] == pytest.approx(8 / 11)


def test_a_class_only_predicted_counts_in_the_miou_with_iou_zero():
    result = segmentation.scores(np.array([[4, 1], [0, 0]]))
    assert result["per_class_iou"] == [pytest.approx(0.8), 0.0]
    assert result["miou"] == pytest.approx(0.4)


# ---------------------------------------------------------------- predictor


@pytest.fixture(scope="module")
def predict(tiny_params):
    return segmentation.predict_fn(TINY, tiny_params, batch_size=4)


def test_predict_gives_int32_labels_of_the_input_size(predict):
    images = np.random.default_rng(0).random((5, 17, 23, 1), np.float32)
    labels = predict(images)
    assert labels.shape == (5, 17, 23) and labels.dtype == np.int32
    assert 0 <= labels.min() and labels.max() < 11


_tiny_apply = jax.jit(UNet(TINY).apply)  # one program per image size for every test


def _direct_labels(params: dict, images: np.ndarray) -> np.ndarray:
    """The argmax of the model's logits, one image at a time (no batching, no padding)."""
    return np.concatenate(
        [np.argmax(_tiny_apply({"params": params}, x[None]), -1) for x in images]
    )


def test_predict_is_the_argmax_of_the_logits_also_in_a_padded_last_batch(predict, tiny_params):
    # 6 images in batches of 4: the second holds 2 images and 2 rows of padding
    images = np.random.default_rng(1).random((6, 17, 23, 1), np.float32)
    expected = _direct_labels(tiny_params, images)
    padding = _direct_labels(tiny_params, np.zeros_like(images[:2]))
    assert np.mean(expected[4:] != padding) > 0.1  # the padding's labels are not the images'
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(predict(images), expected)


def test_predict_accepts_values_a_few_float32_ulps_outside_zero_one(predict):
    # a linear resize of an image in [0, 1] can round to 1 + 1 ulp (issue 21, item 6)
    images = np.random.default_rng(2).random((2, 16, 20, 1), np.float32)
    images[0, 0, 0, 0] = np.nextafter(np.float32(1), np.float32(2))
    images[1, 0, 0, 0] = np.float32(1) + 3 * np.finfo(np.float32).eps
    images[1, 5, 5, 0] = -2 * np.finfo(np.float32).eps
    np.testing.assert_array_equal(predict(images), predict(np.clip(images, 0, 1)))


@pytest.mark.parametrize("value", [1 + 1e-4, -1e-4, 1.5, -0.01])
def test_predict_refuses_values_beyond_rounding_outside_zero_one(predict, value):
    images = np.full((1, 16, 16, 1), 0.5, np.float32)
    images[0, 3, 3, 0] = value
    with pytest.raises(ValueError, match=r"image values must be in \[0, 1\]"):
        predict(images)


def test_predictors_share_one_program_per_image_size(tiny_params):
    # the parameters are an argument of the compiled program, not constants baked into it
    params = tiny_params
    other = jax.tree.map(lambda p: p + 0.5, params)
    images = np.random.default_rng(3).random((2, 19, 21, 1), np.float32)
    compiles = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        first = segmentation.predict_fn(TINY, params, batch_size=2)(images)
        second = segmentation.predict_fn(TINY, other, batch_size=2)(images)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(compiles) == 1
    np.testing.assert_array_equal(first, _direct_labels(params, images))
    np.testing.assert_array_equal(second, _direct_labels(other, images))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((16, 16, 1), np.float32), "rank 4"),
        (np.zeros((1, 16, 16, 3), np.float32), "1 channel"),
        (np.zeros((1, 15, 32, 1), np.float32), "at least 16x16"),
        (np.zeros((1, 16, 16, 1), np.uint8), "floating point"),
        (np.full((1, 16, 16, 1), 255.0, np.float32), r"\[0, 1\]"),
        (np.full((1, 16, 16, 1), -0.5, np.float32), r"\[0, 1\]"),
        (np.full((1, 16, 16, 1), np.nan, np.float32), r"\[0, 1\]"),
    ],
    ids=["rank", "channels", "too-small", "dtype", "above-1", "negative", "nan"],
)
def test_predict_rejects_bad_images_naming_the_problem(predict, images, message):
    with pytest.raises(ValueError, match=message):
        predict(images)


# ---------------------------------------------------------------- figure


def _pixels_of_colour(path, rgba: np.ndarray) -> int:
    with Image.open(path) as png:
        rgb = np.asarray(png.convert("RGB")).astype(np.int64)
    return int(np.sum(np.all(np.abs(rgb - np.round(255 * rgba[:3])) <= 2, axis=-1)))


def test_segmentation_figure_draws_each_label_map_in_its_class_colours(tmp_path):
    images = np.random.default_rng(0).random((3, 24, 24, 1), np.float32)
    threes, fives = np.full((3, 24, 24), 3), np.full((3, 24, 24), 5)
    mixed = plots.segmentation(images, threes, fives, tmp_path / "mixed.png", "title")
    same = plots.segmentation(images, threes, threes, tmp_path / "same.png", "title")
    three, five = plots.class_colours(11)[[3, 5]]
    # predicted 5s fill three panels; otherwise 5's colour is only in the legend
    assert _pixels_of_colour(mixed, five) > 10 * _pixels_of_colour(same, five)
    assert _pixels_of_colour(same, three) > 1.5 * _pixels_of_colour(mixed, three)


def test_class_colours_are_fixed_and_distinct():
    colours = plots.class_colours(11)
    assert len({tuple(c) for c in colours}) == 11
    np.testing.assert_array_equal(colours[0], [0, 0, 0, 1])
    np.testing.assert_array_equal(plots.class_colours(3), colours[:3])
