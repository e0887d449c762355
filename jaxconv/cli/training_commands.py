"""``jaxconv train`` (the autoencoder) and ``jaxconv segment`` (the U-Net): flags to a
config, one call of :func:`jaxconv.train.fit`, then the figures and the summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxconv import configs
from jaxconv.cli.args import add_training_flags, bounded_int, fail, join_processes, load_data


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
        type=bounded_int(1, 65536),
        default=configs.EMBEDDING_DIM,
        help="(default: %(default)s)",
    )
    p.set_defaults(run=run_train, parser=p)


def train_run(args: argparse.Namespace, make_model, train, test, workdir: Path):
    """``(config, state, history)``: the run's settings from the shared training flags and
    ``make_model()`` (its model config), checked, then ``train.fit``.

    Errors become one line on stderr and an exit status: bad settings or workdir exit 2;
    a diverged run, an unreadable checkpoint or a file system error exits 1; Ctrl-C exits
    130 after saving, saying how to resume.
    """
    from jaxconv.rundir import RunDirError
    from jaxconv.train import Diverged, Interrupted, TrainConfig, check_run, fit

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
    from jaxconv import distributed
    from jaxconv.models import AutoencoderConfig, reconstruct

    join_processes(args)
    workdir = args.workdir or Path(
        configs.AUTOENCODER.workdir.format(dataset=args.dataset.replace("/", "_"))
    )
    dataset = load_data(args, args.dataset)
    splits = {"image": dataset.train_images}, {"image": dataset.test_images}

    def model() -> AutoencoderConfig:
        return AutoencoderConfig(image_shape=dataset.image_shape, embedding_dim=args.embedding_dim)

    config, state, history = train_run(args, model, *splits, workdir)
    if not distributed.is_primary():
        return
    from jaxconv import plots  # matplotlib: only once the run is trained

    originals = dataset.test_images[:10]
    figure = plots.reconstructions(
        originals,
        reconstruct(config.model, state.params, originals),
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
        type=bounded_int(configs.MIN_SIZE, 1024),
        default=configs.IMAGE_SIZE,
        metavar=("H", "W"),
        help=f"scene size to train and test at (default: {' '.join(map(str, configs.IMAGE_SIZE))})",
    )
    p.add_argument(
        "--num-scenes",
        nargs=2,
        type=bounded_int(1, 10_000_000),
        default=configs.NUM_SCENES,
        metavar=("TRAIN", "TEST"),
        help="digit scenes generated per split (default: "
        f"{' '.join(map(str, configs.NUM_SCENES))})",
    )
    p.add_argument(
        "--widths",
        nargs="+",
        type=bounded_int(1, 4096),
        default=configs.WIDTHS,
        metavar="W",
        help="U-Net features per level, two or more, full size first, each next level at "
        "half the size: fewer or narrower levels train and compile faster, for a quick "
        f"run (default: {' '.join(map(str, configs.WIDTHS))})",
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

    if len(args.widths) < 2:
        args.parser.error(
            f"argument --widths: needs two or more levels, got one ({args.widths[0]})"
        )
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
            widths=tuple(args.widths),
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
