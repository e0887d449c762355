"""Learned against fixed up-sampling, and test scenes of sizes the model was not trained on.

    python experiments/segmentation_sweep.py [--out runs/segmentation_sweep] [--epochs 8]

Trains ``jaxconv segment`` twice with the same data, epochs and seed -- transposed-conv
up-sampling (the default) and the baseline, a bilinear resize then a stride-1 conv -- each
in its own run directory ``OUT/UPSAMPLING`` (a rerun resumes, or just reads, those runs).
Then scores both on test scenes (test-split digits only) of several sizes and writes to
``OUT``:

* ``sweep.json`` and the printed table: mIoU and pixel accuracy per up-sampling and size,
  and each run's training minutes;
* ``sweep.png``: mIoU against test scene size, one line per up-sampling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxconv import cli, configs, input_pipeline, plots, scenes, segmentation

SIZES = ((64, 64), (48, 48), (80, 96), (128, 128))
TEST_SCENES = 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/segmentation_sweep"))
    defaults = configs.SEGMENTATION
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="per run (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    args = parser.parse_args(argv)

    digits = input_pipeline.load_dataset()
    tests = {
        size: scenes.make_scenes(
            digits.test_images,
            digits.test_labels,
            TEST_SCENES,
            height=size[0],
            width=size[1],
            seed=(args.seed, 1),
        )
        for size in SIZES
    }
    results = {}
    for upsampling in segmentation.UPSAMPLINGS:
        workdir = args.out / upsampling
        flags = ["--upsampling", upsampling, "--epochs", str(args.epochs), "--seed", str(args.seed)]
        cli.main(["segment", *flags, "--workdir", str(workdir)])
        predict = segmentation.load_predictor(workdir)
        metrics = [
            json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
        ]
        results[upsampling] = {
            "train_minutes": sum(m["seconds"] for m in metrics) / 60,
            "images_per_s": metrics[-1]["images_per_s"],
            "sizes": {
                f"{h}x{w}": segmentation.scores(
                    segmentation.label_confusion(
                        predict(test.images), test.labels, scenes.NUM_CLASSES
                    )
                )
                for (h, w), test in tests.items()
            },
        }

    names = [f"{h}x{w}" for h, w in SIZES]
    print(f"\n{'up-sampling':<12} {'train min':>9}  " + "  ".join(f"{n:>9}" for n in names))
    for upsampling, result in results.items():
        cells = "  ".join(f"{result['sizes'][n]['miou']:>9.4f}" for n in names)
        print(f"{upsampling:<12} {result['train_minutes']:>9.1f}  {cells}")
    print("(test mIoU, 11 classes, background included; trained at 64x64)")

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"epochs": args.epochs, "seed": args.seed, "test_scenes": TEST_SCENES, **results}
    (args.out / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    figure = plots.segmentation_sweep(
        names,
        {u: [r["sizes"][n]["miou"] for n in names] for u, r in results.items()},
        args.out / "sweep.png",
    )
    print(f"written: {args.out / 'sweep.json'}, {figure}")


if __name__ == "__main__":
    main()
