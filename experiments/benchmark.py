"""jaxconv against PyTorch on the CPU: transposed convs, and the autoencoder's train step.

    python experiments/benchmark.py [--quick] [--parts ops,suite,train] [--profile]
                                    [--cases NAME,...] [--threads N] [--rounds N] [--min-round-s S]
                                    [--expected-peak GFLOPS] [--out benchmark.json]

Everything is measured in one run, side by side (``experiments/bench/timing.py``):
each round runs every contender for at least ``--min-round-s`` (repeated calls, one
sync per block), in up to 10 cycles that each run one block of every contender in a
shuffled order (paired rounds of interleaved blocks); a figure is the median over
``--rounds`` rounds with its min-max, and a ratio is the median of the per-round
ratios. jaxconv's contender in every group is also
timed under a second name (an A/A pair): the report prints each A/A ratio, and a run
with one outside 0.97-1.03 says it cannot resolve 5 % and that its figures are
unreliable. torch and XLA get the same ``--threads`` (default 2): the process is
pinned to that many CPUs before JAX starts (XLA sizes its intra-op pool by them) and
``torch.set_num_threads`` is set; the report states the counts found. The table is
printed and written as JSON (``--out``).

1. ``ops``, the project's own cases (``bench.suite.OP_CASES``): ``jaxconv.ops.
   conv_transpose`` with ``impl="auto"``, ``"fast"`` and ``"reference"``
   (``flax.linen.ConvTranspose``) against ``torch.nn.ConvTranspose{1,2,3}d``, forward
   and forward+backward (the loss ``<y, r>`` for a fixed random ``r``, and its
   gradients in the input, kernel and bias). JAX figures are of the jit-compiled
   function; compile times are listed. Implementations that are one compiled program
   (on the CPU ``auto`` resolves to ``fast``) are timed once.
2. ``suite``: ``bench.suite.SUITE``, transposed convs of published architectures, each
   with its source, measured the same way, and the kernel gradient alone (jaxconv
   auto) against one XLA matmul of the same FLOPs. Then, per implementation and mode,
   the geometric mean and the worst of torch's time over jaxconv's, and the cases that
   miss a criterion (``bench.report``). The reference is not timed where its conv
   over the stride-dilated input exceeds ``bench.suite.REFERENCE_MAX_GMAC``.
   ``--cases`` keeps the layers whose names contain one of its comma-separated parts
   (to time a few again, with more ``--rounds``).
3. ``train``, the lecture autoencoder (:class:`jaxconv.models.Autoencoder`), one train
   step (forward, MSE, backward, Adam): images/s at batch 64, 256 and 1024 for jaxconv
   (the jit-compiled step), torch eager, and ``torch.compile`` where it runs; the
   model's FLOPs per trained image, the achieved GFLOP/s, and their fraction of a
   float32 matmul peak measured in the same run.
4. ``--profile``: where jaxconv's time goes, per XLA op, for the train step and each
   op-level forward+backward (``bench.profile``).

The machine's state is part of the result (``bench.machine``): the load average
before and after, the share of the CPU time other processes took, and the matmul
peak at the start and the end against ``--expected-peak``; each one out of bounds
prints a ``WARNING`` line. So are the environment variables that change the figures
(``XLA_FLAGS``, ``GLIBC_TUNABLES``, ``LD_PRELOAD``, ``MALLOC_*``): under glibc's
defaults a buffer over 32 MB is fresh pages on every call, in torch and XLA alike
(``docs/troubleshooting.md``). ``--quick`` is a smoke run (fewer cases, 3 short rounds,
the suite at batch 1), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine, timing  # noqa: E402  (no JAX yet: the CPUs are pinned first)

PARTS = ("ops", "suite", "train")
ROUNDS, QUICK_ROUNDS = 15, 3
QUICK_MIN_ROUND_S = 0.01


def parse_parts(text: str) -> tuple[str, ...]:
    """``--parts``: a comma-separated subset of ``PARTS``."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are a comma-separated subset of {PARTS}")
    return parts


def positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` over 0."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def add_timing_arguments(parser: argparse.ArgumentParser, rounds_per: str) -> None:
    """``--threads``, ``--rounds`` (per ``rounds_per``) and ``--min-round-s``; the last two
    None unless given (the caller's defaults: ``ROUNDS`` and ``timing.MIN_ROUND_S``, or
    the ``QUICK_`` ones)."""
    parser.add_argument(
        "--threads",
        type=positive(int),
        default=machine.DEFAULT_THREADS,
        help="CPUs for the process, and torch's threads (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=positive(int),
        default=None,
        help=f"rounds per {rounds_per} (default: {ROUNDS}; --quick: {QUICK_ROUNDS})",
    )
    parser.add_argument(
        "--min-round-s",
        type=positive(float),
        default=None,
        help=f"a round's length at least, seconds (default: {timing.MIN_ROUND_S}; --quick: "
        f"{QUICK_MIN_ROUND_S})",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument("--out", default="benchmark.json", help="where to write the JSON table")
    parser.add_argument("--profile", action="store_true", help="add per-XLA-op profiles")
    parser.add_argument(
        "--parts", type=parse_parts, default=PARTS, help="a subset of ops,suite,train (all)"
    )
    parser.add_argument(
        "--cases",
        default=None,
        help="suite layers whose names contain one of these comma-separated parts (all)",
    )
    add_timing_arguments(parser, "group of contenders")
    parser.add_argument(
        "--expected-peak",
        type=positive(float),
        default=machine.EXPECTED_PEAK_GFLOPS,
        help="float32 matmul GFLOP/s this machine reaches when quiet (default: %(default)s)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        cpus = machine.pin_cpus(args.threads)
    except ValueError as error:
        print(f"benchmark.py: --{error}", file=sys.stderr)
        sys.exit(2)
    if args.profile:  # XLA:CPU traces its ops only if told before it starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {machine.XLA_TRACE_FLAG}"
    # JAX starts here, on the pinned CPUs
    import jax
    import torch
    from bench import cases, report, suite

    from jaxconv import models

    try:
        suite_layers = suite.select(suite.SUITE, args.cases) if args.cases else suite.SUITE
    except ValueError as error:
        print(f"benchmark.py: --{error}", file=sys.stderr)
        sys.exit(2)

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_start, cpu_start = os.getloadavg(), machine.cpu_seconds()
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    min_round_s = args.min_round_s or (QUICK_MIN_ROUND_S if args.quick else timing.MIN_ROUND_S)
    peak_n, peak_rounds = (1024, 3) if args.quick else (2048, 7)
    result = {
        "meta": {
            "quick": args.quick,
            "parts": list(args.parts),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "rounds": rounds,
            "min_round_s": min_round_s,
            "environment": machine.environment(),
        },
        "peak": cases.matmul_peak(peak_n, peak_rounds),
        "model": cases.training_flops_per_image(models.AutoencoderConfig()),
    }
    result["meta"]["threads"] = {
        "requested": args.threads,
        "cpus": cpus,
        "torch": torch.get_num_threads(),
        "xla_intra_op": machine.xla_intra_op_threads(),  # JAX has run the peak's matmul
    }
    if "ops" in args.parts:
        layers = suite.OP_CASES[2:3] if args.quick else suite.OP_CASES
        result["ops"] = [
            cases.op_case(layer, rounds, min_round_s=min_round_s, profile=args.profile)
            for layer in layers
        ]
    if "suite" in args.parts:
        if args.quick:  # batch 1; without --cases, only QUICK_SUITE
            suite_layers = [
                s.with_batch(1) for s in suite_layers if args.cases or s.name in suite.QUICK_SUITE
            ]
        max_gmac = suite.QUICK_REFERENCE_MAX_GMAC if args.quick else suite.REFERENCE_MAX_GMAC
        result["suite"] = [
            cases.op_case(
                layer,
                rounds,
                min_round_s=min_round_s,
                profile=args.profile,
                kernel_grad=True,
                reference_max_gmac=max_gmac,
                lowerings=True,
            )
            for layer in suite_layers
        ]
        result["suite_summary"] = report.suite_summary(result["suite"])
    if "train" in args.parts:
        batches = suite.TRAIN_BATCHES[:1] if args.quick else suite.TRAIN_BATCHES
        result["train"] = [
            cases.train_case(
                batch, rounds, min_round_s, with_compile=not args.quick, profile=args.profile
            )
            for batch in batches
        ]
    result["peak_end"] = cases.matmul_peak(peak_n, peak_rounds)
    seconds = time.perf_counter() - start
    result["meta"]["seconds"] = seconds
    state = machine.machine_state(
        load_start,
        os.getloadavg(),
        cpu_start,
        machine.cpu_seconds(),
        seconds,
        [result["peak"]["peak_gflops"], result["peak_end"]["peak_gflops"]],
        args.expected_peak,
        threads=args.threads,
    )
    result["aa"] = report.aa_summary(result)
    state["warnings"] += report.run_warnings(result)
    result["meta"]["machine"] = state
    report.print_report(result)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
