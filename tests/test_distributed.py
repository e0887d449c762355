"""Several processes (jax.distributed over loopback, CPU): the same run however the devices
are split into processes, checkpoints that move between splits, and no hang on a failure."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxconv import distributed, input_pipeline, launch
from jaxconv.train import CHECK_EVERY, load_run

TRAIN = ["train", "--batch-size", "500"]
TIMEOUT_S = 240  # every launch below is bounded; nothing is left running


def _jaxconv(*argv: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
    for name in distributed.ENVIRONMENT:
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "jaxconv", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S + 30,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _launch(n: int, *argv: str) -> subprocess.CompletedProcess:
    return _jaxconv("launch", "-n", str(n), "--timeout", str(TIMEOUT_S), "--", *argv)


def _train(workdir: Path, epochs: int, processes: int = 1, devices: int = 1) -> None:
    argv = [*TRAIN, "--epochs", str(epochs), "--workdir", str(workdir)]
    if processes > 1:
        _launch(processes, *argv)
    else:
        _jaxconv(*argv, devices=devices)


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


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """2 epochs in 1 process with 1 device."""
    workdir = tmp_path_factory.mktemp("one") / "run"
    _train(workdir, 2)
    return workdir


def test_two_processes_train_as_one_process_with_two_devices_and_with_one(one_process, tmp_path):
    _train(tmp_path / "two_processes", 2, processes=2)
    _train(tmp_path / "two_devices", 2, devices=2)
    assert len(_losses(one_process)) == 2
    _assert_same_run(tmp_path / "two_processes", one_process)
    _assert_same_run(tmp_path / "two_devices", one_process)


def test_only_process_zero_writes_the_runs_files_and_every_process_logs(tmp_path):
    result = _launch(2, *TRAIN, "--epochs", "1", "--workdir", str(tmp_path))
    for index in (0, 1):
        assert f"[{index}] [process {index}/2] epoch   1" in result.stdout
    assert result.stdout.count("reconstructions:") == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)], ids=["2 then 1", "1 then 2"])
def test_a_checkpoint_resumes_with_another_number_of_processes(first, then, one_process, tmp_path):
    _train(tmp_path, 1, processes=first)
    _train(tmp_path, 2, processes=then)
    _assert_same_run(tmp_path, one_process)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def test_a_killed_process_fails_the_launch_and_stops_the_others(tmp_path):
    command = [sys.executable, "-m", "jaxconv", "launch", "-n", "2", "--timeout", "200", "--"]
    argv = [*TRAIN, "--epochs", "100", "--workdir", str(tmp_path)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(
        [*command, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in launcher.stdout:  # wait until both train
        if "compiled the train step" in line:
            break
    children = _children(launcher.pid)
    assert len(children) == 2
    os.kill(children[1], signal.SIGKILL)
    start = time.monotonic()
    _, err = launcher.communicate(timeout=60)
    assert time.monotonic() - start < 30
    assert launcher.returncode == 128 + signal.SIGKILL
    assert "process 1 exited" in err
    assert not any(Path(f"/proc/{child}").exists() for child in children)


DIVERGE_SCRIPT = """
import json, sys
import numpy as np
from jaxconv import distributed
distributed.initialize(distributed.cluster())
from jaxconv.input_pipeline import Dataset, load_dataset
from jaxconv.train import Diverged, TrainConfig, train_and_evaluate
workdir, n, batch, index = sys.argv[1], *map(int, sys.argv[2:])
d = load_dataset()
images = d.train_images[:n].copy()
images[index, 14, 14, 0] = np.nan
data = Dataset("mnist5k", images, d.train_labels[:n], d.test_images[:64], d.test_labels[:64])
try:  # the progress bar of process 0 on, as in the CLI
    train_and_evaluate(data, workdir, TrainConfig(batch_size=batch), 3)
except Diverged as e:
    print(json.dumps({"epoch": e.epoch, "step": e.step}))
