"""Several processes (jax.distributed over loopback, CPU): the same run however the devices
are split into processes, checkpoints that move between splits, and no hang on a failure.

Starting a process that imports JAX costs more than the training here, so the runs are
shared: a run in this process and a ``jaxconv launch -n 2`` run (each made once per pytest
run, by the first xdist worker to ask), and one pair of joined processes that plays several
scenarios in turn (``joined``)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import XLA_FLAGS_AT_START, made_once

from jaxconv import distributed, input_pipeline, launch
from jaxconv.input_pipeline import Dataset
from jaxconv.train import CHECK_EVERY, TrainConfig, load_run, train_and_evaluate

# mnist5k's 4,500 training digits in 11 steps an epoch (100 left out, each epoch others):
# the loss and Ctrl-C are looked at after steps 10 and 11. (With 500, 9 steps, only at the
# epoch's end; with 300, one process and two drift apart by more than _assert_same_run allows.)
BATCH = 400
EPOCHS = 2
TRAIN = ["train", "--batch-size", str(BATCH)]
TIMEOUT_S = 240  # every launch below is bounded; nothing is left running


def _environment(**variables: str) -> dict[str, str]:
    """A child's environment: JAX on the CPU, joined to no cluster, computing bitwise what
    this process computes (its XLA flags: without any, the commands set theirs, whose other
    fusions move the last digits of the losses; its matmul precision), and ``variables``."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": XLA_FLAGS_AT_START,
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
    }
    for name in distributed.ENVIRONMENT:
        env.pop(name, None)
    return {**env, **variables}


def _launch(n: int, *argv: str) -> subprocess.CompletedProcess:
    """``jaxconv launch -n N -- ARGV...``, which must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "jaxconv", "launch", "-n", str(n), "--timeout", str(TIMEOUT_S)]
        + ["--", *argv],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S + 30,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _train_here(data: Dataset, workdir: Path, epochs: int, progress: bool = False) -> None:
    """``jaxconv train`` with TRAIN on ``data``, in this process (one device), no figures."""
    config = TrainConfig(batch_size=BATCH)
    train_and_evaluate(data, workdir, config, epochs, progress=progress)


def _losses(workdir: Path) -> np.ndarray:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return np.array([[json.loads(line)[k] for k in ("train_mse", "test_mse")] for line in lines])


def _params(workdir: Path) -> list[np.ndarray]:
    _, state = load_run(workdir)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def _assert_same_run(a: Path, b: Path) -> None:
    np.testing.assert_allclose(_losses(a), _losses(b), rtol=1e-5)
    for x, y in zip(_params(a), _params(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def _at_epoch(workdir: Path, epoch: int, copy: Path) -> Path:
    """A copy of the run ``workdir`` as it was at ``epoch``: its later checkpoints moved out
    (what the checkpoint error tells a user to do to resume from an earlier one)."""
    shutil.copytree(workdir, copy)
    for checkpoint in (copy / "checkpoints").iterdir():
        if checkpoint.name.isdigit() and int(checkpoint.name) > epoch:
            shutil.rmtree(checkpoint)
    return copy


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, mnist5k) -> Path:
    """EPOCHS epochs in 1 process with 1 device (this one): the reference."""
    folder = made_once(tmp_path_factory, "one", lambda d: _train_here(mnist5k, d / "run", EPOCHS))
    return folder / "run"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, str]:
    """EPOCHS epochs of ``jaxconv launch -n 2 -- train``: its workdir and its output."""

    def run(folder: Path) -> None:
        result = _launch(2, *TRAIN, "--epochs", str(EPOCHS), "--workdir", str(folder / "run"))
        (folder / "stdout").write_text(result.stdout)

    folder = made_once(tmp_path_factory, "two", run)
    return folder / "run", (folder / "stdout").read_text()


def test_two_processes_train_as_one_process(one_process, two_processes):
    """(One process with several devices against one device: test_train's
    test_four_devices_give_the_losses_of_one.)"""
    assert len(_losses(one_process)) == EPOCHS
    _assert_same_run(two_processes[0], one_process)


def test_only_process_zero_writes_the_runs_files_and_every_process_logs(two_processes):
    workdir, stdout = two_processes
    for index in (0, 1):
        assert f"[{index}] [process {index}/2] epoch   1" in stdout
    assert stdout.count("reconstructions:") == 1
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == EPOCHS


def test_a_checkpoint_of_two_processes_resumes_in_one(
    one_process, two_processes, mnist5k, tmp_path, capsys
):
    workdir = _at_epoch(two_processes[0], 1, tmp_path / "run")
    _train_here(mnist5k, workdir, EPOCHS, progress=True)
    assert f"{workdir}: resumed from epoch 1" in capsys.readouterr().out
    _assert_same_run(workdir, one_process)


def _nan_at(n: int) -> tuple[int, int]:
    """``(image, step)``: of ``n`` images, one that epoch 1 leaves out and epoch 2 trains on
    at a step between two checks (not a multiple of CHECK_EVERY), and that step."""
    steps = n // BATCH
    first, second = (list(input_pipeline.epoch_permutation(n, 0, epoch)) for epoch in (1, 2))
    return next(
        (i, second.index(i) // BATCH + 1)
        for i in first[steps * BATCH :]
        if (second.index(i) // BATCH + 1) % CHECK_EVERY and second.index(i) < steps * BATCH
    )


# ``python CHILD COMMAND ...`` runs ``jaxconv COMMAND ...``, where process 1 alone gets SIGINT
# as it starts epoch 2: the moment is forced, not raced
INTERRUPTED_CHILD = """
import os, signal, sys
from jaxconv import input_pipeline
from jaxconv.cli import main

