"""jaxconv on one GPU against torch CUDA: parity, the transposed-conv suite, the
autoencoder's train step and the command line, into one JSON and a short log.

    PYTHONPATH=. python experiments/gpu_check.py --out DIR [--quick] [--runs-dir DIR]
                                                 [--batch-scale N]

Writes ``DIR/gpu_check.json`` (rewritten after every case: a killed run keeps what it
did) and ``DIR/gpu_check.log``. Each part has a time budget (``BUDGET_S``, plus what
the parts before it left unused, within ``TOTAL_S`` for the whole); a part that runs
out stops, and its status and the cases it left out say so. Float32 runs with TF32
off on both sides throughout (the timings too): ``torch.backends.cuda.matmul.allow_tf32
= torch.backends.cudnn.allow_tf32 = False`` and ``jax_default_matmul_precision=
"highest"``.

1. ``parity``: random layer configurations, transposed convs then convs (1-D/2-D/3-D,
   groups, dilation, output_padding, padding modes), those torch rejects skipped:
   the output and the input, kernel and bias gradients of every implementation
   against torch on the GPU, in float32 (max abs error at most ``TOLERANCE`` of the
   largest torch value, as the CPU tests) and bfloat16 (inputs, weights and
   cotangent rounded to bfloat16 on both sides, computed in bfloat16; 2^-5, four
   bfloat16 steps, and 2^-3 for the bias gradient: JAX's transpose of the bias
   broadcast sums in bfloat16 on the CPU, torch in float32, which cost up to 0.096
   over 80 configurations). The worst error of each quantity is recorded. The
   configurations, torch's layers and jaxconv's are :mod:`jaxconv.torch_reference`'s:
   one definition, which the CPU tests (``tests/test_parity_torch.py``) share.
2. ``suite``: the benchmark's suite (``experiments/bench/suite.py``), and ``EXTRA``
   (jax#31662's layer
   in its dtype, bfloat16, and at a larger volume), forward and forward+backward,
   for jaxconv's implementations, torch eager and ``torch.compile`` (while its
   compile time in this part stays under ``TORCH_COMPILE_CAP_S``). A round runs a
   case ``n`` times and synchronises once (``block_until_ready`` /
   ``torch.cuda.synchronize``), ``n`` such that it lasts ``MIN_ROUND_S`` (on the CPU
   the benchmark's ``bench.timing.MIN_ROUND_S``; ``--quick``: one call), with
   ``auto`` also timed as its own A/A pair (``bench.cases.op_case``).
3. ``train_step``: ``jaxconv.train.create_train_state`` and ``train_step`` against
   ``jaxconv.torch_models.torch_autoencoder`` with Adam, on random images: images/s
   at batch 256, 1024 and 4096, with docs/benchmark-cpu.json's CPU figures beside.
4. ``cli``: ``jaxconv train`` and ``jaxconv segment`` with their defaults (``--quick``:
   ``QUICK_CLI_FLAGS``, one short epoch each), as subprocesses under a time cap in
   fresh folders of ``--runs-dir`` (default ``DIR/runs``): wall time, exit status, the
   last epoch's metrics, the README's CPU figure beside (the embedded digits ship with
   jaxconv, so nothing is downloaded).

Without a GPU (``jax.default_backend() == "cpu"``) every part runs on the CPU, torch
CPU the reference (parity with at least 2 torch threads: see ``torch_cpu_threads``);
``--quick`` runs every part at tiny sizes, mostly imports and compiles; where JAX runs
on the CPU alone (``cpu_only``), this process and each command compile with XLA's
cheapest settings for their work (``QUICK_CPU_XLA_FLAGS``, added to the XLA flags they
would run with; the JSON's ``meta.xla_flags``): the U-Net's train step compiled in 13 s
CPU time with XLA's defaults, about 2 s with these.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

# The command-line runs share the GPU with this process: JAX must not take 75% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench import cases, machine, report, suite, timing  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import interop, ops, train  # noqa: E402
from jaxconv.cli import XLA_FLAGS_DEFAULT  # noqa: E402
from jaxconv.torch_reference import (  # noqa: E402
    PARITY_IMPLS,
    PARITY_RTOL,
    TORCH_ERRORS,
    channels_first,
    channels_last,
    conv_config,
    jaxconv_layer,
    kernel_to_torch,
    torch_layer,
    transpose_config,
)

TOTAL_S = 470  # the whole run, start-up included: under 8 minutes
BUDGET_S = {"parity": 120, "suite": 140, "train_step": 50, "cli": 130}
# --quick: tiny work (on a 2-core CPU about 27 s of CPU time: 10 here, 8 and 9 in the commands);
# its budgets only guard against a hang, so that every part finishes ("done")
QUICK_BUDGET_S = {"parity": 90, "suite": 90, "train_step": 90, "cli": 240}
QUICK_TOTAL_S = 480
TRAIN_CAP_S, QUICK_TRAIN_CAP_S = 100, 120  # jaxconv train's share of the cli budget
QUICK_CLI_FLAGS = {  # one epoch of a small run each
    "train": ["--epochs", "1", "--batch-size", "256"],
    # 2 steps of the smallest U-Net (two levels: one down, one transposed-conv up) on the
    # smallest scenes: 12 -> 7 s of CPU time, mostly tracing and compiling
    "segment": [
        *("--epochs", "1", "--num-scenes", "32", "8", "--image-size", "20", "20"),
        *("--widths", "8", "16"),
    ],
}
# --quick on the CPU: XLA's cheapest compiles for each process's work (this check's and
# each command's). LLVM at level 0 and XLA:CPU's older fusion emitters compile the U-Net's
# train step in about 2 s of CPU time instead of 13; jaxconv train runs its epoch of 4,500
# images 5 times slower at level 0 than at 1, which costs it more than the compiles save.
_NO_FUSION_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
QUICK_CPU_XLA_FLAGS = {
    "check": f"--xla_backend_optimization_level=0 {_NO_FUSION_EMITTERS}",
    "train": f"--xla_backend_optimization_level=1 {_NO_FUSION_EMITTERS}",
    "segment": f"--xla_backend_optimization_level=0 {_NO_FUSION_EMITTERS}",
}
PARITY_CONFIGS = {"transposed": 200, "conv": 100}
QUICK_PARITY_CONFIGS = {"transposed": 1, "conv": 1}
PARITY_THREADS = 8  # configurations compiled at once (XLA compiles outside the GIL)
TORCH_CPU_PARITY_THREADS = 2  # see torch_cpu_threads
DTYPES = ("float32", "bfloat16")
# max abs error over max(1, largest |torch value|), per dtype and quantity
TOLERANCE = {
    "float32": dict.fromkeys(("output", "input", "kernel", "bias"), PARITY_RTOL),
    "bfloat16": {"output": 2**-5, "input": 2**-5, "kernel": 2**-5, "bias": 2**-3},
}
MAX_FAILURES_LISTED = 50
ROUNDS, QUICK_ROUNDS = 5, 2
MIN_ROUND_S = 0.02  # on a GPU
TORCH_COMPILE_CAP_S = 60.0
TRAIN_BATCHES, QUICK_TRAIN_BATCHES = (256, 1024, 4096), (8,)
# steps per round: this over the batch, at least 2
TRAIN_IMAGES_PER_ROUND, QUICK_TRAIN_IMAGES_PER_ROUND = 16384, 64
ISSUE = "jax#31662 3-D k3 s2"
EXTRA = [
    dataclasses.replace(
        next(layer for layer in suite.SUITE if layer.name == ISSUE),
        name=f"{ISSUE} bfloat16",
        dtype="bfloat16",
        source="jax issue 31662's layer in its own dtype, bfloat16",
    ),
    suite.Layer(
        f"{ISSUE} 32^3x64->32",
        (1, 32, 32, 32, 64),
        32,
        3,
        2,
        1,
        1,
        source="jax issue 31662's layer type (ConvTranspose3d k3 s2 p1 op1) at a decoder's "
        "width: 32^3x64 -> 64^3x32; batch 1",
    ),
]
QUICK_SUITE = ("lecture decoder 2 (7->14)",)
DEPTHWISE_GROUPS = 16  # cases with this many groups or more run last
QUICK_EXTRA_INPUT = (1, 6, 6, 6, 8)


class Log:
    """Lines to stdout and to the log file, with the seconds since the start."""

    def __init__(self, path: Path) -> None:
        self.start = time.monotonic()
        self.file = path.open("w")

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f} s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


class Budget:
    """A deadline: ``left()`` seconds, ``expired()``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0


