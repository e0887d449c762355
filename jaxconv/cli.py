"""The ``jaxconv`` command line (also ``python -m jaxconv``)."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from jaxconv import configs

if TYPE_CHECKING:  # the commands import jax and the rest when they run, not at startup
    from jaxconv.input_pipeline import Dataset
    from jaxconv.train import TrainConfig, TrainState


# jaxlib 0.10.2 turns on XLA:CPU's YNN fusion, which computes a batched matrix product
# followed by a sum wrongly past 32768 rows (jax issue 39103) and can crash on rank-7 sums
# (jax issues 39257, 40412). jaxconv's own computations were checked to be unaffected, against
# float64 references; the commands run with the fusion off all the same (README, "When things
# go wrong"). XLA reads XLA_FLAGS once, when JAX starts its backend: main sets it first.
XLA_FLAGS_DEFAULT = "--xla_cpu_experimental_ynn_fusion_type="


def default_xla_flags() -> None:
    """Sets ``XLA_FLAGS`` to ``XLA_FLAGS_DEFAULT`` unless the user set it (even empty)."""
    os.environ.setdefault("XLA_FLAGS", XLA_FLAGS_DEFAULT)


class Parser(argparse.ArgumentParser):
    """argparse, answering a bad command line with one line on stderr (exit status 2), and
    taking no abbreviated flag (``--epoch`` is not ``--epochs``). Subparsers are Parsers too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # the library names its arguments (batch_size); the user typed flags (--batch-size).
        # Only two-word names: a one-word name ("dataset") is also an ordinary word.
        for action in self._actions:
            flags = [f for f in action.option_strings if f.startswith("--")]
            if flags and "_" in action.dest:
                message = re.sub(rf"(?<![-\w]){action.dest}(?!\w)", flags[0], message)
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded_int(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


positive_int = _bounded_int(1)
non_negative_int = _bounded_int(0)
seed = _bounded_int(0, 2**32 - 1)  # jax.random.key folds larger seeds onto smaller ones
epochs = _bounded_int(1, 1_000_000)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def add_training_flags(
    p: argparse.ArgumentParser,
    defaults: configs.Training,
    *,
    learning_rate_help: str = "Adam's",
) -> None:
    """The flags every training command shares: the run, its data and its checkpoints, with
    the command's ``defaults``."""
    p.add_argument(
        "--epochs", type=epochs, default=defaults.epochs, help="(default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--learning-rate",
        type=positive_float,
        default=defaults.learning_rate,
        help=f"{learning_rate_help} (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=seed,
        default=defaults.seed,
        help="init and data order (default: %(default)s)",
    )
    workdir = defaults.workdir.format(dataset="DATASET", upsampling="UPSAMPLING")
    p.add_argument("--workdir", type=Path, default=None, help=f"run directory (default: {workdir})")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=defaults.checkpoint_every,
        help="epochs (default: %(default)s)",
    )
    p.add_argument(
        "--keep",
        type=positive_int,
        default=defaults.keep,
        help="checkpoints kept (default: %(default)s)",
    )
    group = p.add_argument_group(
        "several processes",
        "one run over several JAX processes (hosts): the three flags (or the environment "
        "variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every "
        "process, or --distributed auto where JAX detects the cluster (SLURM, TPU pods, "
        "Open MPI, Kubernetes); `jaxconv launch` starts local processes",
    )
    group.add_argument("--coordinator-address", metavar="HOST:PORT", default=None)
    group.add_argument("--num-processes", type=positive_int, default=None)
    group.add_argument("--process-id", type=non_negative_int, default=None)
    group.add_argument("--distributed", choices=["auto"], default=None)


def join_processes(args: argparse.Namespace) -> None:
    """Joins the run's processes (``jax.distributed``) as the flags or environment say."""
    from jaxconv import distributed

    try:
        processes = distributed.cluster(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            auto=args.distributed == "auto",
        )
    except ValueError as e:
        args.parser.error(str(e))
    try:
        distributed.initialize(processes)
    except Exception as e:  # jax raises RuntimeError/XlaRuntimeError when the peers never come
        fail(args, f"joining the processes failed: {e}")


