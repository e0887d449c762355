"""A killed, interrupted or diverged run loses nothing and saves nothing bad."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxconv import cli, input_pipeline
from jaxconv.input_pipeline import Dataset
from jaxconv.rundir import RunDir
from jaxconv.train import Diverged, TrainConfig, load_run, train_and_evaluate

# The kills below are 3 to 5, each before the next checkpoint or, when a loaded machine makes
# it come late, just after: the run stays away from its last checkpoint.
EPOCHS = 8
SAVE_TRIES = 3

# `jaxconv train` (cli.main in a fresh interpreter) on the digits saved in argv[1]: 8 steps
# an epoch, so that an epoch and its checkpoint take well under a second.
TRAIN = """
import sys
import numpy as np
from jaxconv import cli, input_pipeline
from jaxconv.input_pipeline import Dataset

with np.load(sys.argv[1]) as d:
    digits = Dataset("mnist5k", *(d[k] for k in ("train_x", "train_y", "test_x", "test_y")))
input_pipeline.load_dataset = lambda *args, **kwargs: digits
cli.main(sys.argv[2:])
"""


class Run:
    """``jaxconv train --epochs EPOCHS`` in a subprocess, its stdout lines collected as they
    come; its JAX computes what this process's does (``same_numerics_env``)."""

    def __init__(self, digits: Path, workdir: Path, env: dict[str, str]) -> None:
        command = ["train", "--epochs", str(EPOCHS), "--workdir", str(workdir)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAIN, str(digits), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
        self.compiled = threading.Event()
        self.err: list[str] = []
        # Each pipe is read to its end by its own thread (stderr too, so that a full pipe
        # never blocks the run); finish() joins them before the pipes are closed.
        self.readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=lambda: self.err.extend(self.process.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read_out(self) -> None:
        for line in self.process.stdout:
            if "compiled the train step" in line:
                self.compiled.set()
        self.compiled.set()  # ended before compiling (e.g. nothing left to train)

    def wait_until_training(self) -> float:
        """The time at which the train step was compiled."""
        assert self.compiled.wait(120), "jaxconv train did not start training in 120 s"
        return time.monotonic()

    def finish(self) -> tuple[int, str]:
        self.process.wait(timeout=300)
        for reader in self.readers:
            reader.join()
        self.process.stdout.close()
        self.process.stderr.close()
        return self.process.returncode, "".join(self.err)


def _epochs_in(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def _leaves(workdir: Path) -> list[np.ndarray]:
    _, state = load_run(workdir)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def uninterrupted(finished_run, run_digits, tmp_path_factory) -> Path:
    """The run that nothing stops, trained in this process (the subprocesses compute the
    same): ``finished_run``'s first epochs continued, with one checkpoint at the end."""
    workdir = Path(shutil.copytree(finished_run, tmp_path_factory.mktemp("run") / "run"))
    train_and_evaluate(
        run_digits, workdir, TrainConfig(), EPOCHS, checkpoint_every=EPOCHS, progress=False
    )
    return workdir


def _checkpoints(workdir: Path) -> tuple[list[int], list[str]]:
    """The finished checkpoints' epochs and the unfinished saves in ``workdir``."""
    folder = workdir / "checkpoints"
    names = [p.name for p in folder.iterdir()] if folder.exists() else []
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def _wait_for(condition, what: str, run: Run) -> None:
    while not condition():
        assert run.process.poll() is None, f"the run ended before {what}"
        time.sleep(0.002)


def _kill(run: Run, workdir: Path) -> list[str]:
    """SIGKILLs ``run``; checks that it was still running and that what it left is a run
    that resumes. Returns its unfinished saves."""
    run.process.send_signal(signal.SIGKILL)
    run.finish()
    assert run.process.returncode == -signal.SIGKILL  # it was still running
    finished, unfinished = _checkpoints(workdir)
    assert finished and finished[-1] < EPOCHS  # before the last checkpoint
    epochs = _epochs_in(workdir)  # always whole lines of consecutive epochs
    assert epochs == list(range(1, len(epochs) + 1))
    return unfinished


def test_sigkill_at_moments_mid_run_ends_as_an_uninterrupted_run(
    uninterrupted, run_digits_file, same_numerics_env, tmp_path
):
    def start() -> Run:
        return Run(run_digits_file, tmp_path, same_numerics_env)

    # 1. as a checkpoint has just appeared (before metrics.jsonl follows)
    run = start()
    compiled = run.wait_until_training()
    _wait_for(lambda: _checkpoints(tmp_path)[0], "its first checkpoint", run)
    cycle = time.monotonic() - compiled  # an epoch, its evaluation and its checkpoint
    _kill(run, tmp_path)

    # 2. at a random moment early in the resumed epoch (mid-step: no new checkpoint)
    run = start()
    run.wait_until_training()
    time.sleep(random.Random(0).uniform(0, cycle / 3))
    _kill(run, tmp_path)

    # 3. inside a save (orbax's unfinished folder is there); a kill can come just after
    # the save finished, so up to SAVE_TRIES runs
    for _ in range(SAVE_TRIES):
        run = start()
        run.wait_until_training()
        _wait_for(lambda: _checkpoints(tmp_path)[1], "a save", run)
        if _kill(run, tmp_path):
            break
    else:
        pytest.fail(f"none of {SAVE_TRIES} kills came inside a save")

    code, err = start().finish()
    assert code == 0, err
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [
        json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    for key in ("train_mse", "test_mse"):
        assert [m[key] for m in metrics] == [m[key] for m in expected]
    for a, b in zip(_leaves(tmp_path), _leaves(uninterrupted)):
        np.testing.assert_array_equal(a, b)


def test_ctrl_c_saves_the_last_finished_epoch_and_says_how_to_resume(
    finished_run, run_digits, cli_dataset, tmp_path, capsys, monkeypatch
):
    """A real SIGINT to this process once epoch 1 is written, as a Ctrl-C would send."""
    # its handler runs in the main thread only; a test run elsewhere would be interrupted
    assert threading.current_thread() is threading.main_thread()
    cli_dataset(run_digits)  # finished_run's data and settings: the same run
    write_metrics = RunDir.write_metrics

    def ctrl_c_after_epoch_1(self, history: list[dict]) -> None:
        write_metrics(self, history)
        if len(history) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunDir, "write_metrics", ctrl_c_after_epoch_1)
    argv = ["train", "--epochs", "3", "--workdir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (message,) = [line for line in err.splitlines() if "error" in line]
    assert "interrupted" in message and f"Resume with: jaxconv {' '.join(argv)}" in message
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < 3 and _epochs_in(tmp_path) == list(range(1, saved[-1] + 1))

    monkeypatch.setattr(RunDir, "write_metrics", write_metrics)
    cli.main(argv)  # the same command resumes
    assert _epochs_in(tmp_path) == [1, 2, 3]
    for a, b in zip(_leaves(tmp_path), _leaves(finished_run)):
        np.testing.assert_array_equal(a, b)


def test_a_nan_loss_stops_training_naming_epoch_and_step_and_keeps_the_last_good_epoch(
    small_digits, tmp_path
):
    n, batch, steps = 250, 64, 3  # 58 images are left out of each epoch
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


def test_a_huge_learning_rate_diverges_with_one_line_and_exit_status_1(
    run_digits, cli_dataset, tmp_path, capfd
):
    cli_dataset(run_digits)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--epochs", "2", "--learning-rate", "1e6", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 1
    err = capfd.readouterr().err  # what the libraries print too, not only Python's sys.stderr
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert "diverged" in line and "--learning-rate" in line
    assert not any((tmp_path / "checkpoints").glob("[0-9]*"))


def test_epochs_below_the_latest_checkpoint_are_refused(run_digits, run_copy):
    before = (run_copy / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="checkpointed at epoch 3, after --epochs 2"):
        train_and_evaluate(run_digits, run_copy, TrainConfig(), 2, progress=False)
    assert (run_copy / "metrics.jsonl").read_text() == before
