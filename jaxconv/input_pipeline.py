"""Input pipeline: image datasets as in-memory numpy arrays, and batching (JAX is imported
only where a TFDS dataset is loaded, to coordinate the processes).

Two sources, both giving a ``Dataset`` of float32 images in [0, 1]:

* ``"mnist5k"`` (``EMBEDDED_DATASET``, the default): 5,000 real MNIST digits shipped as
  package data (``jaxconv/data``, where their source and licence are stated); offline,
  nothing to prepare.
* any tensorflow-datasets image dataset (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ...),
  read through TFDS' random-access ARRAY_RECORD data source, which needs no TensorFlow once
  the dataset is prepared. Preparing one needs TensorFlow (``pip install tensorflow-cpu``)
  and the network; when either is missing, ``load_dataset`` raises
  ``DatasetUnavailableError`` within seconds. With several processes (``jax.distributed``),
  process 0 prepares it while the others wait, then all read it.

Batching is deterministic in ``(seed, epoch)``, so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import importlib.util
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

EMBEDDED_DATASET = "mnist5k"

# Fixed, independent of any run seed: the mnist5k test split never changes.
_MNIST5K_SPLIT_SEED = 0
_MNIST5K_TEST_PER_CLASS = 50

# TFDS downloads go through Google Cloud Storage first. If it does not answer within this many
# seconds (name resolution included), report "no network" rather than let TFDS retry for minutes.
_DOWNLOAD_HOST = "storage.googleapis.com"
_NETWORK_TIMEOUT_S = 3.0

_KNOWN_IMAGE_DATASETS = ("mnist", "fashion_mnist", "kmnist", "emnist/balanced", "cifar10")


class DatasetUnavailableError(RuntimeError):
    """A TFDS dataset is not prepared and cannot be prepared here."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits in memory: images float32 (N, H, W, C) in [0, 1], labels int64 (N,)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        height, width, channels = self.train_images.shape[1:]
        return height, width, channels

    @property
    def num_classes(self) -> int:
        """The largest label over both splits, plus one."""
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1


def load_dataset(name: str = EMBEDDED_DATASET, *, data_dir: str | None = None) -> Dataset:
    """Loads ``"mnist5k"`` (embedded) or the 'train' and 'test' splits of a TFDS image dataset.

    ``name`` may include a TFDS config (``"emnist/balanced"``). ``data_dir`` is the TFDS data
    directory (default: TFDS' own, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); the
    embedded dataset ignores it. A TFDS dataset that is not prepared there is downloaded and
    prepared (ARRAY_RECORD format).

    Raises:
        ValueError: ``name`` is neither the embedded dataset nor a TFDS image dataset.
        DatasetUnavailableError: the dataset is not prepared in ``data_dir`` and TensorFlow or
            the network, needed to prepare it, is missing.
    """
    if name == EMBEDDED_DATASET:
        return _load_mnist5k()
    return _load_tfds(name, data_dir)


def _load_mnist5k() -> Dataset:
    """The 5,000 MNIST digits shipped in ``jaxconv/data``, split 450 train / 50 test per class
    with a fixed seed."""
    csv_path = importlib.resources.files("jaxconv") / "data" / "mnist_5k.csv.gz"
    with csv_path.open("rb") as f, gzip.open(f) as csv:
        rows = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
    images = rows[:, :-1].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    labels = rows[:, -1].astype(np.int64)

    rng = np.random.default_rng(_MNIST5K_SPLIT_SEED)
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        test_parts.append(idx[:_MNIST5K_TEST_PER_CLASS])
        train_parts.append(idx[_MNIST5K_TEST_PER_CLASS:])
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))
    return Dataset(
        name=EMBEDDED_DATASET,
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
    )


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    """Reads a TFDS image dataset into memory, preparing it first if needed."""
    # Imported here: the embedded default needs neither TFDS nor its import time.
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset {name!r}: use {EMBEDDED_DATASET!r} (embedded, offline) or a "
            f"tensorflow-datasets image dataset such as {', '.join(_KNOWN_IMAGE_DATASETS)}."
        ) from None
    features = builder.info.features
    if "image" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' feature.")
    builder = prepare_once(name, builder, data_dir)

    splits = builder.info.splits  # empty under tfds.testing.mock_data
    missing = [split for split in ("train", "test") if splits and split not in splits]
    if missing:
        raise ValueError(
            f"TFDS dataset {name!r} has no {' or '.join(map(repr, missing))} split (it has "
            f"{', '.join(map(repr, splits))}); jaxconv needs 'train' and 'test'."
        )

    def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
        examples = list(builder.as_data_source(split=split))
        sizes = {np.shape(example["image"]) for example in examples}
        if len(sizes) > 1:
            raise ValueError(
                f"TFDS dataset {name!r} has images of {len(sizes)} different shapes in its "
                f"{split!r} split (e.g. {', '.join(map(str, sorted(sizes)[:3]))}); jaxconv "
                "trains on images of one shape."
            )
        images = np.stack([example["image"] for example in examples])
        if images.dtype != np.uint8:
            raise ValueError(f"TFDS dataset {name!r} has {images.dtype} images, not uint8.")
        labels = [example["label"] if "label" in features else 0 for example in examples]
        return images.astype(np.float32) / 255.0, np.asarray(labels, dtype=np.int64)

    train_images, train_labels = read_split("train")
    test_images, test_labels = read_split("test")
    return Dataset(name, train_images, train_labels, test_images, test_labels)


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    absl = logging.getLogger("absl")  # TFDS warns of each unprepared version it looks at
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return builder.is_prepared()
    finally:
        absl.setLevel(level)


