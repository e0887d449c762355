"""The embedding space of a trained autoencoder: pure functions of arrays.

* ``encode`` / ``decode``: the two halves of :class:`~jaxconv.models.Autoencoder`, jit-compiled
  and run over fixed-size batches (one compilation per model, any number of inputs).
* ``interpolate``: the straight line between two embeddings (or images); ``decoded_line``: the
  images along the line between two images' embeddings.
* ``pca``: a linear projection onto the directions of largest variance.
* ``nearest_neighbours``: Euclidean k-nearest neighbours, computed in jax over batches of
  queries, so memory stays at ``batch_size x len(references)`` distances; on it,
  ``knn_predict`` / ``knn_accuracy`` (with ``chance_accuracy`` to compare) and
  ``nearest_rms_distance`` (how far an image is from its nearest training image).
* ``fit_gaussian`` / ``sample_gaussian``: a multivariate normal fitted to embeddings, and new
  embeddings drawn from it.
* ``default_pairs``: which test images to interpolate between when none are named.

Inputs and outputs are numpy arrays; PCA and Gaussians are computed in float64 numpy (they act
on small ``(N, embedding_dim)`` matrices), distances in float32 jax (they act on pixels too).
Arguments are checked first: a non-numeric or complex array, or a count that is not an int
(numpy ints are), is a ``TypeError``; a wrong shape or an out-of-range count a ``ValueError``;
each names the argument.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import configs, input_pipeline
from jaxconv.models import Autoencoder, AutoencoderConfig

BATCH_SIZE = 256


def _count(name: str, value: object, low: int) -> int:
    """``value`` as an int >= ``low``; ``TypeError`` for a non-int (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _real(name: str, value: object, ndim: int | None = None, min_rows: int = 0) -> np.ndarray:
    """``value`` as a real numeric numpy array (of ``ndim`` dimensions, ``min_rows`` rows)."""
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if min_rows and (array.ndim == 0 or len(array) < min_rows):
        raise ValueError(f"{name} must have at least {min_rows} row(s), got shape {array.shape}")
    return array


def _labels(name: str, value: object, rows: int | None = None) -> np.ndarray:
    """Non-negative integer labels (``rows`` of them)."""
    labels = np.asarray(value)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must be integer labels, got dtype {labels.dtype}")
    if labels.ndim != 1 or (rows is not None and len(labels) != rows) or np.any(labels < 0):
        count = "" if rows is None else f"{rows} "
        raise ValueError(
            f"{name} must be {count}labels >= 0 in one dimension, got shape {labels.shape}"
            f"{f' with minimum {labels.min()}' if labels.size else ''}"
        )
    return labels


def _rows_of(name: str, value: object, row_shape: tuple[int, ...]) -> np.ndarray:
    """A batch ``(N, *row_shape)`` of real numbers."""
    array = _real(name, value)
    if array.shape[1:] != tuple(row_shape):
        raise ValueError(
            f"{name} must be a batch of shape (N, {', '.join(map(str, row_shape))}), "
            f"got shape {array.shape}"
        )
    return array


@functools.partial(jax.jit, static_argnums=0)
def _encode_batch(config: AutoencoderConfig, params: dict, images: jax.Array) -> jax.Array:
    return Autoencoder(config).apply({"params": params}, images, method=Autoencoder.encode)


@functools.partial(jax.jit, static_argnums=0)
def _decode_batch(config: AutoencoderConfig, params: dict, embeddings: jax.Array) -> jax.Array:
    return Autoencoder(config).apply({"params": params}, embeddings, method=Autoencoder.decode)


def _batched(
    fn: Callable[[AutoencoderConfig, dict, jax.Array], jax.Array],
    config: AutoencoderConfig,
    params: dict,
    x: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """``fn`` over ``x`` in zero-padded batches of ``batch_size`` (one static shape), unpadded."""
    outputs = [
        np.asarray(fn(config, params, batch))[: int(mask.sum())]
        for batch, mask in input_pipeline.eval_batches(np.asarray(x, np.float32), batch_size)
    ]
    return np.concatenate(outputs)


def encode(
    config: AutoencoderConfig, params: dict, images: np.ndarray, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """``(N, H, W, C)`` images to their ``(N, embedding_dim)`` embeddings."""
    images = _rows_of("images", images, config.image_shape)
    return _batched(_encode_batch, config, params, images, _count("batch_size", batch_size, 1))


def decode(
    config: AutoencoderConfig, params: dict, embeddings: np.ndarray, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """``(N, embedding_dim)`` embeddings to ``(N, H, W, C)`` images in (0, 1)."""
    embeddings = _rows_of("embeddings", embeddings, (config.embedding_dim,))
    return _batched(_decode_batch, config, params, embeddings, _count("batch_size", batch_size, 1))


def interpolate(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """``(steps, *a.shape)``: ``(1 - t) a + t b`` for ``t = linspace(0, 1, steps)``.

    The first row is ``a`` and the last ``b``, exactly. Works for embeddings and, as the
    pixel-space contrast, for images alike.
    """
    steps = _count("steps", steps, 2)
    a, b = _real("a", a), _real("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    t = np.linspace(0.0, 1.0, steps).reshape(-1, *([1] * a.ndim))
    return ((1.0 - t) * a + t * b).astype(np.result_type(a, b))


def decoded_line(
    config: AutoencoderConfig, params: dict, a: np.ndarray, b: np.ndarray, steps: int
) -> np.ndarray:
    """``(steps, H, W, C)``: ``decode(interpolate(encode(a), encode(b), steps))`` for two
    ``(H, W, C)`` images; its first and last images are the reconstructions of ``a`` and ``b``."""
    a, b = _rows_of("a", [a], config.image_shape)[0], _rows_of("b", [b], config.image_shape)[0]
    za, zb = encode(config, params, np.stack([a, b]))
    return decode(config, params, interpolate(za, zb, steps))


@dataclasses.dataclass(frozen=True)
class PCA:
    """``projection``: ``(N, n_components)`` centred data on the principal axes;
    ``explained_variance_ratio``: ``(n_components,)``, each axis' share of the total variance."""

    projection: np.ndarray
    explained_variance_ratio: np.ndarray


def pca(x: np.ndarray, n_components: int = 2) -> PCA:
    """Principal component analysis of the rows of ``x`` ``(N, D)``, by SVD.

    With ``X - mean = U S Vᵀ``: projection ``= (X - mean) V[:, :n] = U[:, :n] S[:n]``,
    explained variance ratio ``= S[:n]² / Σ S²``. Each axis' sign is fixed so that its
    largest-magnitude loading is positive, so the result does not depend on the SVD routine.
    """
    x = _real("x", x, ndim=2).astype(np.float64)
    if not 1 <= _count("n_components", n_components, 1) <= min(x.shape):
        raise ValueError(f"n_components must be in [1, {min(x.shape)}] for data of shape {x.shape}")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:n_components]
    axes *= np.sign(axes[np.arange(n_components), np.abs(axes).argmax(axis=1)])[:, None]
    total = np.sum(s**2)
    ratio = s[:n_components] ** 2 / total if total > 0 else np.zeros(n_components)
    return PCA(projection=centred @ axes.T, explained_variance_ratio=ratio)


@functools.partial(jax.jit, static_argnums=2)
def _nearest_batch(
    queries: jax.Array, references: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """Squared distances and indices of the ``k`` nearest rows of ``references`` to each query."""
    # ||q - r||² = ||q||² - 2 q·r + ||r||²: one matrix product instead of a (Q, R, D) difference.
    # HIGHEST: no TF32/bf16 matmul on accelerators, whose rounding would reorder near neighbours.
    dots = jnp.matmul(queries, references.T, precision=jax.lax.Precision.HIGHEST)
    squared = (
        jnp.sum(queries**2, axis=1, keepdims=True) - 2.0 * dots + jnp.sum(references**2, axis=1)
    )
    negative, indices = jax.lax.top_k(-squared, k)
    return jnp.maximum(-negative, 0.0), indices


def nearest_neighbours(
    queries: np.ndarray, references: np.ndarray, k: int = 1, batch_size: int = BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances and indices ``(Q, k)`` of each query's ``k`` nearest references.

    Rows are flattened to vectors first (images compare pixel by pixel); neighbours are
    sorted nearest first. Computed in batches of ``batch_size`` queries.
    """
    queries = _real("queries", queries, min_rows=1)
    references = _real("references", references, min_rows=1)
    if queries.shape[1:] != references.shape[1:]:
        raise ValueError(
            f"references must have rows of the queries' shape {queries.shape[1:]}, got "
            f"{references.shape[1:]}"
        )
    batch_size = _count("batch_size", batch_size, 1)
    queries = queries.astype(np.float32).reshape(len(queries), -1)
    references = jnp.asarray(references.astype(np.float32).reshape(len(references), -1))
    if not 1 <= _count("k", k, 1) <= len(references):
        raise ValueError(f"k must be in [1, {len(references)}] (the number of references), got {k}")
    squared, indices = [], []
    for batch, mask in input_pipeline.eval_batches(queries, batch_size):
        d, i = _nearest_batch(jnp.asarray(batch), references, k)
        real = int(mask.sum())
        squared.append(np.asarray(d)[:real])
        indices.append(np.asarray(i)[:real])
    return np.sqrt(np.concatenate(squared)), np.concatenate(indices)


def nearest_rms_distance(
    queries: np.ndarray, references: np.ndarray, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """``(Q,)``: each query's root-mean-square difference to its nearest reference,
    ``min_r ||q - r|| / sqrt(D)`` over the ``D`` values of a row: 0 for a copy of a reference,
    in pixel units for images."""
    distances, _ = nearest_neighbours(queries, references, 1, batch_size)
    return distances[:, 0] / np.sqrt(np.prod(np.shape(queries)[1:]))


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    k: int = configs.KNN_K,
    batch_size: int = BATCH_SIZE,
) -> np.ndarray:
    """Each test row's label by a majority vote of its ``k`` nearest train rows (Euclidean).

    A tied vote goes to the smallest of the tied labels. ``train_y``: non-negative ints.
    """
    train_y = _labels("train_y", train_y, len(_real("train_x", train_x, min_rows=1)))
    _, indices = nearest_neighbours(test_x, train_x, k, batch_size)
    votes = np.zeros((len(indices), int(train_y.max()) + 1), np.int64)
    np.add.at(votes, (np.arange(len(indices))[:, None], train_y[indices]), 1)
    return votes.argmax(axis=1)


def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    k: int = configs.KNN_K,
    batch_size: int = BATCH_SIZE,
) -> float:
    """The fraction of test rows whose :func:`knn_predict` label is their label."""
    test_y = _labels("test_y", test_y, len(_real("test_x", test_x, min_rows=1)))
    return float(np.mean(knn_predict(train_x, train_y, test_x, k, batch_size) == test_y))


def chance_accuracy(train_y: np.ndarray) -> float:
    """The frequency of the most common label in ``train_y``: the accuracy of always guessing
    it, on data distributed like ``train_y``."""
    train_y = _labels("train_y", train_y)
    if not len(train_y):
        raise ValueError("train_y must hold at least one label")
    return float(np.bincount(train_y).max() / len(train_y))


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """A multivariate normal: ``mean`` ``(D,)``, ``covariance`` ``(D, D)``."""

    mean: np.ndarray
    covariance: np.ndarray


def fit_gaussian(x: np.ndarray) -> Gaussian:
    """The maximum-likelihood mean and the unbiased covariance of the rows of ``x`` ``(N, D)``:
    ``mean = Σ xᵢ / N``, ``covariance = Σ (xᵢ - mean)(xᵢ - mean)ᵀ / (N - 1)``."""
    x = _real("x", x, ndim=2, min_rows=2).astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    return Gaussian(mean=mean, covariance=centred.T @ centred / (len(x) - 1))


def sample_gaussian(gaussian: Gaussian, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, D)`` float32 draws ``mean + V √Λ z``, ``z ~ N(0, I)``, where ``covariance = V Λ Vᵀ``.

    The eigendecomposition (not Cholesky) also samples a singular covariance, e.g. one fitted
    to fewer rows than dimensions.
    """
    if not isinstance(gaussian, Gaussian):
        raise TypeError(
            f"gaussian must be a Gaussian (fit_gaussian's), got {type(gaussian).__name__}"
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    n = _count("n", n, 0)
    samples = rng.multivariate_normal(gaussian.mean, gaussian.covariance, size=n, method="eigh")
    return samples.astype(np.float32)


def default_pairs(
    labels: np.ndarray, count: int = configs.INTERPOLATION_PAIRS
) -> list[tuple[int, int]]:
    """``count`` deterministic pairs of indices into ``labels`` for interpolation.

    Pair ``i`` is the first image of the ``2i``-th and of the ``(2i + 1)``-th label (sorted),
    so every pair joins two different classes; with fewer than ``2 count`` labels, pair ``i``
    is images ``(2i, 2i + 1)``.
    """
    count = _count("count", count, 1)
    labels = _labels("labels", labels)
    classes = np.unique(labels)
    if len(classes) >= 2 * count:
        firsts = [int(np.flatnonzero(labels == c)[0]) for c in classes[: 2 * count]]
    else:
        firsts = list(range(min(2 * count, len(labels) - len(labels) % 2)))
    return list(zip(firsts[0::2], firsts[1::2]))
