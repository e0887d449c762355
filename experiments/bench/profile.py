"""Where a compiled JAX function's time goes, per XLA op (``--profile``).

XLA:CPU traces its ops only if ``bench.machine.XLA_TRACE_FLAG`` is in ``XLA_FLAGS``
before JAX starts. XLA:CPU runs independent ops concurrently and
some library calls asynchronously, so the shares are indicative, not a partition.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax


def xla_op_profile(compiled: jax.stages.Compiled, args: tuple, repeats: int, top: int = 10) -> dict:
    """The ``top`` XLA ops of ``compiled(*args)`` by traced time per call (over ``repeats``
    calls): each op's ms, share, output shape and the JAX operation it came from."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(repeats):
                out = compiled(*args)
            jax.block_until_ready(out)
        trace = json.load(gzip.open(next(Path(directory).rglob("*perfetto_trace.json.gz"))))
    hlo = compiled.as_text()
    instructions = dict(re.findall(r"^\s*(?:ROOT )?%(\S+) = (.*)$", hlo, re.M))
    totals: collections.Counter = collections.Counter()
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    for event in events:
        if event.get("ph") == "X" and event["name"] in instructions:
            totals[event["name"]] += event["dur"] / 1e3 / repeats
    step_ms = sum(totals.values())
    ops = []
    for name, ms in totals.most_common(top):
        line = instructions[name]
        source = re.search(r'op_name="([^"]*)"', line)
        ops.append(
            {
                "op": name,
                "ms": ms,
                "share": ms / step_ms,
                "shape": line.split(" ")[0],
                "from": source.group(1).split("/", 1)[-1] if source else "",
            }
        )
    return {"traced_ms": step_ms, "top": ops}
