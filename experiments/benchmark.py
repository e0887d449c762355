"""jaxconv against PyTorch on the CPU: transposed convs, and the autoencoder's train step.

    python experiments/benchmark.py [--quick] [--out benchmark.json]

Everything is measured in one run, side by side: each round runs every contender
once, in a rotating order (paired, interleaved rounds), and a figure is the median
over the rounds with its min-max. Ratios are taken within each round, then the
median. torch runs with 2 threads (``torch.set_num_threads(2)``); JAX uses the
machine's cores. The table is printed and written as JSON (``--out``).

1. Op level: ``jaxconv.ops.conv_transpose`` with ``impl="auto"`` and
   ``impl="reference"`` (``flax.linen.ConvTranspose``) against
   ``torch.nn.ConvTranspose{2,3}d``, forward and forward+backward (the loss
   ``<y, r>`` for a fixed random ``r``, and its gradients in the input, kernel and
   bias). JAX figures are of the jit-compiled function; compile times are listed.
   A contender whose single run takes over ``SLOW_S`` seconds is timed in
   ``SLOW_ROUNDS`` rounds only (the JSON records each figure's round count).
2. The lecture autoencoder (:class:`jaxconv.models.Autoencoder`), one train step
   (forward, MSE, backward, Adam): images/s at batch 64, 256 and 1024 for jaxconv
   (the jit-compiled step), torch eager, and ``torch.compile`` where it runs; the
   model's FLOPs per trained image, the achieved GFLOP/s, and their fraction of a
   float32 matmul peak measured in the same run (the best of JAX's and torch's
   2048x2048 matmul).
3. ``--profile``: where jaxconv's time goes, per XLA op (the op, its output shape
   and the JAX operation it came from), for the train step and each op-level
   forward+backward. XLA:CPU runs independent ops concurrently and some library
   calls asynchronously, so the shares are indicative, not a partition.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if "--profile" in sys.argv:  # XLA:CPU traces its ops only if told before it starts
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme"

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from jaxconv import models, ops, shapes, torch_models

THREADS = 2
SLOW_S = 2.0
SLOW_ROUNDS = 2

# name, input (batch, *spatial, channels), out channels, kernel, stride, padding,
# output_padding, groups
OP_CASES = [
    ("decoder 14->28", (256, 14, 14, 32), 16, 3, 2, 1, 1, 1),
    ("k4 s2 64x64", (32, 64, 64, 64), 64, 4, 2, 1, 0, 1),
    ("decoder 1->7 (matmul)", (256, 1, 1, 64), 32, 7, 1, 0, 0, 1),
    ("3-D 8->16", (16, 8, 8, 8, 32), 16, 3, 2, 1, 1, 1),
    ("grouped g=4", (64, 28, 28, 64), 64, 3, 2, 1, 1, 4),
]
TRAIN_BATCHES = (64, 256, 1024)


# ----------------------------------------------------------------------------------
# Timing


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_rounds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, one list entry per round.

    Every round calls every function once, starting from a different one each round.
    A function whose warm-up call took over ``SLOW_S`` s runs in the first
    ``SLOW_ROUNDS`` rounds only.
    """
    names = list(fns)
    slow = {name for name in names if _timed(fns[name]) > SLOW_S}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name in slow and len(times[name]) >= SLOW_ROUNDS:
                continue
            times[name].append(_timed(fns[name]))
    return times


def summary(values: list[float], scale: float = 1.0) -> dict:
    v = [x * scale for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}


def ratios(numerator: list[float], denominator: list[float]) -> dict:
    """Per-round ratios (the rounds both ran), summarised."""
    return summary([a / b for a, b in zip(numerator, denominator)])


def xla_op_profile(compiled, args: tuple, repeats: int, top: int = 10) -> dict:
    """The ``top`` XLA ops of a compiled function by traced time (``--profile``)."""
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


# ----------------------------------------------------------------------------------
# Peak