class Report:
    """The JSON, rewritten whole (through a temporary file) at every ``save``."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.data = {"meta": meta, "parts": {}}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


@dataclasses.dataclass
class Context:
    """What every part needs: sizes, the torch device, the log and the report."""

    quick: bool
    device: str
    runs_dir: Path
    batch_scale: int
    log: Log
    report: Report
    command_xla_flags: dict[str, str] = dataclasses.field(default_factory=dict)
    """XLA_FLAGS per command where they are not the environment's (--quick on the CPU)."""


# ----------------------------------------------------------------------------------
# 1. Parity


def _errors(got: dict, expected: dict) -> dict[str, float]:
    """Max abs error of each quantity over max(1, largest |expected|)."""
    errors = {}
    for name, want in expected.items():
        have = np.asarray(got[name], np.float32)
        if have.shape != want.shape:
            errors[name] = float("inf")
            continue
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        errors[name] = float(np.abs(have - want).max(initial=0.0)) / scale
    return errors


def torch_results(layer, x: torch.Tensor, r: torch.Tensor, dtype: str, device: str) -> dict:
    """torch's output and gradients of ``<layer(x), r>`` in ``dtype`` on ``device``, as
    float32 numpy arrays (channels first, torch's weight layout)."""
    layer = copy.deepcopy(layer).to(device, getattr(torch, dtype))
    x = x.to(device, getattr(torch, dtype)).detach().requires_grad_()
    y = layer(x)
    (y * r.to(device, y.dtype)).sum().backward()
    found = {"output": y, "input": x.grad, "kernel": layer.weight.grad}
    if layer.bias is not None:
        found["bias"] = layer.bias.grad
    return {name: t.detach().float().cpu().numpy() for name, t in found.items()}