permutation = input_pipeline.epoch_permutation

def epoch_permutation(num_examples, seed, epoch):
    if epoch == 2 and os.environ["JAX_PROCESS_ID"] == "1":
        os.kill(os.getpid(), signal.SIGINT)
    return permutation(num_examples, seed, epoch)

input_pipeline.epoch_permutation = epoch_permutation
main(sys.argv[1:])
"""

# ``jaxconv launch -n 2 --timeout T -- COMMAND ...`` with CHILD as each process's program
LAUNCHER = """
import sys
from jaxconv import launch
launch.PROGRAM = (sys.executable, sys.argv[1])
sys.exit(launch.launch(sys.argv[3:], 2, timeout=float(sys.argv[2])))
"""
INTERRUPTED = [*TRAIN, "--epochs", str(EPOCHS), "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, dict]:
    """``jaxconv launch -n 2 -- INTERRUPTED`` where process 1 alone gets SIGINT as epoch 2
    starts, when the last finished epoch (1) is not saved: its workdir, and its exit
    ``status``, ``stdout`` and ``stderr``."""

    def run(folder: Path) -> None:
        child = folder / "child.py"
        child.write_text(INTERRUPTED_CHILD)
        result = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(child), str(TIMEOUT_S), *INTERRUPTED]
            + ["--workdir", str(folder / "run")],
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S + 30,
        )
        outcome = {"status": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
        (folder / "outcome.json").write_text(json.dumps(outcome))

    folder = made_once(tmp_path_factory, "interrupted", run)
    return folder / "run", json.loads((folder / "outcome.json").read_text())


def test_ctrl_c_reaching_one_process_only_stops_both_at_the_same_step_after_saving(interrupted):
    """Both stop at the first check of epoch 2 (mid-epoch) and save epoch 1 together (a
    save is a collective); the launch exits 130 and says how to resume."""
    workdir, outcome = interrupted
    out = outcome["stdout"]
    assert outcome["status"] == 130, out[-3000:] + outcome["stderr"][-3000:]
    assert "[1] Ctrl-C: stopping" in out and "[0] Ctrl-C" not in out  # one process got it
    for index in (0, 1):  # both stopped, after saving the same epoch
        assert f"[{index}] jaxconv train: error: interrupted; epoch 1 is saved" in out
    assert out.count("[0] [process 0/2] epoch ") == 1  # epoch 2 was not finished
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [1]
    assert len(_losses(workdir)) == 1
    assert "resume with: jaxconv launch -n 2 -- train --batch-size" in outcome["stderr"]


def _processes(script: str, *argv: str, n: int = 2) -> list[str]:
    """The stdout of each of ``n`` processes running ``script``, joined over loopback."""
    address = f"127.0.0.1:{launch.free_port()}"
    children = []
    for index in range(n):
        cluster = dict(zip(distributed.ENVIRONMENT, (address, str(n), str(index))))
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *argv],
                env=_environment(JAX_NUM_CPU_DEVICES="1", **cluster),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        results = [child.communicate(timeout=TIMEOUT_S) for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    for child, (_, err) in zip(children, results):
        assert child.returncode == 0, err[-3000:]
    return [out for out, _ in results]


# Scenarios of two joined processes, one after the other (starting the processes costs
# more than any of them); each process prints "REPORT {name: value}" lines.
SCENARIOS = """
import json, sys, time
from pathlib import Path
import numpy as np
from jaxconv import distributed, input_pipeline
distributed.initialize(distributed.cluster())
import jax
from jaxconv.input_pipeline import Dataset, load_dataset
from jaxconv.train import Diverged, TrainConfig, train_and_evaluate
folder, batch, epochs, nan_image = Path(sys.argv[1]), *map(int, sys.argv[2:])
me = jax.process_index()
config = TrainConfig(batch_size=batch)

