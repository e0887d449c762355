"""``jaxconv launch -n N -- COMMAND ...``: N local processes of one run (also ``python -m
jaxconv.launch``).

Each process runs ``python -m jaxconv COMMAND ...`` with ``JAX_COORDINATOR_ADDRESS`` (a
free loopback port), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set, which the training
commands read (:func:`jaxconv.distributed.cluster`), and devices of its own: on a GPU host
``JAX_LOCAL_DEVICE_IDS`` (:func:`child_environments`), on the CPU ``JAX_NUM_CPU_DEVICES``.
Their output is forwarded line by line with a ``[i]`` prefix. When one process fails, the
others are stopped and the launch exits with its status; ``--timeout`` bounds the whole
run. Ctrl-C is forwarded to every process, which stop together after saving (exit status
130).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

GRACE_S = 5.0  # between SIGTERM and SIGKILL when stopping the others
# After Ctrl-C, how long the children get to stop at an agreed step and save
INTERRUPT_GRACE_S = 120.0
INTERRUPTED = 130  # a child's exit status after Ctrl-C (it saved its last finished epoch)
PROGRAM = (sys.executable, "-m", "jaxconv")  # what each child runs, before COMMAND
TRAINING_COMMANDS = ("train", "segment")  # the commands whose processes join one run
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU of the NVIDIA driver


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward(index: int, stream, out) -> None:
    for line in stream:
        out.write(f"[{index}] {line}")
        out.flush()


def _stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in processes:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def visible_gpus(environ: Mapping[str, str] = os.environ, driver: Path = NVIDIA_GPUS) -> int:
    """The GPUs JAX would use here: none when ``JAX_PLATFORMS`` leaves GPUs out, else the
    entries of ``CUDA_VISIBLE_DEVICES`` when it is set, else the GPUs the NVIDIA driver
    lists (one folder each in ``driver``)."""
    platforms = {name.strip() for name in environ.get("JAX_PLATFORMS", "").split(",")} - {""}
    if platforms and not platforms & {"cuda", "gpu"}:
        return 0
    if "CUDA_VISIBLE_DEVICES" in environ:
        return len([i for i in environ["CUDA_VISIBLE_DEVICES"].split(",") if i.strip()])
    return len(list(driver.iterdir())) if driver.is_dir() else 0


def child_environments(
    num_processes: int,
    devices_per_process: int,
    *,
    environ: Mapping[str, str] = os.environ,
    gpus: int | None = None,
    port: int | None = None,
) -> list[dict[str, str]]:
    """The environment of each child: ``environ`` and the ``JAX_*`` variables that join
    it to the others (coordinator on ``127.0.0.1:port``, a free port by default).

    Each child gets ``devices_per_process`` devices of its own. On the CPU:
    ``JAX_NUM_CPU_DEVICES``. With ``gpus`` GPUs (default: :func:`visible_gpus`), child
    ``i`` also gets ``JAX_LOCAL_DEVICE_IDS`` = ``i*d, ..., (i+1)*d - 1`` (``d`` =
    ``devices_per_process``), which ``jax.distributed.initialize`` reads: JAX's ids
    count the GPUs that ``CUDA_VISIBLE_DEVICES`` leaves visible, from 0. Raises
    ``ValueError`` when the GPUs are fewer than ``num_processes * d``.
    """
    gpus = visible_gpus(environ) if gpus is None else gpus
    needed = num_processes * devices_per_process
    if 0 < gpus < needed:
        raise ValueError(
            f"{needed} GPUs ({num_processes} processes x {devices_per_process}) are needed but "
            f"{gpus} are visible (CUDA_VISIBLE_DEVICES or the NVIDIA driver): lower "
            "num_processes or devices_per_process, or run on the CPU with JAX_PLATFORMS=cpu"
        )
    address = f"127.0.0.1:{free_port() if port is None else port}"
    environments = []
    for index in range(num_processes):
        env = {
            **environ,
            "JAX_COORDINATOR_ADDRESS": address,
            "JAX_NUM_PROCESSES": str(num_processes),
            "JAX_PROCESS_ID": str(index),
            "JAX_NUM_CPU_DEVICES": str(devices_per_process),
            "PYTHONUNBUFFERED": "1",
        }
        if gpus:
            first = index * devices_per_process
            ids = range(first, first + devices_per_process)
            env["JAX_LOCAL_DEVICE_IDS"] = ",".join(map(str, ids))
        environments.append(env)
    return environments


def _status(code: int) -> int:
    """An exit status as the shell gives it: killed by signal k (returncode -k) is 128 + k."""
    return code if code >= 0 else 128 - code


def _exit_on(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def launch(
    command: Sequence[str],
    num_processes: int,
    *,
    timeout: float | None = None,
    devices_per_process: int = 1,
) -> int:
    """Runs ``python -m jaxconv COMMAND`` as ``num_processes`` joined processes; returns the
    first non-zero exit status (0 if all succeed, 124 on ``timeout``).

    Each process gets ``devices_per_process`` devices of its own
    (:func:`child_environments`). ``COMMAND`` must be a training command
    (``TRAINING_COMMANDS``; ``ValueError`` otherwise). A process that cannot be started
    raises ``OSError`` once the ones started are stopped.

    The children run in their own process group, so a terminal's Ctrl-C reaches this
    launcher only: it forwards SIGINT to every child, which stop at one agreed step and
    save, and waits up to ``INTERRUPT_GRACE_S`` for them (another Ctrl-C is forwarded
    too: stop now). A child that exits 130 (interrupted) gets the same wait for its
    peers; any other failure stops the others at once. SIGTERM or SIGHUP to the
    launcher stops the children and exits ``128 + signal``.
    """
    if not command or command[0] not in TRAINING_COMMANDS:
        got = repr(command[0]) if command else "nothing"
        raise ValueError(
            f"launch runs a training command ({', '.join(TRAINING_COMMANDS)}), got {got}; "
            "the other commands run as one process"
        )
    environments = child_environments(num_processes, devices_per_process)
    processes: list[subprocess.Popen] = []
    threads = []
    interrupts = 0

    def on_interrupt(signum, frame) -> None:
        nonlocal interrupts
        interrupts += 1

    handlers = {signal.SIGINT: on_interrupt, signal.SIGTERM: _exit_on, signal.SIGHUP: _exit_on}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, h) for s, h in handlers.items()} if in_main_thread else {}
    status = 0
    try:
        for index, env in enumerate(environments):
            try:
                p = subprocess.Popen(
                    [*PROGRAM, *command],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # a terminal's signals go to the launcher alone
                )
            except OSError as e:  # the ones started are stopped below
                raise OSError(e.errno, f"cannot start process {index}: {e.strerror or e}") from e
            processes.append(p)
            thread = threading.Thread(
                target=_forward, args=(index, p.stdout, sys.stdout), daemon=True
            )
            thread.start()
            threads.append(thread)
        status = _supervise(processes, timeout, lambda: interrupts)
    finally:
        _stop(processes)
        for p, thread in zip(processes, threads):
            thread.join(timeout=GRACE_S)
            if not thread.is_alive():
                p.stdout.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status == INTERRUPTED:
        flags = f"-n {num_processes}"
        if devices_per_process != 1:
            flags += f" --devices-per-process {devices_per_process}"
        sys.stderr.write(
            f"jaxconv launch: interrupted; resume with: jaxconv launch {flags} -- "
            f"{' '.join(command)}\n"
        )
    return status


def _supervise(processes: list[subprocess.Popen], timeout: float | None, interrupts) -> int:
    """Waits for ``processes`` as :func:`launch` says; returns the launch's exit status."""
    now = time.monotonic()
    deadline = None if timeout is None else now + timeout
    stop_by = None  # when the children stopping after a Ctrl-C must be done
    forwarded = 0
    while True:
        now = time.monotonic()
        while forwarded < interrupts():
            forwarded += 1
            for p in processes:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
        codes = [p.poll() for p in processes]
        statuses = [None if code is None else _status(code) for code in codes]
        failed = next((i for i, s in enumerate(statuses) if s not in (None, 0, INTERRUPTED)), None)
        if failed is not None:
            sys.stderr.write(
                f"jaxconv launch: error: process {failed} exited with status "
                f"{statuses[failed]}; the others were stopped\n"
            )
            return statuses[failed]
        if None not in statuses:
            return max(statuses)  # 0, or 130 when interrupted
        if stop_by is None and (forwarded or INTERRUPTED in statuses):
            stop_by = now + INTERRUPT_GRACE_S
        if stop_by is not None and now > stop_by:
            running = [str(i) for i, s in enumerate(statuses) if s is None]
            sys.stderr.write(
                f"jaxconv launch: error: process {', '.join(running)} did not stop within "
                f"{INTERRUPT_GRACE_S:g} s of Ctrl-C; stopped\n"
            )
            return INTERRUPTED
        if deadline is not None and now > deadline:
            sys.stderr.write(f"jaxconv launch: error: timed out after {timeout:g} s\n")
            return 124
        time.sleep(0.1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-n",
        "--num-processes",
        type=int,
        required=True,
        metavar="N",
        help="local processes to start, each with its own devices (--devices-per-process)",
    )
    p.add_argument(
        "--devices-per-process",
        type=int,
        default=1,
        metavar="D",
        help="devices of each process (default: 1). On a GPU host, process i gets the "
        "visible GPUs i*D to i*D+D-1 (counted from 0 among CUDA_VISIBLE_DEVICES) through "
        "JAX_LOCAL_DEVICE_IDS, so N x D GPUs are needed; on the CPU (no GPU, or "
        "JAX_PLATFORMS=cpu), D CPU devices each (JAX_NUM_CPU_DEVICES)",
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds before every process is stopped"
    )
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help=f"-- COMMAND [FLAGS]: a training command ({', '.join(TRAINING_COMMANDS)})",
    )


def run(args: argparse.Namespace) -> None:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        args.parser.error("give the command to run after --, e.g. -- train --epochs 2")
    if args.num_processes < 1:
        args.parser.error(f"--num-processes must be >= 1, got {args.num_processes}")
    if args.devices_per_process < 1:
        args.parser.error(f"--devices-per-process must be >= 1, got {args.devices_per_process}")
    if args.timeout is not None and not args.timeout > 0:
        args.parser.error(f"--timeout must be positive, got {args.timeout}")
    try:
        status = launch(
            command,
            args.num_processes,
            timeout=args.timeout,
            devices_per_process=args.devices_per_process,
        )
    except ValueError as e:
        args.parser.error(str(e))
    except OSError as e:
        sys.stderr.write(f"{args.parser.prog}: error: {e}\n")
        sys.exit(1)
    sys.exit(status)


if __name__ == "__main__":  # the same as ``jaxconv launch``, without importing the CLI
    os.execv(sys.executable, [*PROGRAM, "launch", *sys.argv[1:]])