@dataclasses.dataclass
class ParityCase:
    """One configuration torch accepts: jaxconv's inputs (channels-last) and torch's
    results per dtype (or why torch could not run that dtype)."""

    kind: str
    seed: int
    cfg: dict
    x: np.ndarray
    params: dict
    cotangent: np.ndarray
    expected: dict[str, dict | str]


def torch_case(kind: str, seed: int, device: str) -> ParityCase | None:
    """The configuration of ``seed`` run by torch, or None where torch rejects it."""
    transposed = kind == "transposed"
    cfg = (transpose_config if transposed else conv_config)(seed)
    torch.manual_seed(seed)
    x = torch.randn(cfg["batch"], cfg["in_channels"], *cfg["spatial"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            layer = torch_layer(cfg, transposed)
            with torch.no_grad():
                y_shape = layer(x).shape
        except TORCH_ERRORS:
            return None
    if 0 in y_shape:
        return None  # some torch kernels allow an empty output, others raise
    r = torch.randn(y_shape, generator=torch.Generator().manual_seed(seed))
    to_params = interop.conv_transpose_params if transposed else interop.conv_params
    expected: dict[str, dict | str] = {}
    for dtype in DTYPES:
        try:
            expected[dtype] = torch_results(layer, x, r, dtype, device)
        except TORCH_ERRORS as error:  # e.g. a bfloat16 kernel the device lacks
            expected[dtype] = f"torch: {type(error).__name__}: {str(error)[:120]}"
    params = to_params(layer.weight, layer.bias, cfg["groups"])
    return ParityCase(kind, seed, cfg, channels_last(x), params, channels_last(r), expected)


class ParityRunner:
    """One jit per configuration: every implementation, float32 and bfloat16.

    On the CPU, LLVM's optimisation is off as in the CPU tests; on a GPU, autotuning
    (correctness does not depend on it), unless XLA refuses the option. Thread-safe:
    configurations compile in parallel.
    """

    def __init__(self) -> None:
        cpu = jax.default_backend() == "cpu"
        self.options = (
            {"xla_backend_optimization_level": 0} if cpu else {"xla_gpu_autotune_level": 0}
        )
        self.options_refused: str | None = None

    def errors(self, case: ParityCase) -> dict:
        """``{"dtype impl": {quantity: error}}``, ``{"dtype": "torch: ..."}`` where torch
        could not run that dtype."""
        transposed = case.kind == "transposed"
        layers = {impl: jaxconv_layer(case.cfg, transposed, impl) for impl in PARITY_IMPLS}

        def forward_and_vjp(x, params, cotangent):
            results = {}
            for dtype in DTYPES:
                cast = functools.partial(jax.tree.map, lambda a, dtype=dtype: a.astype(dtype))
                for impl, layer in layers.items():
                    y, vjp = jax.vjp(
                        lambda x, p, layer=layer: layer.apply({"params": p}, x),
                        *cast((x, params)),
                    )
                    dx, dparams = vjp(cast(cotangent))
                    found = {"output": y, "input": dx, "kernel": dparams["kernel"]}
                    if "bias" in dparams:
                        found["bias"] = dparams["bias"]
                    results[(dtype, impl)] = found
            return results

        args = jax.tree.map(jnp.asarray, (case.x, case.params, case.cotangent))
        lowered = jax.jit(forward_and_vjp).lower(*args)
        try:
            compiled = lowered.compile(self.options) if self.options else lowered.compile()
        except Exception as error:  # an XLA without the option: compile without it
            self.options_refused = f"{type(error).__name__}: {str(error)[:200]}"
            self.options = {}
            compiled = lowered.compile()
        errors: dict = {}
        for (dtype, impl), found in compiled(*args).items():
            expected = case.expected[dtype]
            if isinstance(expected, str):
                errors[dtype] = expected
                continue
            as_torch = {
                "output": channels_first(found["output"].astype(jnp.float32)),
                "input": channels_first(found["input"].astype(jnp.float32)),
                "kernel": kernel_to_torch(found["kernel"].astype(jnp.float32)),
            }
            if "bias" in found:
                as_torch["bias"] = np.asarray(found["bias"], np.float32)
            errors[f"{dtype} {impl}"] = _errors(as_torch, expected)
        return errors


@contextlib.contextmanager
def torch_cpu_threads(device: str) -> Iterator[None]:
    """torch with at least ``TORCH_CPU_PARITY_THREADS`` threads on the CPU, restored
    after: torch 2.13.0's bfloat16 conv3d is wrong on one CPU thread (stride 4,
    dilation 2 on a (1, 3, 13, 9, 5) input: off by 13.9 on outputs of about 1; right
    on two)."""
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(max(before, TORCH_CPU_PARITY_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parity_part(ctx: Context, part: dict, budget: Budget) -> None:
    wanted = QUICK_PARITY_CONFIGS if ctx.quick else PARITY_CONFIGS
    runner = ParityRunner()
    threads = max(1, min(PARITY_THREADS, os.cpu_count() or 1))
    part.update(
        tolerance=TOLERANCE,
        implementations=list(PARITY_IMPLS),
        wanted=wanted,
        compile_threads=threads,
        checked={kind: 0 for kind in wanted},
        rejected_by_torch={kind: 0 for kind in wanted},
        torch_dtype_unsupported=0,
        worst={},
        failures=[],
        failure_count=0,
    )
    pending: collections.deque = collections.deque()

    def collect() -> None:
        case, future = pending.popleft()
        record_errors(part, case.kind, case.seed, future.result())
        part["checked"][case.kind] += 1
        if sum(part["checked"].values()) % 25 == 0:
            ctx.log(f"parity: {part['checked']} checked, {part['failure_count']} failures")
            ctx.report.save()

    # torch here, one configuration after the other; jaxconv's compiles in the pool
    with torch_cpu_threads(ctx.device), concurrent.futures.ThreadPoolExecutor(threads) as pool:
        part["torch_threads"] = torch.get_num_threads()
        for kind, count in wanted.items():
            seed, submitted = 0, 0
            while submitted < count and not budget.expired():
                case = torch_case(kind, seed, ctx.device)
                seed += 1
                if case is None:
                    part["rejected_by_torch"][kind] += 1
                    continue
                pending.append((case, pool.submit(runner.errors, case)))
                submitted += 1
                while len(pending) > 2 * threads:
                    collect()
        while pending:
            collect()
    if part["checked"] != wanted:
        part["out_of_budget"] = f"stopped after {part['checked']} configurations of {wanted}"
    part["xla_option_refused"] = runner.options_refused
    part["passed"] = part["failure_count"] == 0 and part["checked"] == wanted
    for name, worst in sorted(part["worst"].items()):
        ctx.log(
            f"parity: worst {name} error {worst['error']:.2e} ({worst['kind']} {worst['seed']})"
        )


def record_errors(part: dict, kind: str, seed: int, errors: dict) -> None:
    """Keeps the worst error of each dtype, implementation and quantity, and the failures."""
    for key, quantities in errors.items():
        if isinstance(quantities, str):
            part["torch_dtype_unsupported"] += 1
            continue
        dtype = key.split()[0]
        for quantity, error in quantities.items():
            name = f"{key} {quantity}"
            if error > part["worst"].get(name, {"error": -1.0})["error"]:
                part["worst"][name] = {"error": error, "kind": kind, "seed": seed}
            if not error <= TOLERANCE[dtype][quantity]:  # NaN fails too
                part["failure_count"] += 1
                if len(part["failures"]) < MAX_FAILURES_LISTED:
                    part["failures"].append(
                        {"kind": kind, "seed": seed, "what": name, "error": error}
                    )


# ----------------------------------------------------------------------------------
# 2. The suite


def suite_layers(quick: bool, batch_scale: int) -> list[suite.Layer]:
    if quick:
        # one of each kind: an EXTRA layer (3-D, bfloat16) and a suite layer (2-D, float32)
        tiny = [dataclasses.replace(EXTRA[0], input=QUICK_EXTRA_INPUT)]
        return tiny + [layer.with_batch(1) for layer in suite.SUITE if layer.name in QUICK_SUITE]
    layers = [layer.with_batch(layer.input[0] * batch_scale) for layer in EXTRA + suite.SUITE]
    # depthwise last: torch's CPU backward of a depthwise layer takes seconds
    return sorted(layers, key=lambda layer: layer.groups >= DEPTHWISE_GROUPS)


def suite_part(ctx: Context, part: dict, budget: Budget) -> None:
    layers = suite_layers(ctx.quick, ctx.batch_scale)
    gpu = ctx.device != "cpu"
    part.update(
        batch_scale=ctx.batch_scale,
        rounds=QUICK_ROUNDS if ctx.quick else ROUNDS,
        min_round_s=MIN_ROUND_S if gpu else 0.0 if ctx.quick else timing.MIN_ROUND_S,
        torch_compile_cap_s=TORCH_COMPILE_CAP_S,
        cases=[],
    )
    cpu_reference_max_gmac = (
        suite.QUICK_REFERENCE_MAX_GMAC if ctx.quick else suite.REFERENCE_MAX_GMAC
    )
    compile_spent = 0.0
    for i, layer in enumerate(layers):
        if budget.expired():
            part["out_of_budget"] = {"not run": [left.name for left in layers[i:]]}
            break
        use_compile = not ctx.quick and compile_spent < TORCH_COMPILE_CAP_S
        case = cases.op_case(
            layer,
            part["rounds"],
            device=ctx.device,
            min_round_s=part["min_round_s"],
            reference_max_gmac=None if gpu else cpu_reference_max_gmac,
            torch_compile=use_compile,
        )
        if not use_compile:
            case["torch.compile"] = (
                "not run: --quick" if ctx.quick else f"not run: {compile_spent:.0f} s spent"
            )
        compile_spent += sum(
            s for name, s in case["compile_s"].items() if name.startswith("torch.compile")
        )
        part["cases"].append(case)
        ms = case["forward+backward"]["ms"]
        ctx.log(
            f"suite: {layer.name}: forward+backward ms "
            + ", ".join(f"{name} {s['median']:.3f}" for name, s in ms.items())
        )
        ctx.report.save()
    if part["cases"]:
        part["summary"] = report.suite_summary(part["cases"])
        for mode in cases.MODES:
            for impl, s in part["summary"][mode]["torch_over"].items():
                ctx.log(
                    f"suite: {mode} torch/{impl} geometric mean {s['geomean']:.2f}, worst "
                    f"{s['worst']:.2f} ({s['worst_case']})"
                )


# ----------------------------------------------------------------------------------
# 3. The train step


def cpu_train_figures() -> dict[int, dict]:
    """images/s per batch of docs/benchmark-cpu.json's train step, if that file is there."""
    path = ROOT / "docs" / "benchmark-cpu.json"
    if not path.exists():
        return {}
    train_cases = json.loads(path.read_text()).get("train", [])
    return {
        case["batch"]: {
            "source": "docs/benchmark-cpu.json",
            **{name: s["median"] for name, s in case["images_per_s"].items()},
        }
        for case in train_cases
    }


def train_step_case(batch: int, rounds: int, images_per_round: int, device: str) -> dict:
    """jaxconv's jit-compiled train step and torch's, in images/s, paired rounds."""
    steps = max(2, images_per_round // batch)
    config = train.TrainConfig(batch_size=batch)
    state = [train.create_train_state(config)]
    images = {"image": jax.random.uniform(jax.random.key(1), (batch, *config.model.image_shape))}
    start = time.perf_counter()
    step = train.train_step.lower(state[0], images).compile()
    compile_s = time.perf_counter() - start

    def jax_steps() -> None:
        for _ in range(steps):
            state[0], loss = step(state[0], images)
        loss.block_until_ready()

    torch_step = cases.torch_train_step(batch, compiled=False, device=device)
    sync = timing.cuda_sync if device != "cpu" else timing.no_sync

    def torch_steps() -> None:
        for _ in range(steps):
            loss = torch_step()
        sync(loss)

    contenders = {"jaxconv": jax_steps, "torch eager": torch_steps}
    for fn in contenders.values():
        fn()  # warm-up
    times = timing.paired_rounds(contenders, rounds)
    per_image = {name: [t / (steps * batch) for t in ts] for name, ts in times.items()}
    return {
        "batch": batch,
        "steps_per_round": steps,
        "jaxconv_impl": ops.resolve_impl("auto"),
        "compile_s": compile_s,
        "images_per_s": {
            name: timing.summary([1 / t for t in ts]) for name, ts in per_image.items()
        },
        "jaxconv_over_torch": timing.ratios(per_image["torch eager"], per_image["jaxconv"]),
    }


def train_step_part(ctx: Context, part: dict, budget: Budget) -> None:
    batches = QUICK_TRAIN_BATCHES if ctx.quick else TRAIN_BATCHES
    cpu = cpu_train_figures()
    part["cases"] = []
    for i, batch in enumerate(batches):
        if budget.expired():
            part["out_of_budget"] = {"batches not run": list(batches[i:])}
            break
        case = train_step_case(
            batch,
            QUICK_ROUNDS if ctx.quick else ROUNDS,
            QUICK_TRAIN_IMAGES_PER_ROUND if ctx.quick else TRAIN_IMAGES_PER_ROUND,
            ctx.device,
        )
        case["cpu_figures"] = cpu.get(batch, "none at this batch in docs/benchmark-cpu.json")
        part["cases"].append(case)
        ips = case["images_per_s"]
        ctx.log(
            f"train step, batch {batch}: "
            + ", ".join(f"{name} {s['median']:.0f} img/s" for name, s in ips.items())
        )
        ctx.report.save()


# ----------------------------------------------------------------------------------
# 4. The command line


def readme_figure(pattern: str) -> dict | str:
    """The README's first match of ``pattern`` (its group 1 a number), or why none."""
    path = ROOT / "README.md"
    match = re.search(pattern, path.read_text()) if path.exists() else None
    if not match:
        return f"no match of {pattern!r} in README.md"
    return {"source": "README.md", "text": match.group(0), "value": float(match.group(1))}


def run_command(args: list[str], runs_dir: Path, cap_s: float, env: dict) -> dict:
    """``python -m jaxconv ARGS --workdir NEW`` under ``cap_s``: status, time, metrics."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{args[0]}-", dir=runs_dir))
    command = [sys.executable, "-m", "jaxconv", *args, "--workdir", str(workdir)]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=cap_s
        )
        status = "ok" if done.returncode == 0 else f"failed: exit status {done.returncode}"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        status = f"timed out after {cap_s:.0f} s"
        output = "".join(
            s.decode(errors="replace") if isinstance(s, bytes) else s or ""
            for s in (stopped.stdout, stopped.stderr)
        )
    metrics_path = workdir / "metrics.jsonl"
    metrics = (
        [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        if metrics_path.exists()
        else []
    )
    return {
        "command": " ".join(command[1:]),
        "status": status,
        "wall_s": time.perf_counter() - start,
        "cap_s": cap_s,
        "workdir": str(workdir),
        "epochs_done": len(metrics),
        "last_metrics": metrics[-1] if metrics else None,
        "output_tail": output[-1500:],
    }


def cli_part(ctx: Context, part: dict, budget: Budget) -> None:
    ctx.runs_dir.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    base_env = {**os.environ, "PYTHONPATH": pythonpath}
    train_cap = QUICK_TRAIN_CAP_S if ctx.quick else TRAIN_CAP_S
    figures = {
        "train": {
            "test_mse": readme_figure(r"test MSE\W*([0-9]+\.[0-9]+)"),
            "wall_s": "not recorded in README.md or docs/",
        },
        "segment": {"miou": readme_figure(r"mIoU\W*([0-9]+\.[0-9]+)")},
    }
    for command in ("train", "segment"):
        if budget.left() < 10:
            part[command] = {"status": f"not run: {budget.left():.0f} s of the budget left"}
        else:
            cap = min(train_cap, budget.left()) if command == "train" else budget.left()
            flags = QUICK_CLI_FLAGS[command] if ctx.quick else []
            env = dict(base_env)
            if command in ctx.command_xla_flags:
                env["XLA_FLAGS"] = ctx.command_xla_flags[command]
            part[command] = run_command([command, *flags], ctx.runs_dir, cap, env)
        part[command]["cpu_figures"] = figures[command]
        ctx.log(f"jaxconv {command}: {part[command]['status']}")
        ctx.report.save()


# ----------------------------------------------------------------------------------
# The run


def run_part(
    ctx: Context, name: str, budget_s: float, total: Budget, fn: Callable[..., None]
) -> float:
    """``fn(ctx, part, budget)`` with its status, time and any error recorded in the JSON;
    returns the seconds it took."""
    budget = Budget(max(0.0, min(budget_s, total.left())))
    part = ctx.report.data["parts"][name] = {"status": "running", "budget_s": budget.seconds}
    ctx.log(f"{name}: start, {budget.seconds:.0f} s budget")
    ctx.report.save()
    start = time.perf_counter()
    try:
        fn(ctx, part, budget)
        part["status"] = "out of budget" if "out_of_budget" in part else "done"
    except Exception as error:  # one broken part must not lose the others
        part["status"] = "error"
        part["error"] = "".join(traceback.format_exception(error))[-3000:]
    part["seconds"] = time.perf_counter() - start
    ctx.log(f"{name}: {part['status']} in {part['seconds']:.0f} s")
    ctx.report.save()
    return part["seconds"]


def cpu_only() -> bool:
    """Whether JAX will compute on the CPU alone, known before its backends start (when XLA
    reads ``XLA_FLAGS``): ``JAX_PLATFORMS`` names only ``cpu``, or no accelerator is
    installed (no JAX plugin, no ``libtpu``)."""
    platforms = jax.config.jax_platforms
    if platforms:
        return {name.strip() for name in platforms.split(",")} == {"cpu"}
    return not (
        importlib.metadata.entry_points(group="jax_plugins")
        or importlib.util.find_spec("jax_plugins")
        or importlib.util.find_spec("libtpu")
    )


def quick_cpu_xla_flags() -> dict[str, str]:
    """``XLA_FLAGS`` of each process of a --quick run on the CPU: the flags it would run with
    (the environment's; a command's default where it is unset) and ``QUICK_CPU_XLA_FLAGS``."""
    env = os.environ.get("XLA_FLAGS")
    base = {
        "check": env or "",
        **dict.fromkeys(QUICK_CLI_FLAGS, XLA_FLAGS_DEFAULT if env is None else env),
    }
    return {name: f"{flags} {QUICK_CPU_XLA_FLAGS[name]}".strip() for name, flags in base.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and the log")
    parser.add_argument("--quick", action="store_true", help="every part at tiny sizes")
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="where the CLI runs go (default: OUT/runs)"
    )
    parser.add_argument(
        "--batch-scale", type=int, default=1, help="suite batch sizes times this (default: 1)"
    )
    args = parser.parse_args()
    total = Budget(QUICK_TOTAL_S if args.quick else TOTAL_S)
    args.out.mkdir(parents=True, exist_ok=True)
    xla_flags = quick_cpu_xla_flags() if args.quick and cpu_only() else {}
    if xla_flags:  # before JAX starts its backend, at the first computation below
        os.environ["XLA_FLAGS"] = xla_flags["check"]

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    jax.config.update("jax_default_matmul_precision", "highest")
    gpu = jax.default_backend() != "cpu" and torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    if not gpu:  # a busy machine stalls torch's 2 threads in OpenMP waits (up to 17x)
        torch.set_num_threads(1 if args.quick else machine.DEFAULT_THREADS)
    budgets = QUICK_BUDGET_S if args.quick else BUDGET_S
    meta = {
        "quick": args.quick,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "torch_cpu_threads": torch.get_num_threads(),
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "jaxconv": str(Path(jaxconv.__file__).parent),
        "auto_impl": ops.resolve_impl("auto"),
        "precision": {
            "torch.backends.cuda.matmul.allow_tf32": False,
            "torch.backends.cudnn.allow_tf32": False,
            "jax_default_matmul_precision": "highest",
        },
        "missing_packages": [
            name for name in ("tensorflow_datasets",) if not importlib.util.find_spec(name)
        ],
        "budgets_s": budgets,
        "total_budget_s": total.seconds,
        "xla_flags": xla_flags or "the environment's (and each command's default)",
    }
    ctx = Context(
        quick=args.quick,
        device=device,
        runs_dir=args.runs_dir or args.out / "runs",
        batch_scale=args.batch_scale,
        log=Log(args.out / "gpu_check.log"),
        report=Report(args.out / "gpu_check.json", meta),
        command_xla_flags={name: flags for name, flags in xla_flags.items() if name != "check"},
    )
    ctx.log(f"jax {jax.__version__} on {meta['jax_devices']}, torch on {meta['torch_device']}")
    parts = {
        "parity": parity_part,
        "suite": suite_part,
        "train_step": train_step_part,
        "cli": cli_part,
    }
    unused = 0.0  # what earlier parts left of their budgets goes to the next one
    for name, fn in parts.items():
        budget_s = budgets[name] + unused
        unused = max(0.0, budget_s - run_part(ctx, name, budget_s, total, fn))
    ctx.report.data["meta"]["seconds"] = total.seconds - total.left()
    ctx.report.save()
    ctx.log(f"wrote {ctx.report.path}")


if __name__ == "__main__":
    main()
