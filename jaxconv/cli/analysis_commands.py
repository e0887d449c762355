"""``jaxconv interpolate``, ``embed`` and ``generate``: read a trained autoencoder's run,
measure it with :mod:`jaxconv.analysis`, draw the figure and write the numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from jaxconv import configs
from jaxconv.cli.args import bounded_int, fail, load_data, non_negative_int, positive_int, seed

if TYPE_CHECKING:  # the commands import jax and the rest when they run, not at startup
    from jaxconv.input_pipeline import Dataset
    from jaxconv.train import TrainConfig, TrainState


def add_run_dir_parser(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand that reads the run in ``--workdir`` and writes its figure and numbers there."""
    from jaxconv.input_pipeline import EMBEDDED_DATASET

    p = subparsers.add_parser(name, help=help, description=description)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(configs.AUTOENCODER.workdir.format(dataset=EMBEDDED_DATASET)),
        help="a run directory written by `jaxconv train` (default: %(default)s)",
    )
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory")
    return p


def load_run_and_data(args: argparse.Namespace) -> tuple[TrainConfig, TrainState, Dataset]:
    """``(TrainConfig, TrainState, Dataset)`` of ``args.workdir``; argparse errors otherwise."""
    from jaxconv import models
    from jaxconv.rundir import CheckpointError, RunDirError
    from jaxconv.train import load_run

    try:
        config, state = load_run(args.workdir)
    except CheckpointError as e:
        fail(args, e)
    except RunDirError as e:
        fail(args, e, 2)
    dataset = load_data(args, config.dataset)
    try:
        models.check_images(config.model, dataset.test_images.shape)
    except ValueError as e:
        args.parser.error(f"{args.workdir} does not fit its dataset {config.dataset!r}: {e}")
    return config, state, dataset


def write_outputs(
    figure: Path, numbers: Path, workdir: Path, record: dict, summary: str
) -> None:
    """Writes ``record`` (after the run's ``workdir``) as JSON to ``numbers``; prints
    ``summary`` and both paths."""
    numbers.write_text(json.dumps({"workdir": str(workdir), **record}, indent=2) + "\n")
    print(f"{summary}\n  figure:  {figure}\n  numbers: {numbers}")


def add_interpolate_parser(subparsers: argparse._SubParsersAction) -> None:
    pairs = configs.INTERPOLATION_PAIRS
    mnist = ", ".join(f"{2 * i} and {2 * i + 1}" for i in range(pairs))
    p = add_run_dir_parser(
        subparsers,
        "interpolate",
        help="decode the straight line between two test images' embeddings",
        description="Decode the straight line between the embeddings of two test images, above "
        f"the pixel-space blend of the same images. Default: {pairs} pairs of different "
        f"classes, the first test images of the first {2 * pairs} labels paired in order "
        f"(MNIST: {mnist}). Writes interpolation.png and interpolation.json in WORKDIR.",
    )
    pick = p.add_mutually_exclusive_group()
    pick.add_argument(
        "--indices",
        nargs=2,
        type=non_negative_int,
        metavar=("I", "J"),
        help="two test-image indices",
    )
    pick.add_argument(
        "--labels",
        nargs=2,
        type=non_negative_int,
        metavar=("A", "B"),
        help="two labels: the first test image of each (the first two for A = B)",
    )
    p.add_argument(
        "--steps",
        type=bounded_int(1, 1000),
        default=configs.INTERPOLATION_STEPS,
        help="images per row, endpoints included (default: %(default)s)",
    )
    p.set_defaults(run=run_interpolate, parser=p)


def run_interpolate(args: argparse.Namespace) -> None:
    from jaxconv import analysis, plots

    parser = args.parser
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (the two endpoints), got {args.steps}")
    config, state, dataset = load_run_and_data(args)
    pairs = None  # the default pairs
    if args.indices:
        if max(args.indices) >= len(dataset.test_images):
            parser.error(
                f"--indices must be below {len(dataset.test_images)}, the number of test images"
            )
        pairs = [tuple(args.indices)]
    elif args.labels:
        try:
            pairs = [analysis.label_pair(dataset.test_labels, *args.labels)]
        except ValueError as e:
            parser.error(f"--labels: {e}")
    result = analysis.interpolation(config.model, state.params, dataset, pairs, args.steps)
    labels, t, mid = dataset.test_labels, result.t, result.middle
    middle = args.steps // 2
    figure = plots.interpolation_grid(
        result.rows,
        [f"{labels[i]} → {labels[j]}" for i, j in result.pairs],
        t,
        args.workdir / "interpolation.png",
        title=f"{dataset.name}: from one test image to another\n'embedding': decoded straight "
        "line between their embeddings (the ends are their reconstructions); 'pixels': "
        f"pixel-space blend\nRMS distance of the t={t[middle]:.2f} image to its nearest train "
        f"image: embedding {mid['embedding']:.3f}, pixels {mid['pixels']:.3f}",
    )
    write_outputs(
        figure,
        args.workdir / "interpolation.json",
        args.workdir,
        result.record,
        f"interpolation: {len(result.pairs)} pair(s) of test images, {args.steps} steps; image "
        f"at t={t[middle]:.2f}, RMS distance to the nearest train image: embedding "
        f"{mid['embedding']:.4f}, pixels {mid['pixels']:.4f}",
    )


