"""jaxconv.scenes: digit scenes, their label maps and split, and TFDS segmentation datasets."""

import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxconv import input_pipeline, scenes
from jaxconv.input_pipeline import Dataset, DatasetUnavailableError
from jaxconv.scenes import INK_THRESHOLD, NUM_CLASSES, make_scenes


@pytest.fixture(scope="module")
def scene_pair(mnist5k):
    return scenes.digit_scenes(mnist5k, 40, 40, seed=3)


# ---------------------------------------------------------------- digit scenes


def test_scenes_are_float_images_in_unit_range_with_int32_label_maps(scene_pair):
    train, _ = scene_pair
    assert train.images.shape == (40, 64, 64, 1) and train.images.dtype == np.float32
    assert train.labels.shape == (40, 64, 64) and train.labels.dtype == np.int32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert 0 <= train.labels.min() and train.labels.max() < NUM_CLASSES


def test_the_same_seed_gives_the_same_scenes(mnist5k, scene_pair):
    train, test = scenes.digit_scenes(mnist5k, 40, 40, seed=3)
    for again, first in [(train, scene_pair[0]), (test, scene_pair[1])]:
        np.testing.assert_array_equal(again.images, first.images)
        np.testing.assert_array_equal(again.labels, first.labels)
        np.testing.assert_array_equal(again.sources, first.sources)


def test_another_seed_gives_other_scenes(mnist5k, scene_pair):
    train, test = scenes.digit_scenes(mnist5k, 40, 40, seed=4)
    assert not np.array_equal(train.images, scene_pair[0].images)
    assert not np.array_equal(test.images, scene_pair[1].images)


def test_train_and_test_scenes_are_laid_out_differently(scene_pair):
    train, test = scene_pair
    assert not np.array_equal(train.labels > 0, test.labels > 0)


def test_each_scene_records_one_to_four_digits_then_minus_one(scene_pair):
    counts = (scene_pair[0].sources >= 0).sum(axis=1)
    assert set(counts) == {1, 2, 3, 4}
    for sources, count in zip(scene_pair[0].sources, counts):
        assert np.all(sources[:count] >= 0) and np.all(sources[count:] == -1)


def test_test_scenes_show_only_test_digits_and_train_scenes_only_train_digits(mnist5k):
    # Train digits are all labelled 3 and test digits 7 here, so a scene's classes tell
    # which split its digits came from.
    digits = Dataset(
        "split",
        mnist5k.train_images[:50],
        np.full(50, 3),
        mnist5k.test_images[:50],
        np.full(50, 7),
    )
    train, test = scenes.digit_scenes(digits, 30, 30)
    assert set(np.unique(train.labels)) == {0, 1 + 3}
    assert set(np.unique(test.labels)) == {0, 1 + 7}


def test_a_scene_shows_the_classes_of_its_recorded_source_digits(mnist5k, scene_pair):
    _, test = scene_pair
    for labels, sources in zip(test.labels, test.sources):
        drawn = {1 + int(mnist5k.test_labels[s]) for s in sources if s >= 0}
        assert set(np.unique(labels)) - {0} <= drawn
    # and they are test digits: the first source of every scene has visible ink there
    assert all(mnist5k.test_images[s[0]].max() > INK_THRESHOLD for s in test.sources)


def test_a_lone_digit_is_labelled_where_its_ink_exceeds_the_threshold(mnist5k, monkeypatch):
    monkeypatch.setattr(scenes, "DIGITS_PER_SCENE", (1, 1))
    one = make_scenes(mnist5k.test_images, mnist5k.test_labels, 5, seed=0)
    for image, labels, sources in zip(one.images, one.labels, one.sources):
        digit_class = 1 + mnist5k.test_labels[sources[0]]
        expected = np.where(image[..., 0] > INK_THRESHOLD, digit_class, 0)
        np.testing.assert_array_equal(labels, expected)


def test_a_later_digit_lies_on_top_of_an_earlier_one(monkeypatch):
    # Two all-ink digits, each covering the whole canvas: the second one drawn wins.
    monkeypatch.setattr(scenes, "DIGITS_PER_SCENE", (2, 2))
    monkeypatch.setattr(scenes, "DIGIT_SIZE", (24, 24))
    digits, digit_labels = np.ones((2, 28, 28, 1), np.float32), np.array([4, 9])
    drawn = make_scenes(digits, digit_labels, 10, height=24, width=24, seed=0)
    for labels, sources in zip(drawn.labels, drawn.sources):
        assert np.all(labels == 1 + digit_labels[sources[1]])
    np.testing.assert_array_equal(drawn.images, 1.0)


@pytest.mark.parametrize("height, width", [(33, 47), (64, 20), (128, 128)])
def test_canvases_of_any_size_hold_whole_digits(mnist5k, height, width):
    drawn = make_scenes(mnist5k.train_images, mnist5k.train_labels, 6, height=height, width=width)
    assert drawn.images.shape == (6, height, width, 1)
    assert drawn.labels.shape == (6, height, width)
    assert np.all((drawn.labels > 0).any(axis=(1, 2)))


def test_a_canvas_smaller_than_the_smallest_digit_raises(mnist5k):
    with pytest.raises(ValueError, match="canvas must be at least"):
        make_scenes(mnist5k.train_images, mnist5k.train_labels, 1, height=12, width=64)


