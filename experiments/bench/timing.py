"""The timing harness: paired rounds of interleaved blocks of repeated calls, and an
A/A check.

A contender is a block (``calls`` calls of one computation, then one sync) that a round
runs ``blocks`` times, so that a round lasts at least ``min_round_s`` (``MIN_ROUND_S``).
A round is as many cycles as the most blocks of any contender, and every cycle runs one
block of each contender due in it, in an order of its own (seeded shuffles: in a plain
rotation each contender always followed the same one, and the A/A pair's first name,
timed right after its twin, came out 4-10 % faster in forward on 2026-12-01). A
contender's time in a round is its fastest block's time over its calls; a figure is the
median over the rounds (with min and max), and a ratio between two contenders is the
median of their per-round ratios. The A/A pair is one contender timed under a second
name in the same rounds: its ratio measures the run's own noise, and a run whose A/A
ratio is outside ``AA_LIMITS`` cannot resolve a 5 % difference. A group whose A/A ratio
is outside is timed again, in another order (:func:`time_checked`).

Why blocks: on the 2-core VMs of this project a program's speed drifts by 10-15 % over
seconds (a 5 ms call's log-time autocorrelation 0.68 at the next call, 0.41 ten calls
later, 0.19 at one second; means of 100 calls still spread 13 %, 2026-12-03). Rounds of
one 100 ms run per contender compared runs up to half a second apart; blocks of ~10 ms
compare them within milliseconds. A/A medians of 15 rounds, 8-12 repeats each: Mask
R-CNN's forward 3 of 8 outside 0.97-1.03 in 100 ms runs, 0 of 8 in 10 blocks; lecture
decoder 3's forward 6 of 12, and 1 of 12 in 20 blocks (with 10 blocks, each after a
5 ms pause rather than only those after torch's, 5 of 8: the default of 10 is not
measured on it alone; the whole suite with 10: 18 of 78 groups outside, 27-40 before).

Why the fastest block: a block runs for milliseconds, and what slows one down (another
process, a page fault, the VM's neighbours) only ever adds time. The suite's 44 A/A
pairs (forward and forward+backward, 15 rounds, 2026-12-04), every block recorded, the
same blocks summarised two ways: a round's sum of blocks, A/A outside 0.97-1.03 in 9 of
44, root-mean-square deviation from 1 of 2.5 %; its fastest block, 2 of 44 and 1.2 %
(its median block 9 and 2.3 %; all blocks of all rounds paired by cycle, 5 and 2.2 %).
"""

from __future__ import annotations

import functools
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

MIN_ROUND_S = 0.1  # a round's length at least
BLOCKS = 10  # blocks a round at most (of MIN_ROUND_S / BLOCKS each at least)
SETTLE_S = 0.005  # an idle pause after a spinning contender's block (see paired_rounds)
MAX_CALLS = 100_000  # calls per round at most
SLOW_S = 2.0  # a contender whose warm-up call takes longer ...
SLOW_ROUNDS = 2  # ... runs in this many rounds only
AA_LIMITS = (0.97, 1.03)  # the A/A ratio of a run that can resolve 5 %
AA_TIMINGS = 3  # timings of a group at most, while its A/A ratio is outside AA_LIMITS
AA_SUFFIX = " (A/A)"


class Contender(NamedTuple):
    """``block`` runs ``calls`` calls of one computation and one sync; a round runs it
    ``blocks`` times. ``spins``: its threads keep the CPUs busy after it returns (torch's
    OpenMP threads), so the next block waits ``SETTLE_S``."""

    block: Callable[[], None]
    calls: int
    blocks: int = 1
    spins: bool = False

    @property
    def calls_per_round(self) -> int:
        return self.calls * self.blocks


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


