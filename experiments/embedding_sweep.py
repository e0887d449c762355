"""How small can the embedding be? The same autoencoder trained with embeddings of 2 to 64.

    python experiments/embedding_sweep.py [--epochs 15] [--out runs/embedding_sweep]

Trains the default model on the embedded dataset (mnist5k) once per embedding size, each in
its own run directory ``OUT/embedding_SIZE`` (a rerun resumes, or just reads, those runs), and
writes to ``OUT``:

* ``sweep.json`` and the printed table: train and test reconstruction MSE after the last epoch,
  and the 5-NN label accuracy in the embedding space (fit on train, scored on test);
* ``sweep.png``: test (and train) MSE against embedding size;
* ``embedding_2d.png``: the 2-D embeddings of the test set as they are, coloured by label.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from jaxconv import configs, embedding, input_pipeline, plots
from jaxconv.models import AutoencoderConfig
from jaxconv.train import TrainConfig, train_and_evaluate

SIZES = (2, 4, 8, 16, 32, 64)
K = configs.KNN_K


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="per size (default: %(default)s)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=SIZES, help="embedding sizes (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/embedding_sweep"), help="(default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or min(args.sizes) < 1:
        parser.error("--epochs and --sizes must be positive")

    dataset = input_pipeline.load_dataset()
    start = time.perf_counter()
    rows = []
    for size in sorted(set(args.sizes)):
        config = TrainConfig(
            model=AutoencoderConfig(image_shape=dataset.image_shape, embedding_dim=size)
        )
        state, history = train_and_evaluate(
            dataset, args.out / f"embedding_{size}", config, args.epochs, progress=False
        )
        train_z = embedding.encode(config.model, state.params, dataset.train_images)
        test_z = embedding.encode(config.model, state.params, dataset.test_images)
        accuracy = embedding.knn_accuracy(
            train_z, dataset.train_labels, test_z, dataset.test_labels, K
        )
        rows.append(
            {
                "embedding_dim": size,
                "train_mse": history[-1]["train_mse"],
                "test_mse": history[-1]["test_mse"],
                "knn_accuracy": accuracy,
                "train_seconds": sum(m["seconds"] for m in history),
            }
        )
        print(
            f"embedding {size:3d}: test MSE {rows[-1]['test_mse']:.5f}, {K}-NN accuracy "
            f"{accuracy:.3f}  ({time.perf_counter() - start:.0f} s so far)",
            flush=True,
        )
        if size == 2:
            scatter = plots.label_scatter(
                test_z,
                dataset.test_labels,
                args.out / "embedding_2d.png",
                title=f"{dataset.name} test set in a 2-D embedding, drawn as it is ({args.epochs} "
                f"epochs)\ntest MSE {rows[-1]['test_mse']:.4f}, {K}-NN label accuracy "
                f"{accuracy:.3f}",
                axis_labels=("embedding 1", "embedding 2"),
            )
            print(f"  2-D embedding: {scatter}")
    wall = time.perf_counter() - start

    header = (
        f"{'embedding':>9}  {'train MSE':>9}  {'test MSE':>9}  {f'{K}-NN acc':>9}  {'train s':>7}"
    )
    print(f"\n{dataset.name}, {args.epochs} epochs per size, {wall:.0f} s wall time\n{header}")
    for r in rows:
        print(
            f"{r['embedding_dim']:>9}  {r['train_mse']:>9.5f}  {r['test_mse']:>9.5f}  "
            f"{r['knn_accuracy']:>9.3f}  {r['train_seconds']:>7.1f}"
        )
    numbers = args.out / "sweep.json"
    numbers.write_text(
        json.dumps(
            {
                "dataset": dataset.name,
                "epochs": args.epochs,
                "wall_seconds": wall,
                "k": K,
                "definitions": {
                    "train_mse / test_mse": "reconstruction MSE after the last epoch",
                    "knn_accuracy": f"{K}-NN label accuracy in the embedding space, fit on "
                    "train, scored on test",
                    "train_seconds": "time in the training loop, summed over the epochs",
                    "wall_seconds": "this invocation, compilation and evaluation included; "
                    "epochs trained by an earlier invocation are read, not retrained",
                },
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    figure = plots.sweep(
        [r["embedding_dim"] for r in rows],
        [r["test_mse"] for r in rows],
        [r["train_mse"] for r in rows],
        args.out / "sweep.png",
        title=f"{dataset.name}: reconstruction MSE against embedding size ({args.epochs} epochs)",
    )
    print(f"  figure:  {figure}\n  numbers: {numbers}")


if __name__ == "__main__":
    main()
