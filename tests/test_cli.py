"""The ``jaxconv train`` command: outputs in the workdir, argparse errors, offline data."""

import json
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxconv import cli, input_pipeline


def _train(*flags: str) -> None:
    cli.main(["train", *flags])


def test_train_writes_metrics_checkpoints_and_figures(tmp_path, capsys):
    _train("--epochs", "1", "--batch-size", "256", "--workdir", str(tmp_path))
    out = capsys.readouterr().out
    (metrics,) = [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics["epoch"] == 1 and 0 < metrics["test_mse"] < 0.2
    assert (tmp_path / "checkpoints" / "1").is_dir()
    for name in ("reconstructions.png", "loss.png", "metrics.jsonl", "checkpoints"):
        assert str(tmp_path / name) in out
    with Image.open(tmp_path / "reconstructions.png") as image:
        picture = np.asarray(image.convert("L"))
    assert picture.std() > 10  # digits drawn, not a blank canvas


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "many"], "--batch-size"),
        (["--learning-rate", "-1"], "--learning-rate"),
        (["--batch-size", "8192"], "--batch-size must be in [1, 4500]"),
        (["--dataset", "no_such_dataset"], "Unknown dataset"),
    ],
)
def test_bad_flags_get_argparse_errors(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        _train(*flags, "--workdir", str(tmp_path))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unprepared_tfds_dataset_stops_fast_naming_the_offline_default(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(input_pipeline, "_network_available", lambda: False)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        _train(
            "--dataset", "mnist", "--data-dir", str(tmp_path / "tfds"), "--workdir", str(tmp_path)
        )
    assert time.monotonic() - start < 10
    assert exit_info.value.code == 1
    assert "--dataset mnist5k" in capsys.readouterr().err


def test_train_runs_on_a_tfds_dataset(tmp_path, monkeypatch):
    # the mock replaces download and preparation; the checks in front of them must pass
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(input_pipeline, "_network_available", lambda: True)
    with tfds.testing.mock_data(num_examples=64):
        _train(
            "--dataset", "mnist", "--epochs", "1", "--batch-size", "32", "--workdir", str(tmp_path)
        )
    (metrics,) = [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics["epoch"] == 1
    assert (tmp_path / "reconstructions.png").exists()