def add_train_parser(subparsers) -> None:
    from jaxconv.input_pipeline import EMBEDDED_DATASET

    p = subparsers.add_parser(
        "train",
        help="train the convolutional autoencoder",
        description="Train the convolutional autoencoder; "
        "resumes from WORKDIR's latest checkpoint.",
    )
    p.add_argument(
        "--dataset",
        default=EMBEDDED_DATASET,
        help=f"'{EMBEDDED_DATASET}' (embedded, offline: 5,000 real MNIST digits) or a "
        "tensorflow-datasets image dataset: mnist, fashion_mnist, kmnist, emnist/balanced, "
        "cifar10, ... (default: %(default)s)",
    )
    add_training_flags(p, configs.AUTOENCODER)
    p.add_argument(
        "--embedding-dim",
        type=_bounded_int(1, 65536),
        default=configs.EMBEDDING_DIM,
        help="(default: %(default)s)",
    )
    p.set_defaults(run=run_train, parser=p)


def load_data(args: argparse.Namespace, name: str, loader=None):
    """The dataset ``name`` from ``loader`` (default: ``input_pipeline.load_dataset``) and
    ``--data-dir``: exit 1 if it cannot be had here, 2 if it is unknown."""
    from jaxconv import input_pipeline

    try:
        return (loader or input_pipeline.load_dataset)(name, data_dir=args.data_dir)
    except input_pipeline.DatasetUnavailableError as e:
        fail(args, e)
    except ValueError as e:
        args.parser.error(f"--dataset: {e}")


def fail(args: argparse.Namespace, error: object, status: int = 1) -> NoReturn:
    """Stops with ``error`` as one line on stderr (exit status 1: a runtime failure)."""
    from jaxconv import distributed

    text = " ".join(str(error).split())
    sys.stderr.write(f"{args.parser.prog}: error: {text}\n")
    distributed.exit_now(status)
    args.parser.exit(status)


def train_run(args: argparse.Namespace, make_model, train, test, workdir: Path):
    """``(config, state, history)``: the run's settings from the shared training flags and
    ``make_model()`` (its model config), checked, then ``train.fit``.

    Errors become one line on stderr and an exit status: bad settings or workdir exit 2;
    a diverged run, an unreadable checkpoint or a file system error exits 1; Ctrl-C exits
    130 after saving, saying how to resume.
    """
    from jaxconv.train import Diverged, Interrupted, RunDirError, TrainConfig, check_run, fit

    try:
        config = TrainConfig(
            dataset=args.dataset,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            model=make_model(),
        )
        check_run(train, test, workdir, config)
    except RunDirError as e:
        fail(args, e, 2)
    except ValueError as e:
        args.parser.error(str(e))
    try:
        return config, *fit(
            train,
            test,
            workdir,
            config,
            args.epochs,
            checkpoint_every=args.checkpoint_every,
            keep=args.keep,
        )
    except Interrupted as stopped:
        command = " ".join(["jaxconv", *args.argv])
        fail(
            args,
            f"interrupted; epoch {stopped.saved} is saved in {workdir}. Resume with: {command}",
            130,
        )
    except Diverged as e:
        fail(args, e)
    except RunDirError as e:  # a checkpoint that cannot be restored
        fail(args, e)
    except ValueError as e:
        args.parser.error(str(e))
    except OSError as e:
        fail(args, f"{workdir}: {e}")


