"""``jaxconv segment`` and ``jaxconv.segmentation.load_predictor``: a short run that learns,
its outputs, resume, and the predictor on images of other sizes."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import made_once
from PIL import Image

from jaxconv import cli, configs, scenes, segmentation
from jaxconv.rundir import RunDir, RunDirError
from jaxconv.train import TrainConfig, load_run

EPOCHS = 4
TEST_SCENES = 200
WIDTHS = (16, 32, 64)
# A quick run that beats chance by the margin asserted below (mIoU 0.171, the bar 0.142):
# three levels instead of the default four compile faster, and batches of 8 learn more
# from the same 6,000 crops than the default 16 (0.148 with 16, no faster per crop).
FLAGS = [
    "segment", "--epochs", str(EPOCHS), "--image-size", "32", "32",
    "--num-scenes", "1500", str(TEST_SCENES), "--learning-rate", "5e-3",
    "--batch-size", "8", "--widths", *map(str, WIDTHS),
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One ``jaxconv segment`` run for the whole pytest run (``made_once``; a module
    fixture alone would train it once per xdist worker)."""

    def train(folder: Path) -> None:
        cli.main([*FLAGS, "--workdir", str(folder / "run")])

    return made_once(tmp_path_factory, "segment-cli-run", train) / "run"


def _chance_miou(labels: np.ndarray, num_classes: int) -> float:
    """Expected mIoU of guessing each pixel's class at random with the labels' frequencies:
    IoU_c = p_c^2 / (2 p_c - p_c^2) = p_c / (2 - p_c) for the classes present."""
    p = np.bincount(labels.ravel(), minlength=num_classes) / labels.size
    return float(np.mean([q / (2 - q) for q in p if q > 0]))


def test_a_short_run_beats_chance_by_a_wide_margin(run, mnist5k):
    result = json.loads((run / "segmentation.json").read_text())
    _, test = scenes.digit_scenes(mnist5k, 1, TEST_SCENES, height=32, width=32, seed=0)
    chance = _chance_miou(test.labels, scenes.NUM_CLASSES)
    assert result["miou"] > 2 * chance, (result["miou"], chance)


def test_segment_writes_its_metrics_numbers_and_figure(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, EPOCHS + 1))
    for m in lines:
        assert m.keys() >= {
            "epoch", "train_loss", "test_miou", "test_pixel_accuracy", "images_per_s", "seconds"
        }  # fmt: skip
    result = json.loads((run / "segmentation.json").read_text())
    assert result["image_size"] == [32, 32] and len(result["per_class_iou"]) == 11
    assert result["miou"] == pytest.approx(lines[-1]["test_miou"])
    with Image.open(run / "segmentation.png") as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20  # scenes, label colours and a legend


def test_a_resumed_segment_run_ends_bitwise_equal(run, tmp_path):
    # the copy resumes from the checkpoint of epoch EPOCHS - 1, mid-schedule
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(copy / "checkpoints" / str(EPOCHS))
    cli.main([*FLAGS, "--workdir", str(copy)])
    _, resumed = load_run(copy, segmentation.SegmentationConfig)
    _, straight = load_run(run, segmentation.SegmentationConfig)
    assert int(resumed.step) == int(straight.step)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def predictor(run):
    return segmentation.load_predictor(run)


@pytest.fixture(scope="module")
def one_by_one(run):
    """The run's logits of one image at a time (no batch, no padding), jit-compiled."""
    config, state = load_run(run, segmentation.SegmentationConfig)
    apply = jax.jit(segmentation.UNet(config.model).apply)
    return lambda image: apply({"params": state.params}, image[None])[0]


@pytest.mark.parametrize("height, width", [(32, 32), (17, 23), (33, 64)])
def test_the_predictor_labels_every_pixel_of_any_size(
    predictor, one_by_one, mnist5k, height, width
):
    # test scenes drawn at 32x48, linearly resized (antialiased) to the size
    _, test = scenes.digit_scenes(mnist5k, 1, 3, height=32, width=48, seed=1)
    images = scenes.resize(test.images, height, width)
    labels = predictor(images)  # 3 images in a padded batch of 64
    assert labels.shape == (3, height, width) and labels.dtype == np.int32
    for image, found in zip(np.clip(images, 0, 1), labels):
        np.testing.assert_array_equal(found, np.argmax(one_by_one(image), axis=-1))
    assert np.mean(labels > 0) > 0.02  # digits found, not all background


def test_widths_sets_the_levels_of_the_u_net(run):
    config, state = load_run(run, segmentation.SegmentationConfig)
    assert config.model.widths == WIDTHS
    # the full-size level's features and the bottom level's, which its head reads
    assert state.params["ConvBlock_0"]["Conv_0"]["kernel"].shape[-1] == WIDTHS[0]
    assert state.params["bottom_head"]["kernel"].shape[-2] == WIDTHS[-1]


def test_widths_defaults_to_the_library_default():
    assert tuple(cli.build_parser().parse_args(["segment"]).widths) == configs.WIDTHS
    assert segmentation.SegmentationConfig().widths == configs.WIDTHS


@pytest.mark.parametrize(
    "widths, message",
    [
        (["8"], "needs two or more levels"),
        (["8", "0"], "between 1 and 4096"),
        (["8", "x"], "integer"),
    ],
    ids=["one level", "zero", "word"],
)
def test_a_bad_widths_is_one_usage_line_naming_it(tmp_path, capsys, widths, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["segment", "--widths", *widths, "--workdir", str(tmp_path / "run")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--widths" in error and message in error, error
    assert not (tmp_path / "run").exists()


def test_the_predictor_of_an_autoencoder_run_is_refused(tmp_path):
    # the run.json that `jaxconv train` writes before its first step: the refusal reads it
    RunDir(tmp_path).claim(TrainConfig())
    with pytest.raises(RunDirError, match="holds an autoencoder run, not a segmentation run"):
        segmentation.load_predictor(tmp_path)