def matmul_peak(n: int, rounds: int) -> dict:
    """GFLOP/s of an n x n float32 matmul: jax.jit and torch (2 threads)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    t = torch.from_numpy(np.asarray(a).copy())
    times = paired_rounds(
        {"jax": lambda: matmul(a).block_until_ready(), "torch": lambda: t @ t}, rounds
    )
    flops = 2 * n**3
    gflops = {name: flops / min(ts) / 1e9 for name, ts in times.items()}
    return {"n": n, "gflops_best_round": gflops, "peak_gflops": max(gflops.values())}


# ----------------------------------------------------------------------------------
# Op level


def op_case(
    name, x_shape, out_channels, k, stride, padding, output_padding, groups, rounds, profile
):
    ndim = len(x_shape) - 2
    in_channels = x_shape[-1]
    torch_cls = {2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[ndim]
    layer = torch_cls(in_channels, out_channels, k, stride, padding, output_padding, groups=groups)
    x_torch = torch.randn(x_shape[0], in_channels, *x_shape[1:-1], requires_grad=True)
    out_torch = layer(x_torch)
    r_torch = torch.randn_like(out_torch)

    kernel = jnp.asarray(layer.weight.detach().numpy().transpose(*range(2, ndim + 2), 1, 0))
    bias = jnp.asarray(layer.bias.detach().numpy())
    x = jnp.asarray(np.moveaxis(x_torch.detach().numpy(), 1, -1))
    r = jnp.asarray(np.moveaxis(r_torch.numpy(), 1, -1))
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups)

    fns, compile_s = {}, {}
    for impl in ("auto", "reference"):

        def forward(x, kernel, bias, impl=impl):
            return ops.conv_transpose(x, kernel, bias, impl=impl, **kwargs)

        def forward_backward(x, kernel, bias, r, forward=forward):
            return jax.value_and_grad(lambda *a: jnp.vdot(forward(*a), r), argnums=(0, 1, 2))(
                x, kernel, bias
            )

        for mode, fn, args in (
            ("forward", forward, (x, kernel, bias)),
            ("forward+backward", forward_backward, (x, kernel, bias, r)),
        ):
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            compile_s[f"{impl} {mode}"] = time.perf_counter() - start
            fns[(impl, mode)] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
            if profile and impl == "auto" and mode == "forward+backward":
                profiled = compiled, args

    def torch_forward():
        with torch.no_grad():
            layer(x_torch)

    def torch_forward_backward():
        x_torch.grad = None
        layer.zero_grad()
        (layer(x_torch) * r_torch).sum().backward()

    fns[("torch", "forward")] = torch_forward
    fns[("torch", "forward+backward")] = torch_forward_backward

    result = {
        "case": name,
        "input": list(x_shape),
        "out_channels": out_channels,
        "kernel": k,
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "groups": groups,
        "auto_impl": ops.resolve_impl("auto"),
        "compile_s": compile_s,
    }
    for mode in ("forward", "forward+backward"):
        contenders = {impl: fns[(impl, mode)] for impl in ("auto", "reference", "torch")}
        times = paired_rounds(contenders, rounds)
        result[mode] = {
            "ms": {impl: summary(ts, 1e3) for impl, ts in times.items()},
            "torch_over_auto": ratios(times["torch"], times["auto"]),
            "reference_over_auto": ratios(times["reference"], times["auto"]),
        }
    if profile:
        result["profile"] = xla_op_profile(*profiled, repeats=3)
    return result


# ----------------------------------------------------------------------------------
# The train step


def training_flops_per_image(config: models.AutoencoderConfig) -> dict:
    """Useful multiply-adds of the model, and the FLOPs of one trained image.

    A layer's forward MACs: output pixels x k^2 x in x out for a conv, input pixels
    x k^2 x in x out for a transposed conv (no multiplications by inserted zeros).
    Training runs the forward, the weight gradient (the same MACs) and the input
    gradient (the same MACs, except for the first layer, whose input needs none):
    ``2 * (3 * forward - first layer)`` FLOPs per image.
    """
    channels = config.image_shape[-1]
    sizes = models.encoder_sizes(config)  # the input of each strided conv, then the last
    widths = [channels, *config.channels]
    k2 = models.KERNEL**2
    encoder = [
        math.prod(shapes.conv_output_shape(size, models.KERNEL, models.STRIDE, models.PADDING))
        * k2
        * c_in
        * c_out
        for size, c_in, c_out in zip(sizes, widths, widths[1:])
    ]
    embedding = math.prod(sizes[-1]) * widths[-1] * config.embedding_dim  # one window
    decoder = [
        math.prod(size) * k2 * c_in * c_out  # input pixels: no multiplied zeros
        for size, c_in, c_out in zip(sizes[:0:-1], widths[:0:-1], widths[-2::-1])
    ]
    layers = [*encoder, embedding, embedding, *decoder]
    forward = sum(layers)
    return {
        "forward_macs": forward,
        "train_flops": 2 * (3 * forward - layers[0]),
        "layer_macs": layers,
    }


def jax_train_step(batch: int, donate: bool = True):
    """The jit-compiled step of jaxconv's autoencoder, its state, and its compile time."""
    config = models.AutoencoderConfig()
    model = models.Autoencoder(config)
    tx = optax.adam(1e-3)
    params = models.init_params(config, 0)
    opt_state = jax.jit(tx.init)(params)

    def step(params, opt_state, images):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, images) - images) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    images = jax.random.uniform(jax.random.key(1), (batch, *config.image_shape))
    start = time.perf_counter()
    donate_argnums = (0, 1) if donate else ()
    compiled = jax.jit(step, donate_argnums=donate_argnums).lower(params, opt_state, images)
    compiled = compiled.compile()
    return compiled, [params, opt_state], images, time.perf_counter() - start


