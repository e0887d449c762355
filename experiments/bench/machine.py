"""The machine's part in a result: thread counts, load, other processes' CPU time.

Equal threads: :func:`pin_cpus` restricts the process to ``N`` CPUs before JAX
starts, since XLA:CPU sizes its intra-op (Eigen) thread pool by the CPUs the process
may run on; torch is given ``torch.set_num_threads(N)``. Both libraries' threads then
share the same ``N`` CPUs. :func:`xla_intra_op_threads` counts XLA's pool afterwards,
so that the report states the count found, not the one intended. Imports neither
JAX nor torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

DEFAULT_THREADS = 2
# float32 matmul GFLOP/s of this project's 2-core machine on a quiet day: 330-480
# (shared/notes/performance-findings.md); under PEAK_FRACTION of it, a warning.
EXPECTED_PEAK_GFLOPS = 330.0
PEAK_FRACTION = 0.8
LOAD_PER_CORE = 0.5  # load average per core above which the machine is busy
OTHERS_CPU_SHARE = 0.15  # of the machine's CPU time, taken by other processes
XLA_POOL_THREAD = "tf_XLAEigen"  # the name of XLA:CPU's intra-op pool threads (jaxlib 0.10)
XLA_TRACE_FLAG = "--xla_cpu_enable_xprof_traceme"  # XLA_FLAGS, before JAX starts: op traces
# environment variables that change the figures: XLA's flags, and how memory is allocated
# (glibc serves a buffer over 32 MB with fresh pages on every call, ~1.5 us a page fault
# here: an elementwise op writing 32 MB took 13 ms against 1 ms for 16 MB)
ENVIRONMENT = ("XLA_FLAGS", "GLIBC_TUNABLES", "LD_PRELOAD")
ENVIRONMENT_PREFIXES = ("MALLOC_",)


def pin_cpus(threads: int) -> list[int]:
    """Restricts this process to the ``threads`` lowest-numbered CPUs it may use, and
    returns them. Must run before JAX starts (XLA reads the CPU set once)."""
    if "jax" in sys.modules:
        raise RuntimeError("pin_cpus must run before jax is imported")
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(allowed):
        raise ValueError(f"threads must be in 1..{len(allowed)} (the CPUs allowed), got {threads}")
    cpus = allowed[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def environment() -> dict[str, str]:
    """The variables of ``ENVIRONMENT`` (and ``MALLOC_*``) that are set, with their values."""
    return {
        name: value
        for name, value in os.environ.items()
        if name in ENVIRONMENT or name.startswith(ENVIRONMENT_PREFIXES)
    }


def xla_intra_op_threads() -> int | None:
    """Threads of XLA:CPU's intra-op pool in this process (after JAX has run a
    computation), counted by name in ``/proc/self/task``; None without ``/proc``."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    count = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().strip() == XLA_POOL_THREAD
        except OSError:  # the thread ended meanwhile
            continue
    return count


def cpu_seconds() -> tuple[float, float] | None:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``: all but idle
    and iowait) and this process's CPU seconds; None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = map(
                int, f.readline().split()[1:9]
            )
    except OSError:
        return None
    own = os.times()
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def machine_state(
    load_start: Sequence[float],
    load_end: Sequence[float],
    cpu_start: tuple[float, float] | None,
    cpu_end: tuple[float, float] | None,
    seconds: float,
    peaks: Sequence[float],
    expected_peak: float,
    threads: int = DEFAULT_THREADS,
) -> dict:
    """The run's load figures and a warning for each one out of bounds (``threads``:
    the busy threads the run itself adds to the load)."""
    cores = os.cpu_count() or 1
    warnings = []
    start_limit = LOAD_PER_CORE * cores
    if load_start[0] > start_limit:
        warnings.append(
            f"1-min load average {load_start[0]:.2f} at the start, over {start_limit:.2f} "
            f"({LOAD_PER_CORE} per core): other work was running"
        )
    end_limit = min(threads, cores) + LOAD_PER_CORE * cores
    if load_end[0] > end_limit:
        warnings.append(
            f"1-min load average {load_end[0]:.2f} at the end, over {end_limit:.2f} (this "
            f"run's {min(threads, cores)} busy threads + {LOAD_PER_CORE} per core)"
        )
    others = None
    if cpu_start and cpu_end:
        busy, own = (end - start for start, end in zip(cpu_start, cpu_end))
        others = max(0.0, busy - own) / (seconds * cores)
        if others > OTHERS_CPU_SHARE:
            warnings.append(
                f"other processes took {others:.0%} of the {cores} cores' time during the run "
                f"(over {OTHERS_CPU_SHARE:.0%})"
            )
    for when, peak in zip(("start", "end"), peaks):
        if peak < PEAK_FRACTION * expected_peak:
            warnings.append(
                f"matmul peak {peak:.0f} GFLOP/s at the {when}, under {PEAK_FRACTION:.0%} of "
                f"the expected {expected_peak:.0f}"
            )
    return {
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in load_end],
        "others_cpu_share": others,
        "expected_peak_gflops": expected_peak,
        "warnings": warnings,
    }
