"""The timing harness: paired, interleaved rounds of repeated calls, and an A/A check.

A contender is a round function (``n`` calls of one computation, then one sync) and
its ``n``, chosen so that a round lasts at least ``min_round_s`` (``MIN_ROUND_S``:
scheduling noise of a few ms per call averages out over ~100 ms). Every round runs
every contender once, in an order of its own (seeded shuffles: in a plain rotation
each contender always followed the same one, and the A/A pair's first name, timed
right after its twin, came out 4-10 % faster in forward on 2026-12-01); a figure is the
median over the rounds (with min and max), and a ratio between two contenders is the
median of their per-round ratios. The A/A pair is one contender timed under a second
name in the same rounds: its ratio measures the run's own noise, and a run whose A/A
ratio is outside ``AA_LIMITS`` cannot resolve a 5 % difference.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence

MIN_ROUND_S = 0.1  # a round's length at least
SETTLE_S = 0.02  # an idle pause before each round (see paired_rounds)
MAX_CALLS = 100_000  # calls per round at most
SLOW_S = 2.0  # a contender whose warm-up call takes longer ...
SLOW_ROUNDS = 2  # ... runs in this many rounds only
AA_LIMITS = (0.97, 1.03)  # the A/A ratio of a run that can resolve 5 %
AA_SUFFIX = " (A/A)"

Contender = tuple[Callable[[], None], int]  # (a round, calls per round)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def no_sync(_: object) -> None:
    """A sync for results that are ready when returned (torch on the CPU)."""


def cuda_sync(_: object) -> None:
    """Waits for torch's CUDA work."""
    import torch

    torch.cuda.synchronize()


def paired_rounds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, one list entry per round.

    Every round calls every function once, in an order shuffled afresh (seeded), so
    that no function always runs after the same one, and each call after an idle pause
    of ``SETTLE_S``: torch's OpenMP threads spin for milliseconds after its work, and a
    jaxconv round of ~0.1 s that followed a torch round took 6-10 % longer (medians of
    41 pairs, Mask R-CNN's forward, 2026-12-03), 0.98-1.03x after a 5 or 20 ms pause. A
    function whose warm-up call took over ``SLOW_S`` s runs in the first
    ``SLOW_ROUNDS`` rounds only.
    """
    names = list(fns)
    slow = {name for name in names if timed(fns[name]) > SLOW_S}
    times: dict[str, list[float]] = {name: [] for name in names}
    shuffles = random.Random(0)
    for _ in range(rounds):
        for name in shuffles.sample(names, len(names)):
            if name in slow and len(times[name]) >= SLOW_ROUNDS:
                continue
            time.sleep(SETTLE_S)
            times[name].append(timed(fns[name]))
    return times


def repeated(
    call: Callable[[], object], sync: Callable[[object], object], min_round_s: float
) -> Contender:
    """A round of ``n`` calls and one ``sync`` of the last result, and ``n``.

    ``n`` makes a round last ``min_round_s``: ``ceil(min_round_s / t)`` for ``t`` the
    median of three single calls after a warm-up call, at most ``MAX_CALLS``; 1 where
    ``min_round_s`` is 0 or the warm-up call alone lasts that long. Calls within a
    round are dispatched as in a training loop (on a GPU they overlap) and
    synchronised once.
    """

    def run(n: int) -> None:
        for _ in range(n):
            out = call()
        sync(out)

    n = 1
    if min_round_s > 0 and timed(lambda: run(1)) < min_round_s:  # the warm-up call
        once = statistics.median(timed(lambda: run(1)) for _ in range(3))
        n = min(MAX_CALLS, max(1, math.ceil(min_round_s / max(once, 1e-9))))
    return functools.partial(run, n), n


def aa_name(name: str) -> str:
    """The second name of ``name``'s A/A pair."""
    return name + AA_SUFFIX


def time_contenders(
    contenders: dict[str, Contender], rounds: int, aa: str | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each contender, per round, in paired rounds.

    ``aa`` names a contender that is also timed as :func:`aa_name` ``(aa)``: the same
    round function, in the same rounds, under a second name.
    """
    if aa is not None:
        contenders = {**contenders, aa_name(aa): contenders[aa]}
    times = paired_rounds({name: run for name, (run, _) in contenders.items()}, rounds)
    return {name: [t / contenders[name][1] for t in ts] for name, ts in times.items()}


def aa_check(times: dict[str, list[float]], name: str) -> dict:
    """The A/A ratio of ``name`` (its time over its second name's, per round,
    summarised) and whether its median is within ``AA_LIMITS``."""
    ratio = ratios(times[name], times[aa_name(name)])
    low, high = AA_LIMITS
    return {"ratio": ratio, "within": low <= ratio["median"] <= high}


def summary(values: Sequence[float], scale: float = 1.0) -> dict:
    """Median, min, max of ``values`` times ``scale``, and how many there are."""
    v = [x * scale for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """Per-round ratios (the rounds both ran), summarised."""
    return summary([a / b for a, b in zip(numerator, denominator)])


def geomean(values: Sequence[float]) -> float:
    """``exp(mean(log v))``."""
    return math.exp(statistics.fmean(math.log(v) for v in values))