def torch_train_step(batch: int, compiled: bool):
    model = torch_models.torch_autoencoder()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    forward = torch.compile(model) if compiled else model
    images = torch.rand(batch, 1, 28, 28)

    def step():
        optimizer.zero_grad()
        loss = torch.mean((forward(images) - images) ** 2)
        loss.backward()
        optimizer.step()
        return loss

    return step


def train_case(
    batch: int, rounds: int, steps_per_round: int, with_compile: bool, profile: bool
) -> dict:
    compiled, state, images, jax_compile_s = jax_train_step(batch)

    def jax_steps():
        for _ in range(steps_per_round):
            state[0], state[1], loss = compiled(state[0], state[1], images)
        loss.block_until_ready()

    contenders = {"jaxconv": jax_steps}
    torch_step = torch_train_step(batch, compiled=False)
    contenders["torch eager"] = lambda: [torch_step() for _ in range(steps_per_round)]
    result = {
        "batch": batch,
        "steps_per_round": steps_per_round,
        "compile_s": {"jaxconv": jax_compile_s},
    }
    if with_compile:
        try:
            torch_compiled = torch_train_step(batch, compiled=True)
            result["compile_s"]["torch.compile (first step)"] = _timed(torch_compiled)
            contenders["torch.compile"] = lambda: [torch_compiled() for _ in range(steps_per_round)]
        except Exception as error:  # torch.compile needs a C++ toolchain
            result["torch.compile error"] = f"{type(error).__name__}: {str(error)[:200]}"
    for fn in contenders.values():
        fn()  # warm-up
    times = paired_rounds(contenders, rounds)
    per_image = {name: [t / (steps_per_round * batch) for t in ts] for name, ts in times.items()}
    result["images_per_s"] = {name: summary([1 / t for t in ts]) for name, ts in per_image.items()}
    result["jaxconv_over_torch_eager"] = ratios(per_image["torch eager"], per_image["jaxconv"])
    if "torch.compile" in per_image:
        result["jaxconv_over_torch_compile"] = ratios(
            per_image["torch.compile"], per_image["jaxconv"]
        )
    if profile:  # the same step, without donated buffers, so that it can be rerun
        compiled, state, images, _ = jax_train_step(batch, donate=False)
        result["profile"] = xla_op_profile(compiled, (*state, images), repeats=steps_per_round)
    return result


# ----------------------------------------------------------------------------------
# Report