def run_train(args: argparse.Namespace) -> None:
    from jaxconv import distributed, plots
    from jaxconv.models import AutoencoderConfig
    from jaxconv.train import reconstruct

    join_processes(args)
    workdir = args.workdir or Path(
        configs.AUTOENCODER.workdir.format(dataset=args.dataset.replace("/", "_"))
    )
    dataset = load_data(args, args.dataset)
    splits = {"image": dataset.train_images}, {"image": dataset.test_images}

    def model() -> AutoencoderConfig:
        return AutoencoderConfig(image_shape=dataset.image_shape, embedding_dim=args.embedding_dim)

    _, state, history = train_run(args, model, *splits, workdir)
    if not distributed.is_primary():
        return

    originals = dataset.test_images[:10]
    figure = plots.reconstructions(
        originals,
        reconstruct(state, originals),
        workdir / "reconstructions.png",
        title=f"{dataset.name}: test images and their reconstructions "
        f"(test MSE {history[-1]['test_mse']:.4f})",
    )
    loss = plots.loss_curves(history, workdir / "loss.png")
    last = history[-1]
    print(
        f"\nepoch {last['epoch']}: train MSE {last['train_mse']:.5f}, "
        f"test MSE {last['test_mse']:.5f}\n"
        f"  metrics:         {workdir / 'metrics.jsonl'}\n"
        f"  checkpoints:     {workdir / 'checkpoints'}\n"
        f"  reconstructions: {figure}\n"
        f"  loss curves:     {loss}"
    )


def add_segment_parser(subparsers) -> None:
    from jaxconv import scenes
    from jaxconv.input_pipeline import EMBEDDED_DATASET

    p = subparsers.add_parser(
        "segment",
        help="train the pixel-wise segmentation model (U-Net, learned up-sampling)",
        description="Train a fully convolutional U-Net to label every pixel of scenes of "
        "mnist5k digits (or a TFDS segmentation dataset); resumes from WORKDIR's latest "
        "checkpoint. Writes metrics.jsonl, checkpoints/, segmentation.json and "
        "segmentation.png in WORKDIR. The learning-rate schedule spans --epochs, so a run "
        "resumes with the same --epochs.",
    )
    p.add_argument(
        "--dataset",
        default=EMBEDDED_DATASET,
        help=f"'{EMBEDDED_DATASET}': scenes of its digits (offline), or a TFDS segmentation "
        f"dataset: {', '.join(scenes.TFDS_SEGMENTATION)} (default: %(default)s)",
    )
    add_training_flags(
        p,
        configs.SEGMENTATION,
        learning_rate_help="AdamW's peak rate: a linear warm-up over the first "
        f"{configs.WARMUP * 100:g}%% of the steps, then a cosine decay to 1%% of it at the "
        "last step of --epochs",
    )
    p.add_argument(
        "--image-size",
        nargs=2,
        type=_bounded_int(configs.MIN_SIZE, 1024),
        default=configs.IMAGE_SIZE,
        metavar=("H", "W"),
        help="scene size to train and test at (default: "
        f"{' '.join(map(str, configs.IMAGE_SIZE))})",
    )
    p.add_argument(
        "--num-scenes",
        nargs=2,
        type=_bounded_int(1, 10_000_000),
        default=configs.NUM_SCENES,
        metavar=("TRAIN", "TEST"),
        help="digit scenes generated per split (default: "
        f"{' '.join(map(str, configs.NUM_SCENES))})",
    )
    p.add_argument(
        "--upsampling",
        choices=configs.UPSAMPLINGS,
        default=configs.UPSAMPLING,
        help="learned transposed convs, or the baseline: bilinear resize then a conv "
        "(default: %(default)s)",
    )
    p.set_defaults(run=run_segment, parser=p)


