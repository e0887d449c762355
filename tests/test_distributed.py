"""Several processes (jax.distributed over loopback, CPU): the same run however the devices
are split into processes, checkpoints that move between splits, and no hang on a failure.

Starting a process that imports JAX, and compiling the train step in it (process 1 cannot
use the persistent compilation cache), costs more than the training here. So one ``jaxconv
launch -n 2`` plays every scenario of two processes in turn (``SCENARIOS``), on a few
hundred digits, after a reference run in this process; both are made once per pytest run,
by the first xdist worker to ask (``runs``)."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import XLA_FLAGS_AT_START, made_once, save_digits

from jaxconv import distributed, input_pipeline
from jaxconv.input_pipeline import Dataset
from jaxconv.train import CHECK_EVERY, TrainConfig, load_run, train_and_evaluate

# 11 steps an epoch, so that the loss and Ctrl-C are looked at mid-epoch (after step
# CHECK_EVERY = 10) and at its end, and 16 images that each epoch leaves out (others each
# time). One process and two stay within _assert_same_run's tolerance by a factor of ~10.
BATCH = 64
TRAIN_IMAGES = 11 * BATCH + 16
TEST_IMAGES = 2 * BATCH
EPOCHS = 3
TRAIN = ["train", "--batch-size", str(BATCH), "--epochs", str(EPOCHS)]
# The launch's command, on a copy of the one-process run at epoch 1: epoch 2 is finished
# but not saved when process 1 gets SIGINT as the last epoch starts
INTERRUPTED = [*TRAIN, "--checkpoint-every", str(EPOCHS)]
TIMEOUT_S = 240  # the launch is bounded; nothing is left running


@pytest.fixture(scope="module")
def digits(mnist5k) -> Dataset:
    """The digits every run here trains on (the commands too: ``SCENARIOS``)."""
    return Dataset(
        mnist5k.name,
        mnist5k.train_images[:TRAIN_IMAGES],
        mnist5k.train_labels[:TRAIN_IMAGES],
        mnist5k.test_images[:TEST_IMAGES],
        mnist5k.test_labels[:TEST_IMAGES],
    )


def _environment() -> dict[str, str]:
    """A child's environment: JAX on the CPU, joined to no cluster, computing bitwise what
    this process computes (its XLA flags: without any, the commands set theirs, whose other
    fusions move the last digits of the losses; its matmul precision)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": XLA_FLAGS_AT_START,
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
    }
    for name in distributed.ENVIRONMENT:
        env.pop(name, None)
    return env


def _train_here(data: Dataset, workdir: Path, epochs: int, progress: bool = False) -> None:
    """``jaxconv train`` with TRAIN's batch size on ``data``, in this process (one device)."""
    train_and_evaluate(data, workdir, TrainConfig(batch_size=BATCH), epochs, progress=progress)


def _losses(workdir: Path) -> np.ndarray:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return np.array([[json.loads(line)[k] for k in ("train_mse", "test_mse")] for line in lines])


