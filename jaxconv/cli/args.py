"""What every ``jaxconv`` command shares: the parser, argument types, the training flags,
joining the processes, loading a dataset and stopping with one line on stderr."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from jaxconv import configs


class Parser(argparse.ArgumentParser):
    """argparse, answering a bad command line with one line on stderr (exit status 2), and
    taking no abbreviated flag (``--epoch`` is not ``--epochs``). Subparsers are Parsers too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # the library names its arguments (batch_size); the user typed flags (--batch-size).
        # Only two-word names: a one-word name ("dataset") is also an ordinary word.
        for action in self._actions:
            flags = [f for f in action.option_strings if f.startswith("--")]
            if flags and "_" in action.dest:
                message = re.sub(rf"(?<![-\w]){action.dest}(?!\w)", flags[0], message)
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


positive_int = bounded_int(1)
non_negative_int = bounded_int(0)
seed = bounded_int(0, 2**32 - 1)  # jax.random.key folds larger seeds onto smaller ones
epochs = bounded_int(1, 1_000_000)


def positive_float(text: str) -> float:
    """An argparse type: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def add_training_flags(
    p: argparse.ArgumentParser,
    defaults: configs.Training,
    *,
    learning_rate_help: str = "Adam's",
) -> None:
    """The flags every training command shares: the run, its data and its checkpoints, with
    the command's ``defaults``."""
    p.add_argument(
        "--epochs", type=epochs, default=defaults.epochs, help="(default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--learning-rate",
        type=positive_float,
        default=defaults.learning_rate,
        help=f"{learning_rate_help} (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=seed,
        default=defaults.seed,
        help="init and data order (default: %(default)s)",
    )
    workdir = defaults.workdir.format(dataset="DATASET", upsampling="UPSAMPLING")
    p.add_argument("--workdir", type=Path, default=None, help=f"run directory (default: {workdir})")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=defaults.checkpoint_every,
        help="epochs (default: %(default)s)",
    )
    p.add_argument(
        "--keep",
        type=positive_int,
        default=defaults.keep,
        help="checkpoints kept (default: %(default)s)",
    )
    group = p.add_argument_group(
        "several processes",
        "one run over several JAX processes (hosts): the three flags (or the environment "
        "variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every "
        "process, or --distributed auto where JAX detects the cluster (SLURM, TPU pods, "
        "Open MPI, Kubernetes); `jaxconv launch` starts local processes",
    )
    group.add_argument("--coordinator-address", metavar="HOST:PORT", default=None)
    group.add_argument("--num-processes", type=positive_int, default=None)
    group.add_argument("--process-id", type=non_negative_int, default=None)
    group.add_argument("--distributed", choices=["auto"], default=None)


def join_processes(args: argparse.Namespace) -> None:
    """Joins the run's processes (``jax.distributed``) as the flags or environment say."""
    from jaxconv import distributed

    try:
        processes = distributed.cluster(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            auto=args.distributed == "auto",
        )
    except ValueError as e:
        args.parser.error(str(e))
    try:
        distributed.initialize(processes)
    except Exception as e:  # jax raises RuntimeError/XlaRuntimeError when the peers never come
        fail(args, f"joining the processes failed: {e}")


def load_data(args: argparse.Namespace, name: str, loader=None):
    """The dataset ``name`` from ``loader`` (default: ``input_pipeline.load_dataset``) and
    ``--data-dir``: exit 1 if it cannot be had here, 2 if it is unknown."""
    from jaxconv import input_pipeline

    try:
        return (loader or input_pipeline.load_dataset)(name, data_dir=args.data_dir)
    except input_pipeline.DatasetUnavailableError as e:
        fail(args, e)
    except ValueError as e:
        args.parser.error(f"--dataset: {e}")


def fail(args: argparse.Namespace, error: object, status: int = 1) -> NoReturn:
    """Stops with ``error`` as one line on stderr (exit status 1: a runtime failure)."""
    from jaxconv import distributed

    text = " ".join(str(error).split())
    sys.stderr.write(f"{args.parser.prog}: error: {text}\n")
    distributed.exit_now(status)
    args.parser.exit(status)