def run_segment(args: argparse.Namespace) -> None:
    import functools
    import json

    import jax

    from jaxconv import distributed, plots, scenes, segmentation

    join_processes(args)
    workdir = args.workdir or Path(configs.SEGMENTATION.workdir.format(upsampling=args.upsampling))
    size = tuple(args.image_size)
    count = tuple(args.num_scenes)
    loader = functools.partial(
        scenes.load_segmentation_dataset, image_size=size, num_scenes=count, seed=args.seed
    )
    data = load_data(args, args.dataset, loader)
    splits = (
        {"image": data.train_images, "label": data.train_labels},
        {"image": data.test_images, "label": data.test_labels},
    )

    def model() -> segmentation.SegmentationConfig:
        return segmentation.SegmentationConfig(
            upsampling=args.upsampling,
            num_classes=data.num_classes,
            image_channels=data.train_images.shape[-1],
            image_size=size,
            crop=segmentation.crop_for(size),
            num_scenes=count,
            epochs=args.epochs,
        )

    config, state, history = train_run(args, model, *splits, workdir)
    if not distributed.is_primary():
        return

    predict = segmentation.predict_fn(config.model, jax.device_get(state.params))
    predicted = predict(data.test_images)
    numbers = segmentation.scores(
        segmentation.label_confusion(predicted, data.test_labels, data.num_classes)
    )
    record = {**numbers, "image_size": list(size), "class_names": list(data.class_names)}
    (workdir / "segmentation.json").write_text(json.dumps(record, indent=2) + "\n")
    shown = slice(0, 8)
    figure = plots.segmentation(
        data.test_images[shown],
        data.test_labels[shown],
        predicted[shown],
        workdir / "segmentation.png",
        title=f"{data.name} test scenes, {size[0]}x{size[1]}, {args.upsampling} up-sampling: "
        f"mIoU {numbers['miou']:.3f}, pixel accuracy {numbers['pixel_accuracy']:.4f}",
        class_names=data.class_names,
    )
    last = history[-1]
    print(
        f"\nepoch {last['epoch']}: train loss {last['train_loss']:.4f}, test mIoU "
        f"{numbers['miou']:.4f}, pixel accuracy {numbers['pixel_accuracy']:.4f}\n"
        f"  metrics:      {workdir / 'metrics.jsonl'}\n"
        f"  checkpoints:  {workdir / 'checkpoints'}\n"
        f"  numbers:      {workdir / 'segmentation.json'}\n"
        f"  figure:       {figure}"
    )