def prepare_once(
    name: str, builder: tfds.core.DatasetBuilder, data_dir: str | None
) -> tfds.core.DatasetBuilder:
    """``builder`` (of TFDS dataset ``name`` in ``data_dir``), downloaded and prepared as
    ARRAY_RECORD if it was not, or ``DatasetUnavailableError`` naming what is missing
    (TensorFlow, the network) and the offline dataset. With several processes
    (``jax.distributed``), process 0 prepares it while the others wait, then they read it
    (a ``data_dir`` that process 0 does not share is then prepared by each process that
    sees it unprepared). Every process calls it, in the same order."""
    from jaxconv import distributed  # imports JAX: only where TFDS datasets are loaded

    def prepare_if_needed() -> None:
        if not _is_prepared(builder):
            _prepare(name, builder)

    try:
        if distributed.primary_first(prepare_if_needed):
            return builder
    except distributed.PrimaryFailed as e:
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} could not be prepared: {e} (its own error says why)"
        ) from e
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)  # reads what process 0 prepared
    if not _is_prepared(builder):
        _prepare(name, builder)
    return builder


def _prepare(name: str, builder: tfds.core.DatasetBuilder) -> None:
    """Downloads and prepares ``builder`` as ARRAY_RECORD, or raises DatasetUnavailableError
    naming what is missing (TensorFlow, the network) and the offline dataset."""
    where = builder.data_dir_root
    offline = f"Or use the embedded dataset, which works offline: --dataset {EMBEDDED_DATASET}"
    if not _tensorflow_available():
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} is not prepared in {where}, and preparing it needs "
            f"TensorFlow: pip install tensorflow-cpu (jaxconv's 'tfds' extra). {offline}"
        )
    if not _network_available():
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} is not prepared in {where} and cannot be downloaded (no "
            f"network: {_DOWNLOAD_HOST} is unreachable). Prepare it where there is a network, "
            f"e.g. `tfds build {name} --file_format=array_record --data_dir=DIR`, then copy the "
            f"contents of DIR into {where}. {offline}"
        )
    builder.download_and_prepare(file_format="array_record")


def _tensorflow_available() -> bool:
    """Whether TensorFlow is installed (checked without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def _network_available() -> bool:
    """Whether ``_DOWNLOAD_HOST`` accepts a connection within ``_NETWORK_TIMEOUT_S``.

    The probe runs in a daemon thread, so a hanging name resolution (which the socket timeout
    does not cover) cannot hold up the caller either.
    """
    reachable = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((_DOWNLOAD_HOST, 443), timeout=_NETWORK_TIMEOUT_S).close()
        except OSError:
            return
        reachable.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_NETWORK_TIMEOUT_S)
    return reachable.is_set()


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in ``epoch``: the same for the same ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """The number of full training batches per epoch (``train_batches`` drops the rest)."""
    if not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"batch_size must be in [1, {num_examples}] (the number of training examples), "
            f"got {batch_size}"
        )
    return num_examples // batch_size


def _rows(arrays: np.ndarray | Mapping[str, np.ndarray], index: np.ndarray):
    """``arrays[index]``, for one array or for each array of a mapping (same leading size)."""
    if isinstance(arrays, Mapping):
        return {key: value[index] for key, value in arrays.items()}
    return arrays[index]


def num_examples(arrays: np.ndarray | Mapping[str, np.ndarray]) -> int:
    """The leading size of ``arrays`` (of the first array of a mapping)."""
    return len(next(iter(arrays.values())) if isinstance(arrays, Mapping) else arrays)


def train_batches(
    arrays: np.ndarray | Mapping[str, np.ndarray], batch_size: int, *, seed: int, epoch: int
) -> Iterator:
    """One epoch of shuffled batches of exactly ``batch_size`` examples.

    ``arrays`` is one array or a mapping of arrays with the same leading size (a batch is
    then a dict of their rows). The order is ``epoch_permutation(num_examples, seed, epoch)``.
    The last partial batch is dropped, so every batch has the same static shape under
    ``jit``; as each epoch has its own order, every example is still seen. ``batch_size``
    is checked at the call (ValueError).
    """
    n = num_examples(arrays)
    steps = steps_per_epoch(n, batch_size)
    order = epoch_permutation(n, seed, epoch)
    return (
        _rows(arrays, order[step * batch_size : (step + 1) * batch_size]) for step in range(steps)
    )


def eval_batches(arrays: np.ndarray | Mapping[str, np.ndarray], batch_size: int) -> Iterator[tuple]:
    """``(batch, mask)`` pairs covering ``arrays`` (one array or a mapping of them) once, in order.

    The last partial batch is padded with zeros to ``batch_size``; ``mask`` is float32
    ``(batch_size,)``, 1 for real examples and 0 for padding, so a masked mean over all batches
    is the exact mean over the examples. ``batch_size`` is checked at the call (ValueError).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def padded(batch: np.ndarray, pad: int) -> np.ndarray:
        return np.pad(batch, [(0, pad)] + [(0, 0)] * (batch.ndim - 1))

    def batches():
        n = num_examples(arrays)
        for start in range(0, n, batch_size):
            batch = _rows(arrays, np.arange(start, min(start + batch_size, n)))
            real = min(batch_size, n - start)
            pad = batch_size - real
            mask = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
            if isinstance(batch, dict):
                yield {key: padded(value, pad) for key, value in batch.items()}, mask
            else:
                yield padded(batch, pad), mask

    return batches()
