"""The ``jaxconv`` command line (also ``python -m jaxconv``).

One module per command family, each adding its subparsers and the functions that run them:
:mod:`~jaxconv.cli.training_commands` (train, segment), :mod:`~jaxconv.cli.analysis_commands`
(interpolate, embed, generate) and :mod:`jaxconv.launch` (launch); :mod:`~jaxconv.cli.args`
holds what they share. Building the parser imports no JAX: each command imports what it needs
when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jaxconv.cli import analysis_commands, training_commands
from jaxconv.cli.args import Parser

# jaxlib 0.10.2 turns on XLA:CPU's YNN fusion, which computes a batched matrix product
# followed by a sum wrongly past 32768 rows (jax issue 39103) and can crash on rank-7 sums
# (jax issues 39257, 40412). jaxconv's own computations were checked to be unaffected, against
# float64 references; the commands run with the fusion off all the same (README, "When things
# go wrong"). XLA reads XLA_FLAGS once, when JAX starts its backend: main sets it first.
XLA_FLAGS_DEFAULT = "--xla_cpu_experimental_ynn_fusion_type="


def default_xla_flags() -> None:
    """Sets ``XLA_FLAGS`` to ``XLA_FLAGS_DEFAULT`` unless the user set it (even empty)."""
    os.environ.setdefault("XLA_FLAGS", XLA_FLAGS_DEFAULT)


def add_launch_parser(subparsers: argparse._SubParsersAction) -> None:
    """``jaxconv launch``: its flags and its run are :mod:`jaxconv.launch`'s."""
    from jaxconv import launch

    p = subparsers.add_parser(
        "launch",
        help="run a training command as several local processes (jax.distributed)",
        description="Start N local processes of one run, joined on a free loopback port; "
        "their output is prefixed with [process index]. Fails when any process fails. "
        "Example: jaxconv launch -n 2 -- train --epochs 2",
    )
    launch.add_arguments(p)
    p.set_defaults(run=launch.run, parser=p)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxconv`` parser: each subcommand's namespace holds ``run`` and its ``parser``."""
    parser = Parser(
        prog="jaxconv", description="PyTorch-exact transposed convolutions and an autoencoder."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    training_commands.add_train_parser(subparsers)
    training_commands.add_segment_parser(subparsers)
    analysis_commands.add_interpolate_parser(subparsers)
    analysis_commands.add_embed_parser(subparsers)
    analysis_commands.add_generate_parser(subparsers)
    add_launch_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the command of ``argv`` (default: ``sys.argv[1:]``); exits with its status."""
    default_xla_flags()  # before anything imports JAX
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        args.run(args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        parser.exit(130, "jaxconv: interrupted\n")
