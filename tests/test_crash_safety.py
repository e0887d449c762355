"""A killed, interrupted or diverged run loses nothing and saves nothing bad."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxconv import input_pipeline
from jaxconv.input_pipeline import Dataset
from jaxconv.train import Diverged, TrainConfig, load_run, train_and_evaluate

# 9 steps an epoch: every epoch ends in an evaluation and a checkpoint within about a second
FLAGS = ["--epochs", "5", "--batch-size", "500"]


def _command(workdir: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "jaxconv", "train", *FLAGS, *flags, "--workdir", str(workdir)]


class Run:
    """``jaxconv train`` in a subprocess, its stdout lines collected as they come."""

    def __init__(self, workdir: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            _command(workdir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.compiled = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if "compiled the train step" in line:
                self.compiled.set()
        self.compiled.set()  # ended before compiling (e.g. nothing left to train)

    def wait_until_training(self) -> None:
        assert self.compiled.wait(120), "jaxconv train did not start training in 120 s"

    def finish(self) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=300)
        return self.process.returncode, err


def _epochs_in(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def _leaves(workdir: Path) -> list[np.ndarray]:
    _, state = load_run(workdir)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, float]:
    """A run that nothing stops, and how long it trained (seconds after compiling)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run = Run(workdir)
    run.wait_until_training()
    start = time.monotonic()
    code, err = run.finish()
    assert code == 0, err
    return workdir, time.monotonic() - start


def _checkpoints(workdir: Path) -> tuple[list[int], list[str]]:
    """The finished checkpoints' epochs and the unfinished saves in ``workdir``."""
    folder = workdir / "checkpoints"
    names = [p.name for p in folder.iterdir()] if folder.exists() else []
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def _wait_for(condition, what: str, run: Run) -> None:
    while not condition():
        assert run.process.poll() is None, f"the run ended before {what}"
        time.sleep(0.002)


# Where each kill lands, after the run has a first checkpoint: a random moment within half
# an epoch (mid-step or mid-evaluation: no new checkpoint), as an orbax save starts its
# folder (inside the save), or as a checkpoint has just appeared (before metrics.jsonl
# follows). Only the last kind moves the run on, three times: it stays before epoch 5.
KILL_AT = ["random", "save", "saved", "random", "save", "saved", "random", "save", "saved"]


def test_sigkill_at_moments_mid_run_ends_as_an_uninterrupted_run(uninterrupted, tmp_path):
    reference, training_seconds = uninterrupted
    epoch_seconds = training_seconds / int(FLAGS[1])
    rng = random.Random(0)
    inside_a_save = 0
    for moment in [*KILL_AT, "random"]:
        run = Run(tmp_path)
        run.wait_until_training()
        _wait_for(lambda: _checkpoints(tmp_path)[0], "its first checkpoint", run)
        before = _checkpoints(tmp_path)[0]
        if moment == "random":
            time.sleep(rng.uniform(0, epoch_seconds / 2))
        elif moment == "save":
            _wait_for(lambda: _checkpoints(tmp_path)[1], "a save", run)
        else:
            _wait_for(lambda: _checkpoints(tmp_path)[0][-1] > before[-1], "a new checkpoint", run)
        run.process.send_signal(signal.SIGKILL)
        run.finish()
        assert run.process.returncode == -signal.SIGKILL  # it was still running
        finished, unfinished = _checkpoints(tmp_path)
        assert finished[-1] < int(FLAGS[1])  # before the last checkpoint
        inside_a_save += bool(unfinished)
        epochs = _epochs_in(tmp_path)  # always whole lines of consecutive epochs
        assert epochs == list(range(1, len(epochs) + 1))
    assert inside_a_save >= 1
    code, err = Run(tmp_path).finish()
    assert code == 0, err

    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    for key in ("train_mse", "test_mse"):
        assert [m[key] for m in metrics] == [m[key] for m in expected]
    for a, b in zip(_leaves(tmp_path), _leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_ctrl_c_saves_the_last_finished_epoch_and_says_how_to_resume(uninterrupted, tmp_path):
    run = Run(tmp_path)
    run.wait_until_training()
    while not any(line.startswith("epoch   1 ") for line in run.lines):
        assert run.process.poll() is None, "the run ended before its first epoch"
        time.sleep(0.05)
    run.process.send_signal(signal.SIGINT)
    code, err = run.finish()
    assert code == 130
    assert "Traceback" not in err
    (message,) = [line for line in err.splitlines() if "error" in line]
    assert "interrupted" in message and "Resume with: jaxconv train" in message
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and _epochs_in(tmp_path) == list(range(1, saved[-1] + 1))

    code, err = Run(tmp_path).finish()  # the same command resumes
    assert code == 0, err
    for a, b in zip(_leaves(tmp_path), _leaves(uninterrupted[0])):
        np.testing.assert_array_equal(a, b)


def test_a_nan_loss_stops_training_naming_epoch_and_step_and_keeps_the_last_good_epoch(
    small_digits, tmp_path
):
    n, batch, steps = 250, 32, 7  # 26 images are left out of each epoch
    first, second = (list(input_pipeline.epoch_permutation(n, 0, epoch)) for epoch in (1, 2))
    # an image that epoch 1 leaves out and epoch 2 trains on
    index = next(i for i in first[steps * batch :] if second.index(i) < steps * batch)
    images = small_digits.train_images[:n].copy()
    images[index, 14, 14, 0] = np.nan
    dataset = Dataset("mnist5k", images, small_digits.train_labels[:n], *_test_split(small_digits))
    with pytest.raises(Diverged) as info:
        train_and_evaluate(dataset, tmp_path, TrainConfig(batch_size=batch), 3, progress=False)
    step = second.index(index) // batch + 1
    assert (info.value.epoch, info.value.step) == (2, step)
    assert f"epoch 2, step {step}" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert _epochs_in(tmp_path) == [1]


def _test_split(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return dataset.test_images, dataset.test_labels


def test_a_huge_learning_rate_diverges_with_one_line_and_exit_status_1(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxconv",
            "train",
            "--epochs",
            "2",
            "--batch-size",
            "500",
            "--learning-rate",
            "1e6",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert "diverged" in line and "--learning-rate" in line
    assert not any((tmp_path / "checkpoints").glob("[0-9]*"))


def test_epochs_below_the_latest_checkpoint_are_refused(small_digits, tmp_path):
    config = TrainConfig(batch_size=32)
    train_and_evaluate(small_digits, tmp_path, config, 2, progress=False)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="checkpointed at epoch 2, after --epochs 1"):
        train_and_evaluate(small_digits, tmp_path, config, 1, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == before
