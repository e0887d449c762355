"""The ``jaxconv`` command line (also ``python -m jaxconv``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_train_parser(subparsers) -> None:
    from jaxconv.input_pipeline import EMBEDDED_DATASET

    p = subparsers.add_parser(
        "train",
        help="train the convolutional autoencoder",
        description="Train the convolutional autoencoder; resumes from WORKDIR's latest checkpoint.",
    )
    p.add_argument(
        "--dataset",
        default=EMBEDDED_DATASET,
        help=f"'{EMBEDDED_DATASET}' (embedded, offline: 5,000 real MNIST digits) or a "
        "tensorflow-datasets image dataset: mnist, fashion_mnist, kmnist, emnist/balanced, "
        "cifar10, ... (default: %(default)s)",
    )
    p.add_argument("--epochs", type=positive_int, default=30, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="(default: %(default)s)")
    p.add_argument(
        "--learning-rate", type=positive_float, default=1e-3, help="Adam's (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="init and data order (default: %(default)s)")
    p.add_argument(
        "--embedding-dim", type=positive_int, default=64, help="(default: %(default)s)"
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="run directory (default: runs/DATASET)"
    )
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory")
    p.add_argument(
        "--checkpoint-every", type=positive_int, default=1, help="epochs (default: %(default)s)"
    )
    p.add_argument(
        "--keep", type=positive_int, default=3, help="checkpoints kept (default: %(default)s)"
    )
    p.set_defaults(run=run_train, parser=p)


def run_train(args: argparse.Namespace) -> None:
    from jaxconv import input_pipeline, plots
    from jaxconv.models import AutoencoderConfig
    from jaxconv.train import TrainConfig, check_run, reconstruct, train_and_evaluate

    parser = args.parser
    workdir = args.workdir or Path("runs") / args.dataset.replace("/", "_")
    try:
        dataset = input_pipeline.load_dataset(args.dataset, data_dir=args.data_dir)
    except input_pipeline.DatasetUnavailableError as e:
        parser.exit(1, f"jaxconv train: error: {e}\n")
    except ValueError as e:
        parser.error(str(e))
    try:
        config = TrainConfig(
            dataset=args.dataset,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            model=AutoencoderConfig(
                image_shape=dataset.image_shape, embedding_dim=args.embedding_dim
            ),
        )
        check_run(dataset, workdir, config)
    except ValueError as e:
        parser.error(str(e))
    state, history = train_and_evaluate(
        dataset,
        workdir,
        config,
        args.epochs,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
    )

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxconv", description="PyTorch-exact transposed convolutions and an autoencoder."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