def add_embed_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_run_dir_parser(
        subparsers,
        "embed",
        help="the test set's embeddings: PCA scatter and k-NN label accuracy",
        description="Embed the train and test splits; draw the test embeddings' 2-D PCA "
        "projection coloured by label; measure the k-nearest-neighbour label accuracy (fit on "
        "train, scored on test) in the embedding space, in pixel space, and chance. Writes "
        "embedding.png and embedding.json in WORKDIR.",
    )
    p.add_argument(
        "--k", type=positive_int, default=configs.KNN_K, help="neighbours (default: %(default)s)"
    )
    p.set_defaults(run=run_embed, parser=p)


def run_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from jaxconv import analysis, plots

    config, state, dataset = load_run_and_data(args)
    if args.k > len(dataset.train_images):
        args.parser.error(
            f"--k must be at most {len(dataset.train_images)}, the train split's size"
        )
    result = analysis.embedding_space(config.model, state.params, dataset, args.k)
    accuracy, test_y = result.accuracy, dataset.test_labels
    dim = config.model.embedding_dim
    ratio = result.pca.explained_variance_ratio
    if dim >= 2:
        points = result.pca.projection
        axes = (f"PC 1 ({ratio[0]:.0%})", f"PC 2 ({ratio[1]:.0%})")
    else:  # a 1-D embedding: drawn against the label
        points = np.column_stack([result.pca.projection[:, 0], test_y])
        axes = ("embedding", "label")
    knn = (
        f"{args.k}-NN label accuracy: embedding {accuracy['embedding']:.3f}, pixels "
        f"{accuracy['pixels']:.3f}, chance {accuracy['chance']:.3f}"
    )
    figure = plots.label_scatter(
        points,
        test_y,
        args.workdir / "embedding.png",
        title=f"{dataset.name} test set: {dim}-D embeddings, PCA to 2-D "
        f"({np.sum(ratio):.0%} of the variance)\n{knn}",
        axis_labels=axes,
    )
    write_outputs(
        figure,
        args.workdir / "embedding.json",
        args.workdir,
        result.record,
        f"embedding: {len(test_y)} test images, {dim}-D; {knn}; PCA explains "
        + " + ".join(f"{r:.3f}" for r in ratio),
    )


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_run_dir_parser(
        subparsers,
        "generate",
        help="decode new embeddings sampled from Gaussians fitted to the train embeddings",
        description="Fit a Gaussian (mean, covariance) to the train embeddings of each class (with "
        "at least 2 train images) and to all of them; decode samples of each, one row per class "
        "plus one for all. Writes generated.png and generated.json in WORKDIR.",
    )
    p.add_argument(
        "--per-row",
        type=bounded_int(1, 1000),
        default=configs.GENERATE_PER_ROW,
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=seed, default=configs.GENERATE_SEED, help="(default: %(default)s)"
    )
    p.set_defaults(run=run_generate, parser=p)


def run_generate(args: argparse.Namespace) -> None:
    from jaxconv import analysis, plots

    config, state, dataset = load_run_and_data(args)
    result = analysis.generation(config.model, state.params, dataset, args.per_row, args.seed)
    distance = result.distance
    numbers = (
        f"mean RMS distance to the nearest train image: generated {distance['generated']:.3f}, "
        f"reconstructed test images {distance['test_reconstructions']:.3f}, reconstructed train "
        f"images {distance['train_reconstructions']:.3f}"
    )
    figure = plots.generated(
        result.rows,
        result.names,
        args.workdir / "generated.png",
        title=f"{dataset.name}: decoded samples of Gaussians fitted to the train embeddings "
        f"(seed {args.seed})\n{numbers}",
    )
    write_outputs(
        figure,
        args.workdir / "generated.json",
        args.workdir,
        result.record,
        f"generate: {result.reconstructions_each} images from {len(result.names)} Gaussians; "
        f"{numbers}",
    )
