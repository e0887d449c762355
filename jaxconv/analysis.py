"""What ``jaxconv interpolate``, ``embed`` and ``generate`` measure on a trained autoencoder.

Each function takes the run's model config and parameters and its dataset, computes with
:mod:`jaxconv.embedding`, and returns what the figure needs beside ``record``: the JSON
record the command writes (without the run's ``workdir``, which the command adds).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxconv import configs, embedding
from jaxconv.input_pipeline import Dataset
from jaxconv.models import AutoencoderConfig


@dataclasses.dataclass(frozen=True)
class Interpolation:
    """``rows``: per pair, the decoded line and the pixel blend, each ``(steps, H, W, C)``;
    ``t``: ``(steps,)``; ``middle``: the image at ``t[steps // 2]``'s RMS distance to its
    nearest train image, averaged over the pairs, for ``"embedding"`` and ``"pixels"``."""

    pairs: list[tuple[int, int]]
    rows: list[tuple[np.ndarray, np.ndarray]]
    t: np.ndarray
    middle: dict[str, float]
    record: dict


def label_pair(labels: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """The indices of the first image of label ``a`` and of label ``b`` (the first two for
    ``a == b``); ``ValueError`` naming the label that has too few images."""
    where = {c: np.flatnonzero(labels == c) for c in (a, b)}
    for c, found in where.items():
        if len(found) < (2 if a == b else 1):
            raise ValueError(f"the test split has {len(found)} images of label {c}")
    return int(where[a][0]), int(where[b][1 if a == b else 0])


def interpolation(
    config: AutoencoderConfig,
    params: dict,
    dataset: Dataset,
    pairs: list[tuple[int, int]] | None = None,
    steps: int = configs.INTERPOLATION_STEPS,
) -> Interpolation:
    """Between the test images of each pair (default: :func:`embedding.default_pairs`): the
    decoded straight line between their embeddings and the pixel-space blend, and, per image
    of each row, its mean squared difference to the row's first and last image and its RMS
    distance to the nearest train image."""
    images, labels = dataset.test_images, dataset.test_labels
    pairs = embedding.default_pairs(labels) if pairs is None else pairs
    t = np.linspace(0.0, 1.0, steps)
    rows, records = [], []
    for i, j in pairs:
        line = embedding.decoded_line(config, params, images[i], images[j], steps)
        blend = embedding.interpolate(images[i], images[j], steps)
        rows.append((line, blend))
        record = {"indices": [int(i), int(j)], "labels": [int(labels[i]), int(labels[j])]}
        for name, row in (("embedding", line), ("pixels", blend)):
            record[name] = {
                "mse_to_first": np.mean((row - row[0]) ** 2, axis=(1, 2, 3)).tolist(),
                "mse_to_last": np.mean((row - row[-1]) ** 2, axis=(1, 2, 3)).tolist(),
                "nearest_train_rms": embedding.nearest_rms_distance(
                    row, dataset.train_images
                ).tolist(),
            }
        records.append(record)
    middle = steps // 2
    mid = {
        name: float(np.mean([r[name]["nearest_train_rms"][middle] for r in records]))
        for name in ("embedding", "pixels")
    }
    record = {
        "dataset": dataset.name,
        "split": "test",
        "steps": steps,
        "t": t.tolist(),
        "definitions": {
            "mse_to_first / mse_to_last": "per image of the row: mean squared pixel "
            "difference to the row's first / last image",
            "nearest_train_rms": "per image of the row: Euclidean distance to the nearest "
            "train image, divided by sqrt(number of pixel values)",
        },
        "middle_nearest_train_rms": {"t": float(t[middle]), **mid},
        "pairs": records,
    }
    return Interpolation(list(pairs), rows, t, mid, record)


@dataclasses.dataclass(frozen=True)
class EmbeddingSpace:
    """``test_embeddings`` ``(N, embedding_dim)``; ``pca``: their projection on (up to) two
    principal axes; ``accuracy``: the k-NN label accuracy in the ``"embedding"`` and in
    ``"pixels"``, and ``"chance"``."""

    test_embeddings: np.ndarray
    pca: embedding.PCA
    accuracy: dict[str, float]
    record: dict


def embedding_space(
    config: AutoencoderConfig, params: dict, dataset: Dataset, k: int = configs.KNN_K
) -> EmbeddingSpace:
    """The train and test splits embedded; the ``k``-nearest-neighbour label accuracy (fit on
    train, scored on test) in the embedding and in pixel space, chance, and the test
    embeddings' PCA."""
    train_z = embedding.encode(config, params, dataset.train_images)
    test_z = embedding.encode(config, params, dataset.test_images)
    train_y, test_y = dataset.train_labels, dataset.test_labels
    accuracy = {
        "embedding": embedding.knn_accuracy(train_z, train_y, test_z, test_y, k),
        "pixels": embedding.knn_accuracy(
            dataset.train_images, train_y, dataset.test_images, test_y, k
        ),
        "chance": embedding.chance_accuracy(train_y),
    }
    projection = embedding.pca(test_z, min(2, config.embedding_dim))
    record = {
        "dataset": dataset.name,
        "embedding_dim": config.embedding_dim,
        "train_size": len(train_y),
        "test_size": len(test_y),
        "k": k,
        "knn_accuracy": accuracy,
        "definitions": {
            "knn_accuracy": f"fraction of test images whose {k} nearest train images "
            "(Euclidean, in the embedding / in pixel space) vote for their label; ties go to "
            "the smallest label",
            "chance": "frequency of the most common label in the train split",
        },
        "pca_explained_variance_ratio": projection.explained_variance_ratio.tolist(),
    }
    return EmbeddingSpace(test_z, projection, accuracy, record)


@dataclasses.dataclass(frozen=True)
class Generation:
    """``rows``: ``(len(names), per_row, H, W, C)`` decoded samples, one row per Gaussian
    named in ``names``; ``distance``: mean RMS distances to the nearest train image of the
    ``"generated"`` images and of ``"test_reconstructions"`` / ``"train_reconstructions"``
    (``reconstructions_each`` of each)."""

    rows: np.ndarray
    names: list[str]
    distance: dict[str, float]
    reconstructions_each: int
    record: dict


def generation(
    config: AutoencoderConfig,
    params: dict,
    dataset: Dataset,
    per_row: int = configs.GENERATE_PER_ROW,
    seed: int = configs.GENERATE_SEED,
) -> Generation:
    """Gaussians fitted to the train embeddings of each class with at least 2 images and to
    all of them; ``per_row`` samples of each (``numpy.random.default_rng(seed)``), decoded.

    How new they are: their distance to the nearest train image, beside that of as many
    reconstructions of test images (new digits) and of train images (whose own original is
    in the train set).
    """
    train_z = embedding.encode(config, params, dataset.train_images)
    train_y = dataset.train_labels
    classes, counts = np.unique(train_y, return_counts=True)
    groups = [(f"class {c}", train_z[train_y == c]) for c, n in zip(classes, counts) if n >= 2]
    groups.append(("all classes", train_z))
    rng = np.random.default_rng(seed)
    gaussians = [(name, embedding.fit_gaussian(z), len(z)) for name, z in groups]
    samples = np.concatenate([embedding.sample_gaussian(g, per_row, rng) for _, g, _ in gaussians])
    images = embedding.decode(config, params, samples)
    n = min(len(images), len(dataset.test_images))

    def nearest_train_rms(x: np.ndarray) -> np.ndarray:
        return embedding.nearest_rms_distance(x, dataset.train_images)

    def reconstructed(x: np.ndarray) -> np.ndarray:
        return embedding.decode(config, params, embedding.encode(config, params, x))

    generated = nearest_train_rms(images)
    distance = {
        "generated": float(generated.mean()),
        "test_reconstructions": float(
            nearest_train_rms(reconstructed(dataset.test_images[:n])).mean()
        ),
        "train_reconstructions": float(
            nearest_train_rms(reconstructed(dataset.train_images[:n])).mean()
        ),
    }
    per_gaussian = generated.reshape(len(gaussians), per_row).mean(axis=1)
    record = {
        "dataset": dataset.name,
        "embedding_dim": config.embedding_dim,
        "seed": seed,
        "per_row": per_row,
        "gaussians": [
            {
                "name": name,
                "train_embeddings": count,
                "mean_norm": float(np.linalg.norm(g.mean)),
                "covariance_trace": float(np.trace(g.covariance)),
                "generated_nearest_train_rms": float(d),
            }
            for (name, g, count), d in zip(gaussians, per_gaussian)
        ],
        "nearest_train_rms": {**distance, "reconstructions_each": n},
        "definitions": {
            "nearest_train_rms": "mean over images of the Euclidean distance to the nearest "
            "train image, divided by sqrt(number of pixel values); the reconstructions are "
            "of the first reconstructions_each test / train images",
        },
    }
    rows = images.reshape(len(gaussians), per_row, *images.shape[1:])
    return Generation(rows, [name for name, _, _ in gaussians], distance, n, record)