def report(name, value):
    print("REPORT", json.dumps({name: value}), flush=True)

# A NaN in the image nan_image, which epoch 1 (saved in folder/diverged) left out and
# epoch 2 trains on between two checks
d = load_dataset()
images = d.train_images.copy()
images[nan_image, 14, 14, 0] = np.nan
data = Dataset(d.name, images, d.train_labels, d.test_images, d.test_labels)
try:  # the progress bar of process 0 on, as in the CLI
    train_and_evaluate(data, folder / "diverged", config, epochs)
except Diverged as e:
    report("diverged", {"epoch": e.epoch, "step": e.step})

# The checkpoint of one process (epoch 1) resumed by two
train_and_evaluate(d, folder / "one_process", config, epochs)
# The run stopped by Ctrl-C resumed, as its command does
train_and_evaluate(d, folder / "interrupted", config, epochs, checkpoint_every=2)

# A TFDS dataset prepared into one data dir (last: TFDS stays mocked)
import tensorflow_datasets as tfds
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
    shape = input_pipeline.load_dataset("mnist", data_dir=data_dir).train_images.shape
    report("prepared", list(shape))
    input_pipeline._network_available = lambda: False  # process 0 cannot prepare this one
    try:
        input_pipeline.load_dataset("fashion_mnist", data_dir=data_dir)
    except input_pipeline.DatasetUnavailableError as e:
        report("unavailable", str(e))
"""


def _reports(output: str) -> dict:
    """A process's ``REPORT {name: value}`` lines, as one dict."""
    reports = [json.loads(line[7:]) for line in output.splitlines() if line.startswith("REPORT ")]
    return {name: value for report in reports for name, value in report.items()}


@pytest.fixture(scope="module")
def joined(tmp_path_factory, mnist5k, one_process, interrupted) -> tuple[Path, list, list]:
    """SCENARIOS played once: their folder, each process's output and its reports. They
    resume copies of ``one_process`` at epoch 1 (two) and of the ``interrupted`` run."""

    def run(folder: Path) -> None:
        for name in ("diverged", "one_process"):
            _at_epoch(one_process, 1, folder / name)
        shutil.copytree(interrupted[0], folder / "interrupted")
        nan_image, _ = _nan_at(len(mnist5k.train_images))
        argv = [str(folder), str(BATCH), str(EPOCHS), str(nan_image)]
        (folder / "outputs.json").write_text(json.dumps(_processes(SCENARIOS, *argv)))

    folder = made_once(tmp_path_factory, "joined", run)
    outputs = json.loads((folder / "outputs.json").read_text())
    return folder, outputs, [_reports(out) for out in outputs]


def test_a_checkpoint_of_one_process_resumes_in_two(one_process, joined):
    folder, outputs, _ = joined
    assert f"[process 0/2] {folder / 'one_process'}: resumed from epoch 1" in outputs[0]
    _assert_same_run(folder / "one_process", one_process)


def test_a_run_stopped_by_ctrl_c_resumes_bitwise(two_processes, joined):
    """The resume of ``interrupted`` ends where the uninterrupted launch does, bit for bit."""
    folder, outputs, _ = joined
    assert f"[process 0/2] {folder / 'interrupted'}: resumed from epoch 1" in outputs[0]
    assert len(_losses(folder / "interrupted")) == EPOCHS
    for a, b in zip(_params(folder / "interrupted"), _params(two_processes[0])):
        np.testing.assert_array_equal(a, b)


def test_a_nan_between_two_checks_stops_every_process_at_the_same_step(joined, mnist5k):
    folder, _, reports = joined
    workdir = folder / "diverged"
    _, step = _nan_at(len(mnist5k.train_images))
    assert [report["diverged"] for report in reports] == [{"epoch": 2, "step": step}] * 2
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
    assert [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").open()] == [1]


def test_process_zero_prepares_a_tfds_dataset_while_the_others_wait(joined):
    folder, _, reports = joined
    assert [report["prepared"] for report in reports] == [[4, 28, 28, 1]] * 2
    events = [line.split() for line in (folder / "events").read_text().splitlines()]
    assert [(who, what) for _, who, what in events if what.startswith("prepare")] == [
        ("0", "prepare"),
        ("0", "prepared"),
    ]
    done = next(float(t) for t, _, what in events if what == "prepared")
    reads = [float(t) for t, who, what in events if (who, what) == ("1", "read")]
    assert reads and min(reads) > done
    # when process 0 cannot prepare it, the others say so rather than wait or race
    failures = [report["unavailable"] for report in reports]
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
