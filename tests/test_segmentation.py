"""jaxconv.segmentation: any-size U-Net, loss, confusion and scores, predictor; the figure."""

import dataclasses
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
    return {
        u: segmentation.init_params(dataclasses.replace(TINY, upsampling=u), 0)
        for u in segmentation.UPSAMPLINGS
    }


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
def test_logits_have_exactly_the_input_size(tiny_params, upsampling, height, width):
    config = dataclasses.replace(TINY, upsampling=upsampling)
    images = jax.ShapeDtypeStruct((2, height, width, 1), jnp.float32)
    logits = jax.eval_shape(
        lambda x: UNet(config).apply({"params": tiny_params[upsampling]}, x), images
    )
    assert logits.shape == (2, height, width, segmentation.scenes.NUM_CLASSES)


@pytest.mark.parametrize("upsampling", segmentation.UPSAMPLINGS)
def test_every_up_sampling_layer_gives_back_its_skip_size(tiny_params, upsampling):
    config = dataclasses.replace(TINY, upsampling=upsampling)
    _, state = jax.eval_shape(
        lambda x: UNet(config).apply(
            {"params": tiny_params[upsampling]},
            x,
            capture_intermediates=lambda module, _: isinstance(module, segmentation.Up),
        ),
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
    logits = jnp.zeros((2, 3, 5, 11))
    labels = jnp.arange(30).reshape(2, 3, 5) % 11
    assert float(segmentation.loss(logits, labels)) == pytest.approx(math.log(11))


def test_class_weights_weight_each_pixel_by_its_true_class():
    # pixel 0 (class 0): ce = log 2; pixel 1 (class 1): ce = log(1 + e^-2)
    logits = jnp.array([[0.0, 0.0], [0.0, 2.0]])
    labels = jnp.array([0, 1])
    ce = np.array([math.log(2), math.log(1 + math.exp(-2))])
    weighted = (1 * ce[0] + 4 * ce[1]) / 5
    assert float(segmentation.loss(logits, labels, [1.0, 4.0])) == pytest.approx(weighted)
    assert float(segmentation.loss(logits, labels)) == pytest.approx(ce.mean())


def test_class_weights_are_one_for_the_background_and_foreground_weight_for_the_rest():
    np.testing.assert_array_equal(segmentation.class_weights(4, 5.0), [1.0, 5.0, 5.0, 5.0])


def test_bottom_loss_of_a_cell_of_one_digit_is_its_foreground_cross_entropy():
    labels = jnp.array([[[3, 3], [0, 0]]])  # one 2x2 cell: half class 3, half background
    logits = jnp.arange(11.0).reshape(1, 1, 1, 11)
    expected = -jax.nn.log_softmax(logits[0, 0, 0, 1:])[3 - 1]
    assert float(segmentation.bottom_loss(logits, labels)) == pytest.approx(float(expected))


def test_bottom_loss_of_background_only_is_zero_whatever_the_logits():
    logits = np.random.default_rng(0).normal(size=(2, 3, 4, 11)).astype(np.float32)
    labels = jnp.zeros((2, 12, 16), jnp.int32)
    assert float(jax.jit(segmentation.bottom_loss)(logits, labels)) == 0.0


def test_train_loss_is_the_weighted_pixel_loss_plus_the_bottom_loss(tiny_params):
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((2, 16, 20, 1), np.float32),
        "label": rng.integers(0, 11, (2, 16, 20)).astype(np.int32),
    }

    @jax.jit
    def by_parts(params, batch):
        logits, bottom = UNet(TINY).apply({"params": params}, batch["image"], with_bottom=True)
        pixels = segmentation.loss(logits, batch["label"], segmentation.class_weights(11))
        return pixels + segmentation.BOTTOM_LOSS_WEIGHT * segmentation.bottom_loss(
            bottom, batch["label"]
        )

    params = tiny_params["transposed"]
    actual = jax.jit(segmentation.train_loss, static_argnums=0)(TINY, params, batch)
    assert float(actual) == pytest.approx(float(by_parts(params, batch)), rel=1e-5)


def test_learning_rate_warms_up_then_decays_to_one_percent():
    schedule = segmentation.learning_rate_schedule(1.0, steps_per_epoch=50, epochs=4)
    warmup = round(segmentation.WARMUP * 200)
    assert float(schedule(0)) == 0.0
    assert float(schedule(warmup // 2)) == pytest.approx(0.5)
    assert float(schedule(warmup)) == pytest.approx(1.0)
    assert float(schedule(200)) == pytest.approx(0.01)


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    labels = jnp.array([[[0, 1], [2, 2]]])
    logits = jax.nn.one_hot(jnp.array([[[0, 2], [2, 1]]]), 3)
    np.testing.assert_array_equal(
        segmentation.confusion_matrix(logits, labels), [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    )


def test_confusion_matrix_leaves_out_masked_images():
    labels = jnp.zeros((3, 2, 2), jnp.int32)
    logits = jax.nn.one_hot(jnp.array([0, 1, 1])[:, None, None] * jnp.ones((3, 2, 2), int), 2)
    confusion = segmentation.confusion_matrix(logits, labels, jnp.array([1.0, 1.0, 0.0]))
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
    return segmentation.predict_fn(TINY, tiny_params["transposed"], batch_size=4)


def test_predict_gives_int32_labels_of_the_input_size(predict):
    images = np.random.default_rng(0).random((5, 17, 23, 1), np.float32)
    labels = predict(images)
    assert labels.shape == (5, 17, 23) and labels.dtype == np.int32
    assert 0 <= labels.min() and labels.max() < 11


def test_predict_is_the_argmax_of_the_logits(predict, tiny_params):
    images = np.random.default_rng(1).random((4, 17, 23, 1), np.float32)
    logits = jax.jit(UNet(TINY).apply)({"params": tiny_params["transposed"]}, images)
    np.testing.assert_array_equal(predict(images), np.argmax(logits, axis=-1))


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


def test_segmentation_figure_has_one_column_per_scene_and_a_legend(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((6, 24, 24, 1), np.float32)
    labels = rng.integers(0, 11, (6, 24, 24))
    path = plots.segmentation(images, labels, labels[::-1], tmp_path / "seg.png", "title")
    with Image.open(path) as png:
        width, height = png.size
    assert (width, height) == (round(100 * (1.5 * 6 + 2.6)), round(100 * 4.9))


def test_class_colours_are_fixed_and_distinct():
    colours = plots.class_colours(11)
    assert len({tuple(c) for c in colours}) == 11
    np.testing.assert_array_equal(colours[0], [0, 0, 0, 1])
    np.testing.assert_array_equal(plots.class_colours(3), colours[:3])