def test_digits_that_are_not_28x28x1_raise():
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        make_scenes(np.zeros((3, 28, 28, 3), np.float32), np.zeros(3), 1)


def test_random_crops_cut_the_same_window_of_each_image_and_its_labels():
    images = np.arange(3 * 6 * 7, dtype=np.float32).reshape(3, 6, 7, 1)
    labels = images[..., 0].astype(np.int32)
    rngs = [np.random.default_rng(i) for i in range(3)]
    crops, crop_labels = scenes.random_crops(images, labels, (3, 4), rngs)
    assert crops.shape == (3, 3, 4, 1) and crop_labels.shape == (3, 3, 4)
    np.testing.assert_array_equal(crop_labels, crops[..., 0])
    for image, crop in zip(images, crops):
        top, left = np.argwhere(image[..., 0] == crop[0, 0, 0])[0]
        np.testing.assert_array_equal(image[top : top + 3, left : left + 4], crop)


def test_each_crop_is_positioned_by_its_own_generator():
    images = np.arange(2 * 30 * 30, dtype=np.float32).reshape(2, 30, 30, 1)
    labels = images[..., 0].astype(np.int32)
    both, _ = scenes.random_crops(
        images, labels, (5, 5), [np.random.default_rng(s) for s in (1, 2)]
    )
    alone, _ = scenes.random_crops(images[1:], labels[1:], (5, 5), [np.random.default_rng(2)])
    np.testing.assert_array_equal(both[1], alone[0])


def test_random_crops_larger_than_the_images_raise():
    with pytest.raises(ValueError, match="do not fit"):
        scenes.random_crops(
            np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8)), (9, 4), np.random.default_rng()
        )


@pytest.mark.parametrize("height, width", [(18, 40), (28, 28), (13, 57)])
def test_resize_is_jax_image_resize_linear_with_antialiasing(height, width):
    images = np.random.default_rng(0).random((2, 28, 31, 3), np.float32)
    expected = jax.image.resize(images, (2, height, width, 3), "linear", antialias=True)
    np.testing.assert_allclose(scenes.resize(images, height, width), expected, atol=1e-5)


def test_embedded_segmentation_dataset_is_digit_scenes(mnist5k):
    data = scenes.load_segmentation_dataset(image_size=(40, 48), num_scenes=(6, 4), seed=2)
    train, test = scenes.digit_scenes(mnist5k, 6, 4, height=40, width=48, seed=2)
    np.testing.assert_array_equal(data.train_images, train.images)
    np.testing.assert_array_equal(data.test_labels, test.labels)
    assert data.num_classes == NUM_CLASSES == len(data.class_names)


def test_unknown_segmentation_dataset_raises_naming_the_choices():
    with pytest.raises(ValueError, match="mnist5k.*oxford_iiit_pet"):
        scenes.load_segmentation_dataset("mnist")


# ---------------------------------------------------------------- TFDS segmentation datasets


@pytest.fixture
def can_prepare(monkeypatch):
    """Pretends TensorFlow and the network are there (nothing is really downloaded)."""
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(input_pipeline, "_network_available", lambda: True)


def _pets(self, split, **kwargs):
    """Mock pets: image ``i`` is (20 + i) x (30 - i), a gray level of 10 i, and its
    trimap is 1 (pet) on the left half, 2 (background) on the right, 3 in the top row."""
    examples = []
    for i in range(4 if split == "train" else 2):
        height, width = 20 + i, 30 - i
        mask = np.where(np.arange(width) < width // 2, 1, 2) * np.ones((height, 1), np.uint8)
        mask[0] = 3
        image = np.full((height, width, 3), 10 * i, np.uint8)
        examples.append({"image": image, "segmentation_mask": mask[..., None].astype(np.uint8)})
    return examples


def test_pets_under_tfds_mock_are_resized_images_and_class_maps(can_prepare, tmp_path):
    with tfds.testing.mock_data(as_data_source_fn=_pets):
        data = scenes.load_segmentation_dataset(
            "oxford_iiit_pet", data_dir=str(tmp_path), image_size=(16, 18)
        )
    assert data.train_images.shape == (4, 16, 18, 3) and data.train_images.dtype == np.float32
    assert data.test_labels.shape == (2, 16, 18) and data.test_labels.dtype == np.int32
    assert data.num_classes == 3 and data.class_names == ("background", "pet", "outline")
    np.testing.assert_allclose(data.train_images[:, 5, 5, 0], np.arange(4) * 10 / 255, atol=1e-6)
    for labels in data.train_labels:
        np.testing.assert_array_equal(labels[0], 2)  # outline, trimap value 3
        np.testing.assert_array_equal(labels[1:, :9], 1)  # pet, value 1
        np.testing.assert_array_equal(labels[1:, 9:], 0)  # background, value 2


def test_tfds_mask_values_outside_the_classes_raise(can_prepare, tmp_path):
    with tfds.testing.mock_data(num_examples=2), pytest.raises(ValueError, match="no class"):
        scenes.load_segmentation_dataset("oxford_iiit_pet", data_dir=str(tmp_path))


def test_unprepared_tfds_dataset_without_tensorflow_raises_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: False)
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match="not prepared.*--dataset mnist5k"):
        scenes.load_segmentation_dataset("oxford_iiit_pet", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