def paired_rounds(
    contenders: dict[str, Contender | Callable[[], object]], rounds: int, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds each contender's fastest block took in each round (a plain function: one
    block of one call a round).

    A round is as many cycles as the most blocks of any contender; a contender of ``b``
    blocks runs in ``b`` of them, evenly spaced, and each cycle runs its contenders in
    an order shuffled afresh (by ``seed``), so that no contender always runs after the same
    one. A block after a spinning contender's block starts after an idle pause of
    ``SETTLE_S``: torch's OpenMP threads spin for milliseconds after its work, and a
    jaxconv run of ~0.1 s that followed torch took 6-10 % longer (medians of 41 pairs,
    Mask R-CNN's forward, 2026-12-03), 0.98-1.03x after a 5 or 20 ms pause. A contender
    whose warm-up block took over ``SLOW_S`` runs in the first ``SLOW_ROUNDS`` rounds only.
    """
    contenders = {
        name: c if isinstance(c, Contender) else Contender(c, 1) for name, c in contenders.items()
    }
    names = list(contenders)
    slow = {name for name in names if timed(contenders[name].block) > SLOW_S}
    cycles = max(c.blocks for c in contenders.values())
    runs_in = {
        name: {i * cycles // c.blocks for i in range(c.blocks)} for name, c in contenders.items()
    }
    schedule = [[name for name in names if cycle in runs_in[name]] for cycle in range(cycles)]
    times: dict[str, list[float]] = {name: [] for name in names}
    shuffles = random.Random(seed)
    after_spin = False
    for _ in range(rounds):
        fastest = {n: math.inf for n in names if n not in slow or len(times[n]) < SLOW_ROUNDS}
        for cycle in schedule:
            due = [name for name in cycle if name in fastest]
            for name in shuffles.sample(due, len(due)):
                if after_spin:
                    time.sleep(SETTLE_S)
                fastest[name] = min(fastest[name], timed(contenders[name].block))
                after_spin = contenders[name].spins
        for name, seconds in fastest.items():
            times[name].append(seconds)
    return times


def repeated(
    call: Callable[[], object],
    sync: Callable[[object], object],
    min_round_s: float,
    *,
    spins: bool = False,
) -> Contender:
    """A contender of ``n`` calls a round, in blocks of calls and one ``sync`` of the
    last result.

    ``n`` makes a round last ``min_round_s``: ``ceil(min_round_s / t)`` for ``t`` the
    median of three single calls after a warm-up call, at most ``MAX_CALLS``; 1 where
    ``min_round_s`` is 0 or the warm-up call and the call after it each last that long (a
    first call slowed once, by fresh pages or a busy machine, made run L's jax#31662
    kernel gradient one call a round: 12.4 ms, against 6.4-6.8 ms at 9-20 calls a round
    in runs J and K). The calls go in ``min(n, BLOCKS)`` blocks of ``ceil(n / blocks)``.
    Calls within a block are dispatched as in a training loop (on a GPU they overlap)
    and synchronised once.
    """

    def run(n: int) -> None:
        for _ in range(n):
            out = call()
        sync(out)

    n = 1
    # the warm-up call, then one more where it lasted a round
    if min_round_s > 0 and min(timed(lambda: run(1)) for _ in range(2)) < min_round_s:
        once = statistics.median(timed(lambda: run(1)) for _ in range(3))
        n = min(MAX_CALLS, max(1, math.ceil(min_round_s / max(once, 1e-9))))
    blocks = min(n, BLOCKS)
    calls = math.ceil(n / blocks)
    return Contender(functools.partial(run, calls), calls, blocks, spins)


def aa_name(name: str) -> str:
    """The second name of ``name``'s A/A pair."""
    return name + AA_SUFFIX


def time_contenders(
    contenders: dict[str, Contender], rounds: int, aa: str | None = None, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each contender, per round, in paired rounds.

    ``aa`` names a contender that is also timed as :func:`aa_name` ``(aa)``: the same
    blocks, in the same rounds and cycles, under a second name.
    """
    if aa is not None:
        contenders = {**contenders, aa_name(aa): contenders[aa]}
    times = paired_rounds(contenders, rounds, seed)
    return {name: [t / contenders[name].calls for t in ts] for name, ts in times.items()}


def aa_check(times: dict[str, list[float]], name: str) -> dict:
    """The A/A ratio of ``name`` (its time over its second name's, per round,
    summarised) and whether its median is within ``AA_LIMITS``."""
    ratio = ratios(times[name], times[aa_name(name)])
    low, high = AA_LIMITS
    return {"ratio": ratio, "within": low <= ratio["median"] <= high}


def time_checked(
    contenders: dict[str, Contender], rounds: int, aa: str
) -> tuple[dict[str, list[float]], dict]:
    """:func:`time_contenders` with the A/A pair ``aa``, and its :func:`aa_check`.

    A group whose A/A ratio is outside ``AA_LIMITS`` is timed again, ``AA_TIMINGS``
    times in all at most, and its last timing kept, as one reruns a figure before
    quoting it, in other orders (a timing's seed is its number); the check says how
    many timings it took (``timings``) and stays outside the limits where the last one
    was.
    """
    for timings in range(1, AA_TIMINGS + 1):
        times = time_contenders(contenders, rounds, aa, seed=timings - 1)
        check = aa_check(times, aa)
        if check["within"]:
            break
    return times, {**check, "timings": timings}


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
