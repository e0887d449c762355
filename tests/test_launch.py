"""jaxconv.launch without JAX: the launcher runs stand-in children (a few lines of Python
that react to signals as a training process does), so each case takes about a second."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxconv import launch

# A training process as the launcher sees it: "ready" once started; on SIGINT it "saves"
# (for SAVE_S) and exits 130. Modes: "stuck" ignores SIGINT; "follow" also stops, as its
# peers agree to, when another child was interrupted (it writes the file FLAG then);
# "joined" ignores SIGTERM, as a process of several does (jax.distributed's preemption
# service catches it).
CHILD = """
import os, signal, sys, time
mode, flag = sys.argv[2], sys.argv[3]

def save_and_exit(*_):
    open(flag, "w").close()
    print("stopping", flush=True)
    time.sleep(float(sys.argv[4]))
    print("saved", flush=True)
    sys.exit(130)

signal.signal(signal.SIGINT, signal.SIG_IGN if mode == "stuck" else save_and_exit)
if mode == "joined":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
for _ in range(600):
    time.sleep(0.1)
    if mode == "follow" and os.path.exists(flag):
        save_and_exit()
sys.exit(0)
"""

# ``launch.launch(["train", MODE, FLAG, SAVE_S], 2)`` with CHILD as each process's program
# and GRACE_S (SIGTERM to SIGKILL) shortened
LAUNCHER = """
import sys
from jaxconv import launch
launch.PROGRAM = (sys.executable, sys.argv[1])
launch.INTERRUPT_GRACE_S = float(sys.argv[2])
launch.GRACE_S = float(sys.argv[3])
sys.exit(launch.launch(["train", *sys.argv[4:]], 2, timeout=60))
"""
SAVE_S = 0.2  # long enough that a launcher not waiting for the children would cut it off
GRACE_S = 0.5


class Launcher:
    """``launch.launch(["train", mode, flag], 2)`` in a subprocess, with stand-in children."""

    def __init__(self, tmp_path: Path, mode: str, grace_s: float = 30.0) -> None:
        child = tmp_path / "child.py"
        child.write_text(CHILD)
        self.flag = tmp_path / "interrupted"
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(child), str(grace_s), str(GRACE_S)]
            + [mode, str(self.flag), str(SAVE_S)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines = []
        for line in self.process.stdout:  # until both children are up
            self.lines.append(line)
            if sum("ready" in seen for seen in self.lines) == 2:
                break
        self.children = [
            int(pid)
            for pid in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            .read_text()
            .split()
        ]
        assert len(self.children) == 2

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, "".join(self.lines) + out, err


def test_ctrl_c_is_forwarded_and_the_children_save_before_the_launch_ends(tmp_path):
    run = Launcher(tmp_path, "save")
    run.process.send_signal(signal.SIGINT)  # the launcher alone, as a terminal's Ctrl-C now is
    code, out, err = run.finish()
    assert code == 130
    assert "[0] saved" in out and "[1] saved" in out
    assert "Traceback" not in err
    assert "interrupted" in err and "jaxconv launch -n 2 -- train" in err


def test_the_children_are_not_in_the_launchers_process_group(tmp_path):
    """A terminal's Ctrl-C reaches the launcher only; it forwards one SIGINT to each child
    (a second one would stop a child at once, mid-save)."""
    run = Launcher(tmp_path, "save")
    assert {os.getpgid(child) for child in run.children}.isdisjoint({os.getpgid(run.process.pid)})
    run.process.send_signal(signal.SIGINT)
    assert run.finish()[0] == 130


def test_a_child_interrupted_alone_gives_its_peers_time_to_save(tmp_path):
    run = Launcher(tmp_path, "follow")
    os.kill(run.children[1], signal.SIGINT)  # the other one stops as the training agrees
    code, out, err = run.finish()
    assert code == 130
    assert "[0] saved" in out and "[1] saved" in out
    assert "the others were stopped" not in err


def test_a_killed_process_fails_the_launch_and_stops_the_others(tmp_path):
    """The others ignore SIGTERM, as joined JAX processes do: they are killed after GRACE_S
    (launch.GRACE_S, shortened here)."""
    run = Launcher(tmp_path, "joined")
    start = time.monotonic()
    os.kill(run.children[1], signal.SIGKILL)
    code, _, err = run.finish()
    assert time.monotonic() - start < GRACE_S + 5
    assert code == 128 + signal.SIGKILL
    assert "process 1 exited with status 137; the others were stopped" in err
    assert not any(Path(f"/proc/{child}").exists() for child in run.children)


def test_a_child_that_ignores_ctrl_c_is_stopped_after_the_grace_period(tmp_path):
    run = Launcher(tmp_path, "stuck", grace_s=0.5)
    start = time.monotonic()
    run.process.send_signal(signal.SIGINT)
    code, _, err = run.finish()
    assert time.monotonic() - start < 0.5 + GRACE_S + 5
    assert code == 130
    assert "did not stop within 0.5 s" in err
    assert not any(Path(f"/proc/{child}").exists() for child in run.children)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_the_launcher_stopped_by_a_signal_stops_its_children(tmp_path, signum):
    run = Launcher(tmp_path, "stuck")
    run.process.send_signal(signum)
    code, _, _ = run.finish()
    assert code == 128 + signum
    assert not any(Path(f"/proc/{child}").exists() for child in run.children)


def _devices(environments: list[dict[str, str]], name: str) -> list[str | None]:
    return [env.get(name) for env in environments]


def test_on_a_gpu_host_each_child_gets_its_own_gpus():
    envs = launch.child_environments(2, 2, environ={"PATH": "/bin"}, gpus=4, port=1234)
    assert _devices(envs, "JAX_LOCAL_DEVICE_IDS") == ["0,1", "2,3"]
    assert _devices(envs, "JAX_PROCESS_ID") == ["0", "1"]
    assert _devices(envs, "JAX_NUM_PROCESSES") == ["2", "2"]
    assert _devices(envs, "JAX_COORDINATOR_ADDRESS") == ["127.0.0.1:1234"] * 2
    assert _devices(envs, "PATH") == ["/bin", "/bin"]


def test_the_gpus_are_counted_from_cuda_visible_devices_or_the_driver(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "3,5,7"}  # JAX's ids count the visible GPUs from 0
    envs = launch.child_environments(3, 1, environ=environ)
    assert _devices(envs, "JAX_LOCAL_DEVICE_IDS") == ["0", "1", "2"]
    assert _devices(envs, "CUDA_VISIBLE_DEVICES") == ["3,5,7"] * 3
    driver = tmp_path / "gpus"
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        (driver / bus).mkdir(parents=True)
    assert launch.visible_gpus({}, driver) == 2
    assert launch.visible_gpus({"JAX_PLATFORMS": "cpu"}, driver) == 0
    assert launch.visible_gpus({"JAX_PLATFORMS": "cuda,cpu"}, driver) == 2
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver) == 0
    assert launch.visible_gpus({}, tmp_path / "no_driver") == 0


def test_on_the_cpu_each_child_gets_its_cpu_devices_and_no_gpu_ids():
    envs = launch.child_environments(2, 3, environ={"JAX_PLATFORMS": "cpu"}, gpus=0)
    assert _devices(envs, "JAX_NUM_CPU_DEVICES") == ["3", "3"]
    assert _devices(envs, "JAX_LOCAL_DEVICE_IDS") == [None, None]


def test_more_gpus_than_the_host_has_are_refused():
    message = r"4 GPUs \(2 processes x 2\) are needed but 3 are visible"
    with pytest.raises(ValueError, match=message):
        launch.child_environments(2, 2, environ={}, gpus=3)


def test_a_failed_start_stops_the_children_already_started(monkeypatch):
    started, real_popen = [], subprocess.Popen

    def popen(argv, **kwargs):
        if started:
            raise OSError(24, "Too many open files")
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        started.append(real_popen(sleeper, stdout=subprocess.PIPE, text=True))
        return started[-1]

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    with pytest.raises(OSError) as info:
        launch.launch(["train"], 2)
    assert started[0].poll() is not None  # stopped and waited for
    assert "cannot start process 1" in str(info.value)


@pytest.mark.parametrize("command", ["embed", "generate", "interpolate", "--help"])
def test_launch_refuses_a_command_that_is_not_training(command, capsys):
    from jaxconv.cli import main

    with pytest.raises(SystemExit) as info:
        main(["launch", "-n", "2", "--", command, "--workdir", "runs/x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert f"'{command}'" in err and "train, segment" in err