def _params(workdir: Path) -> list[np.ndarray]:
    _, state = load_run(workdir)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def _assert_same_run(a: Path, b: Path) -> None:
    np.testing.assert_allclose(_losses(a), _losses(b), rtol=1e-5)
    # the gradients' sums go in another order over half the batch (chunks, the native
    # kernel's runs of pixels): a parameter near zero may differ by a few float32 ulps of
    # the larger ones after the run
    for x, y in zip(_params(a), _params(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _at_epoch(workdir: Path, epoch: int, copy: Path) -> Path:
    """A copy of the run ``workdir`` as it was at ``epoch``: its later checkpoints moved out
    (what the checkpoint error tells a user to do to resume from an earlier one)."""
    shutil.copytree(workdir, copy)
    for checkpoint in (copy / "checkpoints").iterdir():
        if checkpoint.name.isdigit() and int(checkpoint.name) > epoch:
            shutil.rmtree(checkpoint)
    return copy


def _nan_at(n: int) -> tuple[int, int]:
    """``(image, step)``: of ``n`` images, one that epoch 1 leaves out and epoch 2 trains on
    at a step between two checks (not a multiple of CHECK_EVERY), and that step."""
    steps = n // BATCH
    first, second = (list(input_pipeline.epoch_permutation(n, 0, epoch)) for epoch in (1, 2))
    return next(
        (int(i), second.index(i) // BATCH + 1)
        for i in first[steps * BATCH :]
        if (second.index(i) // BATCH + 1) % CHECK_EVERY and second.index(i) < steps * BATCH
    )


# Each process of the launch runs ``python SCENARIOS FOLDER COMMAND...``: the scenarios
# below in turn, starting each with a line "SCENARIO name" and printing "REPORT {name:
# value}" lines, then exits with COMMAND's status. Around the real commands (``cli.main``)
# and training loop, a little glue:
# - the commands train on FOLDER/digits.npz and join the processes once;
# - a command's error exit (``distributed.exit_now``: ``os._exit``) is recorded, and the
#   scenarios go on.
# Each process compiles the train and test steps once for all its runs (jaxconv.train
# keeps the train state's static fields per settings): process 1 cannot read the
# persistent compilation cache (only process 0 writes it, and the key holds the process's
# devices).
SCENARIOS = """
import json, os, shutil, signal, sys, time
from pathlib import Path
import numpy as np
import jax
from jaxconv import distributed, input_pipeline
from jaxconv.cli import main
from jaxconv.input_pipeline import Dataset
from jaxconv.train import Diverged, TrainConfig, train_and_evaluate

folder, command = Path(sys.argv[1]), sys.argv[2:]
settings = json.loads((folder / "settings.json").read_text())
batch, epochs, train_command = settings["batch"], settings["epochs"], settings["train"]
with np.load(folder / "digits.npz") as saved:
    digits = Dataset("mnist5k", *(saved[key] for key in ("train_x", "train_y", "test_x", "test_y")))
load_dataset = input_pipeline.load_dataset
input_pipeline.load_dataset = lambda name=digits.name, **kwargs: (
    digits if name == digits.name else load_dataset(name, **kwargs)
)
initialize = distributed.initialize
distributed.initialize = lambda processes: jax.distributed.is_initialized() or initialize(processes)


class Exited(BaseException):
    pass


def leave(status):
    raise Exited(status)


distributed.exit_now = leave


def jaxconv(*argv):
    try:
        main([str(arg) for arg in argv])
    except Exited as e:
        return e.args[0]
    return 0


def report(name, value):
    print("REPORT", json.dumps({name: value}), flush=True)


def scenario(name):
    print("SCENARIO", name, flush=True)


scenario("two")  # jaxconv train, uninterrupted
report("two", jaxconv(*train_command, "--workdir", folder / "two"))

config = TrainConfig(batch_size=batch)
scenario("one_process")  # the checkpoint of one process (epoch 1) resumed by two
train_and_evaluate(digits, folder / "one_process", config, epochs)

scenario("diverged")  # a NaN in an image that epoch 1 (saved) left out, between two checks
images = digits.train_images.copy()
images[settings["nan_image"], 14, 14, 0] = np.nan
data = Dataset(digits.name, images, digits.train_labels, digits.test_images, digits.test_labels)
try:  # the progress bar of process 0 on, as in the CLI
    train_and_evaluate(data, folder / "diverged", config, epochs)
except Diverged as e:
    report("diverged", {"epoch": e.epoch, "step": e.step})

scenario("interrupted")  # COMMAND, where process 1 alone gets SIGINT as the last epoch starts
permutation = input_pipeline.epoch_permutation


def epoch_permutation(num_examples, seed, epoch):
    if epoch == epochs and os.environ["JAX_PROCESS_ID"] == "1":
        input_pipeline.epoch_permutation = permutation  # once
        os.kill(os.getpid(), signal.SIGINT)
    return permutation(num_examples, seed, epoch)


input_pipeline.epoch_permutation = epoch_permutation
status = jaxconv(*command)
report("interrupted", status)
workdir = Path(command[command.index("--workdir") + 1])
distributed.primary_first(lambda: shutil.copytree(workdir, folder / "resumed"))

scenario("resumed")  # the stopped run resumed as its command does (in a copy)
report("resumed", jaxconv(*command, "--workdir", folder / "resumed"))

scenario("tfds")  # a TFDS dataset prepared into one data dir (last: TFDS stays mocked)
import tensorflow_datasets as tfds
me = jax.process_index()
log, data_dir = folder / "events", folder / "data"

def note(event):
    with log.open("a") as f:
        f.write(f"{time.monotonic()} {me} {event}\\n")

def download_and_prepare(self, **kwargs):  # slow enough for a reader to come too early
    note("prepare")
    time.sleep(1.0)
    (log.parent / self.name).touch()
    note("prepared")

input_pipeline._tensorflow_available = lambda: True
input_pipeline._network_available = lambda: True
with tfds.testing.mock_data(num_examples=4):
    builder = tfds.core.DatasetBuilder
    builder.download_and_prepare = download_and_prepare
    builder.is_prepared = lambda self: (log.parent / self.name).exists()
    read = builder.as_data_source
    builder.as_data_source = lambda self, **kwargs: note("read") or read(self, **kwargs)
    shape = load_dataset("mnist", data_dir=data_dir).train_images.shape
    report("prepared", list(shape))
    input_pipeline._network_available = lambda: False  # process 0 cannot prepare this one
    try:
        load_dataset("fashion_mnist", data_dir=data_dir)
    except input_pipeline.DatasetUnavailableError as e:
        report("unavailable", str(e))
sys.exit(status)  # through jax.distributed's shutdown, which waits for every process
"""

# ``jaxconv launch -n 2 --timeout T -- COMMAND...`` with ``python SCENARIOS FOLDER`` as each
# process's program instead of ``python -m jaxconv``
LAUNCHER = """
import sys
from jaxconv import launch
from jaxconv.cli import main
launch.PROGRAM = (sys.executable, *sys.argv[1:3])
main(["launch", "-n", "2", "--timeout", sys.argv[3], "--", *sys.argv[4:]])
"""


@dataclass(frozen=True)
class Runs:
    """The runs made once: ``one`` (EPOCHS epochs in this process, one device: the
    reference), and the launch's folder, exit status, stderr and each process's output
    lines (without their ``[i]`` prefix) by scenario."""

    one: Path
    folder: Path
    status: int
    stderr: str
    lines: dict[tuple[int, str], list[str]]

    def out(self, scenario: str, index: int | None = None) -> str:
        """The output of process ``index`` (default: both, prefixed) in ``scenario``."""
        if index is not None:
            return "\n".join(self.lines.get((index, scenario), []))
        return "\n".join(
            f"[{i}] {line}" for i in (0, 1) for line in self.lines.get((i, scenario), [])
        )

    def reports(self, name: str) -> list:
        """The value each process reported as ``name`` (None where it did not)."""
        values = []
        for i in (0, 1):
            lines = [line for (j, _), v in self.lines.items() if j == i for line in v]
            reports = [json.loads(line[7:]) for line in lines if line.startswith("REPORT ")]
            values.append(next((r[name] for r in reports if name in r), None))
        return values


def _by_scenario(stdout: str) -> dict[tuple[int, str], list[str]]:
    """The launch's output lines ``[i] text``: each ``text`` by process ``i`` and scenario."""
    lines: dict[tuple[int, str], list[str]] = {}
    current = {0: "start", 1: "start"}
    for line in stdout.splitlines():
        match = re.match(r"\[([01])\] (.*)", line)
        if match:
            index, text = int(match[1]), match[2]
            if text.startswith("SCENARIO "):
                current[index] = text.split()[1]
            lines.setdefault((index, current[index]), []).append(text)
    return lines


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits) -> Runs:
    def make(folder: Path) -> None:
        _train_here(digits, folder / "one", EPOCHS)
        for name in ("one_process", "diverged", "interrupted"):
            _at_epoch(folder / "one", 1, folder / name)
        save_digits(digits, folder / "digits.npz")
        nan_image, _ = _nan_at(TRAIN_IMAGES)
        settings = {"batch": BATCH, "epochs": EPOCHS, "train": TRAIN, "nan_image": nan_image}
        (folder / "settings.json").write_text(json.dumps(settings))
        (folder / "scenarios.py").write_text(SCENARIOS)
        result = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(folder / "scenarios.py"), str(folder)]
            + [str(TIMEOUT_S), *INTERRUPTED, "--workdir", str(folder / "interrupted")],
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S + 30,
        )
        outcome = {"status": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
        (folder / "outcome.json").write_text(json.dumps(outcome))

    folder = made_once(tmp_path_factory, "distributed", make)
    outcome = json.loads((folder / "outcome.json").read_text())
    return Runs(
        folder / "one",
        folder,
        outcome["status"],
        outcome["stderr"],
        _by_scenario(outcome["stdout"]),
    )


def test_the_launch_played_every_scenario_in_both_processes(runs):
    names = ["two", "one_process", "diverged", "interrupted", "resumed", "tfds"]
    for index in (0, 1):
        played = [name for (i, name) in runs.lines if i == index and name != "start"]
        assert played == names, runs.out(played[-1] if played else "start")[-3000:]


def test_two_processes_train_as_one_process(runs):
    """(One process with several devices against one device: test_train's
    test_four_devices_give_the_losses_of_one.)"""
    assert runs.reports("two") == [0, 0]  # the command's exit status in each process
    assert len(_losses(runs.one)) == EPOCHS
    _assert_same_run(runs.folder / "two", runs.one)


def test_only_process_zero_writes_the_runs_files_and_every_process_logs(runs):
    out = runs.out("two")
    for index in (0, 1):
        assert f"[{index}] [process {index}/2] epoch   1" in out
    assert out.count("reconstructions:") == 1
    assert len((runs.folder / "two" / "metrics.jsonl").read_text().splitlines()) == EPOCHS


def test_a_checkpoint_of_two_processes_resumes_in_one(runs, digits, tmp_path, capsys):
    workdir = _at_epoch(runs.folder / "two", 1, tmp_path / "run")
    _train_here(digits, workdir, EPOCHS, progress=True)
    assert f"{workdir}: resumed from epoch 1" in capsys.readouterr().out
    _assert_same_run(workdir, runs.one)


def test_a_checkpoint_of_one_process_resumes_in_two(runs):
    workdir = runs.folder / "one_process"
    assert f"[process 0/2] {workdir}: resumed from epoch 1" in runs.out("one_process", 0)
    _assert_same_run(workdir, runs.one)


def test_ctrl_c_reaching_one_process_only_stops_both_at_the_same_step_after_saving(runs):
    """In a run resumed from epoch 1 whose epoch 2 is finished but not saved, both stop at
    the first check of epoch 3 (mid-epoch) and save epoch 2 together (a save is a
    collective); the launch exits 130 and says how to resume."""
    out = runs.out("interrupted")
    assert runs.status == 130, out[-3000:] + runs.stderr[-3000:]
    assert "[1] Ctrl-C: stopping" in out and "Ctrl-C" not in runs.out("interrupted", 0)
    for index in (0, 1):  # both stopped, after saving the same epoch
        assert f"[{index}] jaxconv train: error: interrupted; epoch 2 is saved" in out
    assert runs.reports("interrupted") == [130, 130]
    assert out.count("[0] [process 0/2] epoch ") == 1  # epoch 3 was not finished
    # the run as the interruption left it (a copy of it was resumed)
    workdir = runs.folder / "interrupted"
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [1, 2]
    assert len(_losses(workdir)) == 2
    assert "resume with: jaxconv launch -n 2 -- train --batch-size" in runs.stderr


def test_a_run_stopped_by_ctrl_c_resumes_bitwise(runs):
    """The resume of the interrupted run ends where the uninterrupted one (``one_process``,
    from the same checkpoint) does, bit for bit."""
    workdir = runs.folder / "resumed"
    assert runs.reports("resumed") == [0, 0]
    assert f"[process 0/2] {workdir}: resumed from epoch 2" in runs.out("resumed", 0)
    np.testing.assert_array_equal(_losses(workdir), _losses(runs.folder / "one_process"))
    for a, b in zip(_params(workdir), _params(runs.folder / "one_process")):
        np.testing.assert_array_equal(a, b)


def test_a_nan_between_two_checks_stops_every_process_at_the_same_step(runs):
    workdir = runs.folder / "diverged"
    _, step = _nan_at(TRAIN_IMAGES)
    assert runs.reports("diverged") == [{"epoch": 2, "step": step}] * 2
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
    assert [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").open()] == [1]


def test_process_zero_prepares_a_tfds_dataset_while_the_others_wait(runs):
    assert runs.reports("prepared") == [[4, 28, 28, 1]] * 2
    events = [line.split() for line in (runs.folder / "events").read_text().splitlines()]
    assert [(who, what) for _, who, what in events if what.startswith("prepare")] == [
        ("0", "prepare"),
        ("0", "prepared"),
    ]
    done = next(float(t) for t, _, what in events if what == "prepared")
    reads = [float(t) for t, who, what in events if (who, what) == ("1", "read")]
    assert reads and min(reads) > done
    # when process 0 cannot prepare it, the others say so rather than wait or race
    failures = runs.reports("unavailable")
    assert "no network" in failures[0]
    assert "process 0 failed: DatasetUnavailableError" in failures[1]
    assert "no network" in failures[1]


def test_the_cluster_comes_from_flags_or_the_environment_all_three_or_none():
    environ = dict(zip(distributed.ENVIRONMENT, ("10.0.0.1:1234", "4", "3")))
    assert distributed.cluster(environ={}) is None
    assert distributed.cluster(environ=environ) == distributed.Cluster("10.0.0.1:1234", 4, 3)
    assert distributed.cluster("h:1", 2, 0, environ=environ) == distributed.Cluster("h:1", 2, 0)
    assert distributed.cluster(auto=True, environ={}) == distributed.Cluster(auto=True)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("h:1", 2, None), {}, "all three or none"),
        ((None, 2, None), {}, "all three or none"),
        (("h:1", 2, 0), {"auto": True}, "conflict"),
        (("h", 2, 0), {}, "HOST:PORT"),
        (("h:0", 2, 0), {}, "HOST:PORT"),
        (("h:99999", 2, 0), {}, "HOST:PORT"),
        (("h:1", 0, 0), {}, "num_processes"),
        (("h:1", 2, 2), {}, "process_id"),
        (("h:1", 2, -1), {}, "process_id"),
        ((), {"environ": {"JAX_NUM_PROCESSES": "2"}}, "JAX_COORDINATOR_ADDRESS"),
        (
            (),
            {"environ": dict(zip(distributed.ENVIRONMENT, ("h:1", "two", "0")))},
            "environment",
        ),
    ],
)
def test_a_bad_cluster_is_refused_naming_the_argument(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.cluster(*args, **{"environ": {}, **kwargs})