"""


def _processes(script: str, *argv: str, n: int = 2) -> list[str]:
    """The stdout of each of ``n`` processes running ``script``, joined over loopback."""
    address = f"127.0.0.1:{launch.free_port()}"
    children = []
    for index in range(n):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JAX_NUM_CPU_DEVICES": "1",
            **dict(zip(distributed.ENVIRONMENT, (address, str(n), str(index)))),
        }
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *argv],
                env=env,
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


def test_a_nan_between_two_checks_stops_every_process_at_the_same_step(tmp_path):
    n, batch = 600, 16  # 37 steps an epoch; epoch 1 leaves 8 images out
    steps = n // batch
    first, second = (list(input_pipeline.epoch_permutation(n, 0, epoch)) for epoch in (1, 2))
    # an image that epoch 1 leaves out and epoch 2 trains on at a step between two checks
    index, step = next(
        (i, second.index(i) // batch + 1)
        for i in first[steps * batch :]
        if (second.index(i) // batch + 1) % CHECK_EVERY and second.index(i) < steps * batch
    )
    outputs = _processes(DIVERGE_SCRIPT, str(tmp_path), str(n), str(batch), str(index))
    stops = [json.loads(out.splitlines()[-1]) for out in outputs]
    assert stops == [{"epoch": 2, "step": step}] * 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").open()] == [1]


def test_ctrl_c_reaching_one_process_only_stops_both_after_saving_and_resumes_bitwise(tmp_path):
    """The race forced: process 1 alone gets SIGINT, mid-epoch (45 steps an epoch), when
    its last finished epoch is not saved yet: the save that Ctrl-C asks for is a collective."""
    train = ["train", "--batch-size", "100", "--epochs", "3", "--checkpoint-every", "3"]
    reference, workdir = tmp_path / "reference", tmp_path / "interrupted"
    _launch(2, *train, "--workdir", str(reference))
    command = [sys.executable, "-m", "jaxconv", "launch", "-n", "2", "--timeout", str(TIMEOUT_S)]
    launcher = subprocess.Popen(
        [*command, "--", *train, "--workdir", str(workdir)],
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in launcher.stdout:  # process 1 has finished epoch 1 and starts epoch 2
        lines.append(line)
        if line.startswith("[1] [process 1/2] epoch   1 "):
            break
    os.kill(_children(launcher.pid)[1], signal.SIGINT)
    out, err = launcher.communicate(timeout=TIMEOUT_S)
    out = "".join(lines) + out
    assert launcher.returncode == 130, out[-3000:] + err[-3000:]
    finished = out.count("[0] [process 0/2] epoch ")
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [finished] and finished < 3  # the last finished epoch, mid-run
    assert len(_losses(workdir)) == finished

    _launch(2, *train, "--workdir", str(workdir))  # the same command resumes
    for a, b in zip(_params(workdir), _params(reference)):
        np.testing.assert_array_equal(a, b)


TFDS_SCRIPT = """
import sys, time
from pathlib import Path
import tensorflow_datasets as tfds
from jaxconv import distributed, input_pipeline
distributed.initialize(distributed.cluster())
import jax
log, data_dir = Path(sys.argv[1]), sys.argv[2]
me = jax.process_index()

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
    print(input_pipeline.load_dataset("mnist", data_dir=data_dir).train_images.shape)
    input_pipeline._network_available = lambda: False  # process 0 cannot prepare this one
    try:
        input_pipeline.load_dataset("fashion_mnist", data_dir=data_dir)
    except input_pipeline.DatasetUnavailableError as e:
        print(e)
"""


def test_process_zero_prepares_a_tfds_dataset_while_the_others_wait(tmp_path):
    log = tmp_path / "events"
    outputs = _processes(TFDS_SCRIPT, str(log), str(tmp_path / "data"))
    shapes, failures = zip(*(out.splitlines() for out in outputs))
    assert shapes == ("(4, 28, 28, 1)",) * 2
    events = [line.split() for line in log.read_text().splitlines()]
    assert [(who, what) for _, who, what in events if what.startswith("prepare")] == [
        ("0", "prepare"),
        ("0", "prepared"),
    ]
    done = next(float(t) for t, _, what in events if what == "prepared")
    reads = [float(t) for t, who, what in events if (who, what) == ("1", "read")]
    assert reads and min(reads) > done
    # when process 0 cannot prepare it, the others say so rather than wait or race
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