def add_run_dir_parser(
    subparsers, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand that reads the run in ``--workdir`` and writes its figure and numbers there."""
    from jaxconv.input_pipeline import EMBEDDED_DATASET

    p = subparsers.add_parser(name, help=help, description=description)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs") / EMBEDDED_DATASET,
        help="a run directory written by `jaxconv train` (default: %(default)s)",
    )
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory")
    return p


def load_run_and_data(args: argparse.Namespace) -> tuple[TrainConfig, TrainState, Dataset]:
    """``(TrainConfig, TrainState, Dataset)`` of ``args.workdir``; argparse errors otherwise."""
    from jaxconv import models
    from jaxconv.train import CheckpointError, RunDirError, load_run

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


def write_outputs(figure: Path, numbers: Path, record: dict, summary: str) -> None:
    """Writes ``record`` as JSON to ``numbers``; prints ``summary`` and both paths."""
    import json

    numbers.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{summary}\n  figure:  {figure}\n  numbers: {numbers}")


def add_interpolate_parser(subparsers) -> None:
    p = add_run_dir_parser(
        subparsers,
        "interpolate",
        help="decode the straight line between two test images' embeddings",
        description="Decode the straight line between the embeddings of two test images, above "
        "the pixel-space blend of the same images. Default: 4 pairs of different classes, the "
        "first test images of the first 8 labels paired in order (MNIST: 0 and 1, 2 and 3, 4 "
        "and 5, 6 and 7). Writes interpolation.png and interpolation.json in WORKDIR.",
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
        type=_bounded_int(1, 1000),
        default=configs.INTERPOLATION_STEPS,
        help="images per row, endpoints included (default: %(default)s)",
    )
    p.set_defaults(run=run_interpolate, parser=p)


def run_interpolate(args: argparse.Namespace) -> None:
    import numpy as np

    from jaxconv import embedding, plots

    parser = args.parser
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (the two endpoints), got {args.steps}")
    config, state, dataset = load_run_and_data(args)
    images, labels = dataset.test_images, dataset.test_labels
    if args.indices:
        if max(args.indices) >= len(images):
            parser.error(f"--indices must be below {len(images)}, the number of test images")
        pairs = [tuple(args.indices)]
    elif args.labels:
        a, b = args.labels
        where = {c: np.flatnonzero(labels == c) for c in (a, b)}
        for c, found in where.items():
            if len(found) < (2 if a == b else 1):
                parser.error(f"--labels: the test split has {len(found)} images of label {c}")
        pairs = [(int(where[a][0]), int(where[b][1 if a == b else 0]))]
    else:
        pairs = embedding.default_pairs(labels)

    t = np.linspace(0.0, 1.0, args.steps)
    rows, records = [], []
    for i, j in pairs:
        line = embedding.decoded_line(config.model, state.params, images[i], images[j], args.steps)
        blend = embedding.interpolate(images[i], images[j], args.steps)
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

    middle = args.steps // 2
    mid = {
        name: float(np.mean([r[name]["nearest_train_rms"][middle] for r in records]))
        for name in ("embedding", "pixels")
    }
    figure = plots.interpolation_grid(
        rows,
        [f"{labels[i]} → {labels[j]}" for i, j in pairs],
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
        {
            "workdir": str(args.workdir),
            "dataset": dataset.name,
            "split": "test",
            "steps": args.steps,
            "t": t.tolist(),
            "definitions": {
                "mse_to_first / mse_to_last": "per image of the row: mean squared pixel "
                "difference to the row's first / last image",
                "nearest_train_rms": "per image of the row: Euclidean distance to the nearest "
                "train image, divided by sqrt(number of pixel values)",
            },
            "middle_nearest_train_rms": {"t": float(t[middle]), **mid},
            "pairs": records,
        },
        f"interpolation: {len(pairs)} pair(s) of test images, {args.steps} steps; image at "
        f"t={t[middle]:.2f}, RMS distance to the nearest train image: embedding "
        f"{mid['embedding']:.4f}, pixels {mid['pixels']:.4f}",
    )


def add_embed_parser(subparsers) -> None:
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

    from jaxconv import embedding, plots

    config, state, dataset = load_run_and_data(args)
    if args.k > len(dataset.train_images):
        args.parser.error(
            f"--k must be at most {len(dataset.train_images)}, the train split's size"
        )
    train_z = embedding.encode(config.model, state.params, dataset.train_images)
    test_z = embedding.encode(config.model, state.params, dataset.test_images)
    train_y, test_y = dataset.train_labels, dataset.test_labels
    accuracy = {
        "embedding": embedding.knn_accuracy(train_z, train_y, test_z, test_y, args.k),
        "pixels": embedding.knn_accuracy(
            dataset.train_images, train_y, dataset.test_images, test_y, args.k
        ),
        "chance": embedding.chance_accuracy(train_y),
    }
    dim = config.model.embedding_dim
    projection = embedding.pca(test_z, min(2, dim))
    ratio = projection.explained_variance_ratio
    if dim >= 2:
        points, axes = projection.projection, (f"PC 1 ({ratio[0]:.0%})", f"PC 2 ({ratio[1]:.0%})")
    else:  # a 1-D embedding: drawn against the label
        points, axes = (
            np.column_stack([projection.projection[:, 0], test_y]),
            ("embedding", "label"),
        )
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
        {
            "workdir": str(args.workdir),
            "dataset": dataset.name,
            "embedding_dim": dim,
            "train_size": len(train_y),
            "test_size": len(test_y),
            "k": args.k,
            "knn_accuracy": accuracy,
            "definitions": {
                "knn_accuracy": f"fraction of test images whose {args.k} nearest train images "
                "(Euclidean, in the embedding / in pixel space) vote for their label; ties go to "
                "the smallest label",
                "chance": "frequency of the most common label in the train split",
            },
            "pca_explained_variance_ratio": ratio.tolist(),
        },
        f"embedding: {len(test_y)} test images, {dim}-D; {knn}; PCA explains "
        + " + ".join(f"{r:.3f}" for r in ratio),
    )


def add_generate_parser(subparsers) -> None:
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
        type=_bounded_int(1, 1000),
        default=configs.GENERATE_PER_ROW,
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=seed, default=configs.GENERATE_SEED, help="(default: %(default)s)"
    )
    p.set_defaults(run=run_generate, parser=p)


def run_generate(args: argparse.Namespace) -> None:
    import numpy as np

    from jaxconv import embedding, plots

    config, state, dataset = load_run_and_data(args)
    model, params = config.model, state.params
    train_z = embedding.encode(model, params, dataset.train_images)
    train_y = dataset.train_labels
    classes, counts = np.unique(train_y, return_counts=True)
    groups = [(f"class {c}", train_z[train_y == c]) for c, n in zip(classes, counts) if n >= 2]
    groups.append(("all classes", train_z))
    rng = np.random.default_rng(args.seed)
    gaussians = [(name, embedding.fit_gaussian(z), len(z)) for name, z in groups]
    samples = np.concatenate(
        [embedding.sample_gaussian(g, args.per_row, rng) for _, g, _ in gaussians]
    )
    images = embedding.decode(model, params, samples)

    # Are they new? Distance to the nearest train image, beside that of as many reconstructions
    # of test images (new digits) and of train images (whose own original is in the train set).
    n = min(len(images), len(dataset.test_images))

    def nearest_train_rms(x: np.ndarray) -> np.ndarray:
        return embedding.nearest_rms_distance(x, dataset.train_images)

    def reconstructed(x: np.ndarray) -> np.ndarray:
        return embedding.decode(model, params, embedding.encode(model, params, x))

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
    rows = images.reshape(len(gaussians), args.per_row, *images.shape[1:])
    numbers = (
        f"mean RMS distance to the nearest train image: generated {distance['generated']:.3f}, "
        f"reconstructed test images {distance['test_reconstructions']:.3f}, reconstructed train "
        f"images {distance['train_reconstructions']:.3f}"
    )
    figure = plots.generated(
        rows,
        [name for name, _, _ in gaussians],
        args.workdir / "generated.png",
        title=f"{dataset.name}: decoded samples of Gaussians fitted to the train embeddings "
        f"(seed {args.seed})\n{numbers}",
    )
    per_row = generated.reshape(len(gaussians), args.per_row).mean(axis=1)
    write_outputs(
        figure,
        args.workdir / "generated.json",
        {
            "workdir": str(args.workdir),
            "dataset": dataset.name,
            "embedding_dim": model.embedding_dim,
            "seed": args.seed,
            "per_row": args.per_row,
            "gaussians": [
                {
                    "name": name,
                    "train_embeddings": count,
                    "mean_norm": float(np.linalg.norm(g.mean)),
                    "covariance_trace": float(np.trace(g.covariance)),
                    "generated_nearest_train_rms": float(d),
                }
                for (name, g, count), d in zip(gaussians, per_row)
            ],
            "nearest_train_rms": {**distance, "reconstructions_each": n},
            "definitions": {
                "nearest_train_rms": "mean over images of the Euclidean distance to the nearest "
                "train image, divided by sqrt(number of pixel values); the reconstructions are "
                "of the first reconstructions_each test / train images",
            },
        },
        f"generate: {n} images from {len(gaussians)} Gaussians; {numbers}",
    )


def add_launch_parser(subparsers) -> None:
    from jaxconv import launch

    p = subparsers.add_parser(
        "launch",
        help="run a training command as several local processes (jax.distributed)",
        description="Start N local processes of one run, joined on a free loopback port; "
        "their output is prefixed with [process index]. Fails when any process fails. "
        "Example: jaxconv launch -n 2 -- train --epochs 2",
    )
    launch.add_arguments(p)
    p.set_defaults(run=launch.run, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="jaxconv", description="PyTorch-exact transposed convolutions and an autoencoder."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    add_segment_parser(subparsers)
    add_interpolate_parser(subparsers)
    add_embed_parser(subparsers)
    add_generate_parser(subparsers)
    add_launch_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    default_xla_flags()  # before anything imports JAX
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        args.run(args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        parser.exit(130, "jaxconv: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
