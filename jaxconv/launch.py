"""``jaxconv launch -n N -- COMMAND ...``: N local processes of one run (also ``python -m
jaxconv.launch``).

Each process runs ``python -m jaxconv COMMAND ...`` with ``JAX_COORDINATOR_ADDRESS`` (a
free loopback port), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set, which the training
commands read (:func:`jaxconv.distributed.cluster`). Their output is forwarded line by line
with a ``[i]`` prefix. When one process fails, the others are stopped and the launch exits
with its status; ``--timeout`` bounds the whole run.
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
from collections.abc import Sequence

GRACE_S = 5.0  # between SIGTERM and SIGKILL when stopping the others


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


def launch(
    command: Sequence[str],
    num_processes: int,
    *,
    timeout: float | None = None,
    devices_per_process: int = 1,
) -> int:
    """Runs ``python -m jaxconv COMMAND`` as ``num_processes`` joined processes; returns the
    first non-zero exit status (0 if all succeed, 124 on ``timeout``).

    On the CPU each process gets ``devices_per_process`` devices (``JAX_NUM_CPU_DEVICES``).
    """
    address = f"127.0.0.1:{free_port()}"
    processes, threads = [], []
    for index in range(num_processes):
        env = {
            **os.environ,
            "JAX_COORDINATOR_ADDRESS": address,
            "JAX_NUM_PROCESSES": str(num_processes),
            "JAX_PROCESS_ID": str(index),
            "JAX_NUM_CPU_DEVICES": str(devices_per_process),
            "PYTHONUNBUFFERED": "1",
        }
        p = subprocess.Popen(
            [sys.executable, "-m", "jaxconv", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(p)
        thread = threading.Thread(target=_forward, args=(index, p.stdout, sys.stdout), daemon=True)
        thread.start()
        threads.append(thread)

    deadline = None if timeout is None else time.monotonic() + timeout
    status, failed = 0, None
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:  # killed by signal k: returncode -k, in the shell 128 + k
                status = codes[failed] if codes[failed] > 0 else 128 - codes[failed]
                break
            if all(code == 0 for code in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                sys.stderr.write(f"jaxconv launch: error: timed out after {timeout:g} s\n")
                status = 124
                break
            time.sleep(0.1)
    finally:
        _stop(processes)
        for thread in threads:
            thread.join(timeout=GRACE_S)
    if failed is not None:
        sys.stderr.write(
            f"jaxconv launch: error: process {failed} exited with status {status}; "
            "the others were stopped\n"
        )
    return status


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-n",
        "--num-processes",
        type=int,
        required=True,
        help="local processes to start (each with one CPU device unless --devices-per-process)",
    )
    p.add_argument(
        "--devices-per-process", type=int, default=1, help="CPU devices each (default: 1)"
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds before every process is stopped"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [FLAGS]")


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
    sys.exit(
        launch(
            command,
            args.num_processes,
            timeout=args.timeout,
            devices_per_process=args.devices_per_process,
        )
    )


if __name__ == "__main__":
    from jaxconv.cli import main

    main(["launch", *sys.argv[1:]])