def _fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def print_report(report: dict) -> None:
    meta = report["meta"]
    print(
        f"\njax {meta['jax']}, torch {meta['torch']}, {meta['cpu_count']} cores, "
        f"load average {meta['load_average_start']} -> {meta['load_average_end']}, "
        f"{meta['seconds']:.0f} s"
    )
    peak = report["peak"]
    print(
        f"matmul peak ({peak['n']}^3 float32): "
        + ", ".join(f"{k} {v:.0f}" for k, v in peak["gflops_best_round"].items())
        + " GFLOP/s"
    )
    print("\nOp level, ms: median [min-max]; ratio = torch time / jaxconv auto time")
    columns = ("jaxconv auto", 22), ("jaxconv reference", 24), ("torch", 22), ("torch/auto", 18)
    print(f"{'case':24s} {'mode':17s} " + " ".join(f"{name:>{width}s}" for name, width in columns))
    for case in report["ops"]:
        for mode in ("forward", "forward+backward"):
            m = case[mode]["ms"]
            print(
                f"{case['case']:24s} {mode:17s} {_fmt(m['auto']):>22s} {_fmt(m['reference']):>24s} "
                f"{_fmt(m['torch']):>22s} {_fmt(case[mode]['torch_over_auto']):>18s}"
            )
    flops = report["model"]["train_flops"]
    print(
        f"\nTrain step (forward + MSE + backward + Adam), images/s: median [min-max]; "
        f"{flops / 1e6:.2f} MFLOP per trained image; ratio = jaxconv / torch eager"
    )
    for case in report["train"]:
        ips = case["images_per_s"]
        line = f"batch {case['batch']:5d}: " + "  ".join(
            f"{name} {_fmt(s, 0)}" for name, s in ips.items()
        )
        line += f"  ratio {_fmt(case['jaxconv_over_torch_eager'])}"
        if "jaxconv_over_torch_compile" in case:
            line += f" (vs torch.compile {_fmt(case['jaxconv_over_torch_compile'])})"
        print(line)
        gf = "  ".join(
            f"{name} {s['median'] * flops / 1e9:.1f} GFLOP/s "
            f"({100 * s['median'] * flops / 1e9 / peak['peak_gflops']:.0f}% of peak)"
            for name, s in ips.items()
        )
        compile_s = ", ".join(f"{k} {v:.2f} s" for k, v in case["compile_s"].items())
        print(f"             {gf}; compile: {compile_s}")
        if "torch.compile error" in case:
            print(f"             torch.compile: {case['torch.compile error']}")
    for title, cases in (
        ("op level, forward+backward", report["ops"]),
        ("train step", report["train"]),
    ):
        for case in cases:
            if "profile" in case:
                label = case.get("case") or f"batch {case['batch']}"
                print_profile(f"{title}, {label}", case["profile"])


def print_profile(title: str, profile: dict) -> None:
    print(f"\nProfile, jaxconv {title}: {profile['traced_ms']:.1f} ms of traced XLA ops per call")
    for op in profile["top"]:
        print(
            f"  {op['ms']:8.2f} ms {100 * op['share']:4.0f}%  {op['shape']:28s} {op['from'][:90]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer rounds")
    parser.add_argument("--out", default="benchmark.json", help="where to write the JSON table")
    parser.add_argument("--profile", action="store_true", help="add per-XLA-op profiles")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    load_start = os.getloadavg()
    op_rounds, train_rounds = (2, 2) if args.quick else (7, 7)
    report = {
        "meta": {
            "quick": args.quick,
            "jax": jax.__version__,
            "torch": torch.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "peak": matmul_peak(1024 if args.quick else 2048, 3 if args.quick else 7),
        "model": training_flops_per_image(models.AutoencoderConfig()),
    }
    cases = OP_CASES[:1] + OP_CASES[2:3] if args.quick else OP_CASES
    report["ops"] = [op_case(*case, rounds=op_rounds, profile=args.profile) for case in cases]
    report["train"] = [
        train_case(
            batch,
            train_rounds,
            steps_per_round=max(1, (1024 if args.quick else 4096) // batch),
            with_compile=not args.quick,
            profile=args.profile,
        )
        for batch in (TRAIN_BATCHES[:2] if args.quick else TRAIN_BATCHES)
    ]
    report["meta"].update(
        seconds=time.perf_counter() - start,
        load_average_start=[round(v, 2) for v in load_start],
        load_average_end=[round(v, 2) for v in os.getloadavg()],
    )
    print_report(report)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
