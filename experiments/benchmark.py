"""jaxconv against PyTorch on the CPU: transposed convs, and the autoencoder's train step.

    python experiments/benchmark.py [--quick] [--parts ops,suite,train] [--profile]
                                    [--expected-peak GFLOPS] [--out benchmark.json]

Everything is measured in one run, side by side: each round runs every contender
once, in a rotating order (paired, interleaved rounds), and a figure is the median
over the rounds with its min-max. Ratios are taken within each round, then the
median. torch runs with 2 threads (``torch.set_num_threads(2)``); JAX uses the
machine's cores. The table is printed and written as JSON (``--out``).

1. ``ops``, the project's own cases (``OP_CASES``): ``jaxconv.ops.conv_transpose``
   with ``impl="auto"``, ``"fast"`` and ``"reference"`` (``flax.linen.ConvTranspose``)
   against ``torch.nn.ConvTranspose{1,2,3}d``, forward and forward+backward (the loss
   ``<y, r>`` for a fixed random ``r``, and its gradients in the input, kernel and
   bias). JAX figures are of the jit-compiled function; compile times are listed.
   ``"auto"`` runs the program compiled for the implementation it resolves to
   (``"fast"`` on the CPU): two figures of one program, which show the run's noise.
   A contender whose single run takes over ``SLOW_S`` seconds is timed in
   ``SLOW_ROUNDS`` rounds only (the JSON records each figure's round count).
2. ``suite``: ``SUITE``, transposed convs of published architectures, each with its
   source, measured the same way, and the kernel gradient alone (jaxconv auto)
   against one XLA matmul of the same FLOPs (the gradient's own contraction:
   ``(groups, k^n * out / groups, batch * input pixels) @ (groups, batch * input
   pixels, in / groups)``). Then, per implementation and mode, the geometric mean and
   the worst of torch's time over jaxconv's; the cases where auto is not within
   ``AUTO_TOLERANCE`` of the fastest implementation (ratio of medians), where auto's
   forward is slower than the reference's, and where the kernel gradient takes over
   ``KERNEL_GRAD_LIMIT`` times its matmul. The reference is not timed where its conv
   over the stride-dilated input exceeds ``REFERENCE_MAX_GMAC`` (FCN's k16/s8 and
   k64/s32 upsamplers: minutes per call here); the JSON says so.
3. ``train``, the lecture autoencoder (:class:`jaxconv.models.Autoencoder`), one train
   step (forward, MSE, backward, Adam): images/s at batch 64, 256 and 1024 for jaxconv
   (the jit-compiled step), torch eager, and ``torch.compile`` where it runs; the
   model's FLOPs per trained image, the achieved GFLOP/s, and their fraction of a
   float32 matmul peak measured in the same run (the best of JAX's and torch's
   2048x2048 matmul).
4. ``--profile``: where jaxconv's time goes, per XLA op (the op, its output shape
   and the JAX operation it came from), for the train step and each op-level
   forward+backward. XLA:CPU runs independent ops concurrently and some library
   calls asynchronously, so the shares are indicative, not a partition.

The machine's state is part of the result. The load average is read before and
after the run, the share of the machine's CPU time that other processes took during
it (``/proc/stat`` against this process's own), and the matmul peak at the start and
the end against an expected one (``--expected-peak``); each one out of bounds prints
a ``WARNING`` line, and the JSON records them all under ``meta.machine``.
``--quick`` is a smoke run (fewer cases and rounds, the suite at batch 1), not a
measurement.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
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
from collections.abc import Callable, Sequence
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
MAX_CALLS = 1000  # per round, where a round is made to last min_round_s
MODES = ("forward", "forward+backward")
IMPLS = ("auto", "fast", "reference")
AUTO_TOLERANCE = 1.05  # auto's time over the fastest implementation's
KERNEL_GRAD_LIMIT = 1.3  # the kernel gradient's time over one matmul of its FLOPs
REFERENCE_MAX_GMAC = 10.0  # suite: the reference's dilated conv above this is not timed
QUICK_REFERENCE_MAX_GMAC = 1.0  # the same in --quick (a 3-D reference takes seconds)
# float32 matmul GFLOP/s of this project's 2-core machine on a quiet day: 330-480
# (shared/notes/performance-findings.md); under PEAK_FRACTION of it, a warning.
EXPECTED_PEAK_GFLOPS = 330.0
PEAK_FRACTION = 0.8
LOAD_PER_CORE = 0.5  # load average per core above which the machine is busy
OTHERS_CPU_SHARE = 0.15  # of the machine's CPU time, taken by other processes
PARTS = ("ops", "suite", "train")
TORCH_CONV_TRANSPOSE = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One transposed conv: a channels-last ``input`` (batch, *spatial, channels) and
    ``torch.nn.ConvTransposeNd``'s arguments, with where it comes from."""

    name: str
    input: tuple[int, ...]
    out_channels: int
    kernel: int
    stride: int
    padding: int = 0
    output_padding: int = 0
    groups: int = 1
    bias: bool = True
    dtype: str = "float32"
    source: str = ""

    @property
    def ndim(self) -> int:
        return len(self.input) - 2

    def output_spatial(self) -> tuple[int, ...]:
        return shapes.conv_transpose_output_shape(
            self.input[1:-1], self.kernel, self.stride, self.padding, self.output_padding
        )

    def _macs(self, batch_pixels: int) -> int:
        return (
            batch_pixels
            * self.kernel**self.ndim
            * self.input[-1]
            * self.out_channels
            // self.groups
        )

    def macs(self) -> int:
        """Useful multiply-adds of the forward (no multiplied zeros): input pixels x k^n
        x in x out / groups (border taps that the padding crops are counted)."""
        return self._macs(math.prod(self.input[:-1]))

    def dilated_macs(self) -> int:
        """Those of one conv over the stride-dilated input (the reference's forward)."""
        return self._macs(self.input[0] * math.prod(self.output_spatial()))

    def torch_module(self, device: str = "cpu") -> torch.nn.Module:
        """``torch.nn.ConvTransposeNd`` with these arguments (float32, torch's init)."""
        return TORCH_CONV_TRANSPOSE[self.ndim](
            self.input[-1],
            self.out_channels,
            self.kernel,
            self.stride,
            self.padding,
            self.output_padding,
            groups=self.groups,
            bias=self.bias,
            device=device,
        )

    def with_batch(self, batch: int) -> Layer:
        return dataclasses.replace(self, input=(batch, *self.input[1:]))

    def describe(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "output_spatial": list(self.output_spatial()),
            "gmac": self.macs() / 1e9,
        }


OWN = "this project's benchmark case"
OP_CASES = [
    Layer("decoder 14->28", (256, 14, 14, 32), 16, 3, 2, 1, 1, source=OWN),
    Layer("k4 s2 64x64", (32, 64, 64, 64), 64, 4, 2, 1, source=OWN),
    Layer("decoder 1->7 (matmul)", (256, 1, 1, 64), 32, 7, 1, source=OWN),
    Layer("3-D 8->16", (16, 8, 8, 8, 32), 16, 3, 2, 1, 1, source=OWN),
    Layer("grouped g=4", (64, 28, 28, 64), 64, 3, 2, 1, 1, groups=4, source=OWN),
]

# Transposed convs of published models, at batch sizes of their training where one
# forward+backward fits about 50 ms on 2 cores (at most ~0.6 GMAC forward, ~40 MB).
# fmt: off
SUITE = [
    Layer("DCGAN G1 z->4x4", (128, 1, 1, 100), 512, 4, 1, 0, bias=False,
          source="DCGAN generator (Radford et al. 2016; PyTorch's DCGAN example, nz=100, ngf=64): "
                 "layer 1, z 1x1x100 -> 4x4x512; batch 128 (the paper's)"),
    Layer("DCGAN G3 8->16", (16, 8, 8, 256), 128, 4, 2, 1, bias=False,
          source="DCGAN generator (as above): layer 3, 8x8x256 -> 16x16x128; batch 16"),
    Layer("DCGAN G5 32->64 RGB", (64, 32, 32, 64), 3, 4, 2, 1, bias=False,
          source="DCGAN generator (as above): layer 5, 32x32x64 -> 64x64x3 image; batch 64"),
    Layer("StyleGAN2 modconv up g=4", (1, 8, 8, 2048), 2048, 3, 2, 0, groups=4, bias=False,
          source="StyleGAN2 (Karras et al. 2020), config F, the 16x16 block's up-sampling "
                 "modulated conv as implemented in rosinality/stylegan2-pytorch: conv_transpose2d "
                 "k3 s2 p0 with groups = batch (4 per GPU), 8x8x(4*512) -> 17x17x(4*512), blurred "
                 "after"),
    Layer("pix2pix U-Net up 8->16", (1, 8, 8, 1024), 512, 4, 2, 1, bias=False,
          source="pix2pix (Isola et al. 2017), unet_256 generator: up block 8x8x(512+512) -> "
                 "16x16x512, k4 s2 p1; batch 1 (the paper's)"),
    Layer("CycleGAN up 32->64", (1, 32, 32, 256), 128, 3, 2, 1, 1,
          source="CycleGAN (Zhu et al. 2017), resnet_6blocks generator on 128x128 images: first "
                 "up-sampling, 32x32x256 -> 64x64x128, k3 s2 p1 op1; batch 1 (the paper's)"),
    Layer("U-Net up-conv 16->32", (1, 16, 16, 1024), 512, 2, 2,
          source="U-Net (Ronneberger et al. 2015), first 2x2 up-convolution 1024 -> 512 channels, "
                 "on a 256x256 input with same-padded convs (as common PyTorch ports); batch 1 "
                 "(the paper's)"),
    Layer("seg U-Net up 32->64", (32, 32, 32, 32), 16, 3, 2, 1, 1,
          source="this project's segmentation U-Net (jaxconv.segmentation, widths 16-32-64-128) on "
                 "64x64 scenes: the last Up, 32x32x32 -> 64x64x16, k3 s2 p1 op1; batch 32"),
    Layer("FCN-8s upscore8", (1, 70, 70, 21), 21, 16, 8, bias=False,
          source="FCN-8s (Long et al. 2015) on a 500x500 PASCAL VOC image: upscore8, 70x70x21 -> "
                 "568x568x21 (cropped to 500 after), k16 s8, no bias; batch 1"),
    Layer("FCN-32s upscore", (1, 16, 16, 21), 21, 64, 32, bias=False,
          source="FCN-32s (Long et al. 2015) on a 500x500 PASCAL VOC image: upscore, 16x16x21 -> "
                 "544x544x21 (cropped to 500 after), k64 s32, no bias; batch 1"),
    Layer("Mask R-CNN mask head", (8, 14, 14, 256), 256, 2, 2,
          source="Mask R-CNN (He et al. 2017) mask head (torchvision's MaskRCNNPredictor): "
                 "14x14x256 -> 28x28x256, k2 s2; 8 RoIs"),
    Layer("CenterNet IDAUp f2 depthwise", (4, 64, 64, 64), 64, 4, 2, 1, groups=64, bias=False,
          source="CenterNet (Zhou et al. 2019), DLA-34 IDAUp on a 512x512 input: up f=2, depthwise "
                 "(groups=64) k4 s2 p1, 64x64x64 -> 128x128x64, no bias; batch 4"),
    Layer("CenterNet IDAUp f4 depthwise", (4, 32, 32, 64), 64, 8, 4, 2, groups=64, bias=False,
          source="CenterNet (as above): up f=4, depthwise (groups=64) k8 s4 p2, 32x32x64 -> "
                 "128x128x64, no bias; batch 4"),
    Layer("FSRCNN x3 deconv", (64, 32, 32, 56), 1, 9, 3, 4, 2,
          source="FSRCNN (Dong et al. 2016), x3: the last layer, deconvolution 56 -> 1 channel, k9 "
                 "s3 p4 op2, 32x32 -> 96x96; batch 64"),
    Layer("ENet full conv", (2, 180, 240, 16), 12, 3, 2, 1, 1, bias=False,
          source="ENet (Paszke et al. 2016) on CamVid 360x480: the final full conv, 180x240x16 -> "
                 "360x480x12 classes, k3 s2 p1 op1, no bias; batch 2"),
    Layer("MelGAN up 1 (x8)", (8, 32, 512), 256, 16, 8, 4,
          source="MelGAN (Kumar et al. 2019) generator, ratios 8-8-2-2: up-sampling 1, 32 frames x "
                 "512 -> 256 x 256, k16 s8 p4 (8192-sample segments); batch 8"),
    Layer("MelGAN up 3 (x2)", (8, 2048, 128), 64, 4, 2, 1,
          source="MelGAN (as above): up-sampling 3, 2048 x 128 -> 4096 x 64, k4 s2 p1; batch 8"),
    Layer("HiFi-GAN V1 up 4 (x2)", (8, 4096, 64), 32, 4, 2, 1,
          source="HiFi-GAN V1 (Kong et al. 2020) generator, rates 8-8-2-2, kernels 16-16-4-4: "
                 "up-sampling 4, 4096 x 64 -> 8192 x 32, k4 s2 p1 (8192-sample segments); batch 8"),
    Layer("WaveGAN up 3 (x4)", (2, 256, 256), 128, 25, 4, 11, 1,
          source="WaveGAN (Donahue et al. 2019) generator, d=64, PyTorch ports: transposed conv 3, "
                 "256 x 256 -> 1024 x 128, k25 s4 p11 op1; batch 2"),
    Layer("WaveGAN up 5 -> audio", (16, 4096, 64), 1, 25, 4, 11, 1,
          source="WaveGAN (as above): transposed conv 5, 4096 x 64 -> 16384 samples x 1, k25 s4 "
                 "p11 op1; batch 16"),
    Layer("3-D U-Net up-conv 16->32", (1, 16, 16, 16, 128), 128, 2, 2,
          source="3-D U-Net (Cicek et al. 2016): the last 2x2x2 up-convolution, 16^3x128 -> "
                 "32^3x128 (a 32^3 patch with same-padded convs); batch 1"),
    Layer("V-Net up_tr64", (1, 32, 32, 16, 128), 32, 2, 2,
          source="V-Net (Milletari et al. 2016) on 128x128x64 volumes, as in vnet.pytorch: "
                 "up_tr64's de-convolution 32x32x16x128 -> 64x64x32x32, k2 s2; batch 1"),
    Layer("jax#31662 3-D k3 s2", (1, 64, 64, 32, 64), 1, 3, 2, 1, 1,
          source="jax issue 31662 (ConvTranspose3d gradients 32x slower than torch): its layer, "
                 "64x64x32x64 -> 128x128x64x1, k3 s2 p1 op1, in float32 (the issue: bfloat16); "
                 "batch 1"),
    Layer("lecture decoder 1 (1->7)", (256, 1, 1, 64), 32, 7, 1,
          source="the lecture autoencoder (jaxconv.models): decoder layer 1, 1x1x64 -> 7x7x32, k7; "
                 "batch 256"),
    Layer("lecture decoder 2 (7->14)", (256, 7, 7, 32), 16, 3, 2, 1, 1,
          source="the lecture autoencoder: decoder layer 2, 7x7x32 -> 14x14x16, k3 s2 p1 op1; "
                 "batch 256"),
    Layer("lecture decoder 3 (14->28)", (256, 14, 14, 16), 1, 3, 2, 1, 1,
          source="the lecture autoencoder: decoder layer 3, 14x14x16 -> 28x28x1, k3 s2 p1 op1; "
                 "batch 256"),
]
# fmt: on
# --quick: one 1-D, one grouped, one 3-D and one of the lecture's, at batch 1 (not a
# depthwise one: jaxconv builds one program per group, 64 of them, which compile ~50 s)
QUICK_SUITE = (
    "HiFi-GAN V1 up 4 (x2)",
    "StyleGAN2 modconv up g=4",
    "3-D U-Net up-conv 16->32",
    "lecture decoder 2 (7->14)",
)
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


def repeated(
    call: Callable[[], object], sync: Callable[[object], object], min_round_s: float
) -> tuple[Callable[[], None], int]:
    """A round of ``n`` calls and one ``sync`` of the last result, and ``n``.

    ``n`` is 1, or where ``min_round_s > 0`` as many calls as make a round last that
    long (after a warm-up, by the median of three single calls): on a GPU, calls are
    launched asynchronously and overlap within a round as in a training loop, and a
    round is long enough to time.
    """

    def run(n: int) -> None:
        for _ in range(n):
            out = call()
        sync(out)

    n = 1
    if min_round_s > 0:
        run(1)
        once = statistics.median(_timed(lambda: run(1)) for _ in range(3))
        n = min(MAX_CALLS, max(1, math.ceil(min_round_s / once)))
    return functools.partial(run, n), n


def time_contenders(
    contenders: dict[str, tuple[Callable[[], None], int]], rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each ``(round, calls per round)`` contender, per round."""
    times = paired_rounds({name: run for name, (run, _) in contenders.items()}, rounds)
    return {name: [t / contenders[name][1] for t in ts] for name, ts in times.items()}


def summary(values: list[float], scale: float = 1.0) -> dict:
    v = [x * scale for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}


def ratios(numerator: list[float], denominator: list[float]) -> dict:
    """Per-round ratios (the rounds both ran), summarised."""
    return summary([a / b for a, b in zip(numerator, denominator)])


def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


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
# The machine


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
) -> dict:
    """The run's load figures and a warning for each one out of bounds."""
    cores = os.cpu_count() or 1
    warnings = []
    start_limit = LOAD_PER_CORE * cores
    if load_start[0] > start_limit:
        warnings.append(
            f"1-min load average {load_start[0]:.2f} at the start, over {start_limit:.2f} "
            f"({LOAD_PER_CORE} per core): other work was running"
        )
    end_limit = min(THREADS, cores) + LOAD_PER_CORE * cores
    if load_end[0] > end_limit:
        warnings.append(
            f"1-min load average {load_end[0]:.2f} at the end, over {end_limit:.2f} (this "
            f"run's {min(THREADS, cores)} busy threads + {LOAD_PER_CORE} per core)"
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


# ----------------------------------------------------------------------------------
# Op level


def _no_sync(_: object) -> None:
    pass


def _cuda_sync(_: object) -> None:
    torch.cuda.synchronize()


def op_case(
    layer: Layer,
    rounds: int,
    *,
    profile: bool = False,
    device: str = "cpu",
    min_round_s: float = 0.0,
    kernel_grad: bool = False,
    reference_max_gmac: float | None = None,
    torch_compile: bool = False,
) -> dict:
    """jaxconv's implementations and torch (``device``) on one layer, forward and
    forward+backward; optionally torch.compile and the kernel gradient against a matmul.

    JAX arrays live on JAX's default device; ``min_round_s``: see :func:`repeated`.
    """
    ndim, in_channels = layer.ndim, layer.input[-1]
    torch.manual_seed(0)
    torch_layer = layer.torch_module()
    x_cpu = torch.randn(layer.input[0], in_channels, *layer.input[1:-1])
    r_cpu = torch.randn(layer.input[0], layer.out_channels, *layer.output_spatial())

    def to_jax(t: torch.Tensor, axes: tuple[int, ...]) -> jax.Array:
        return jnp.asarray(np.transpose(t.detach().numpy(), axes), layer.dtype)

    channels_last = (0, *range(2, ndim + 2), 1)
    x, r = to_jax(x_cpu, channels_last), to_jax(r_cpu, channels_last)
    kernel = to_jax(torch_layer.weight, (*range(2, ndim + 2), 1, 0))
    bias = to_jax(torch_layer.bias, (0,)) if layer.bias else None
    torch_dtype = getattr(torch, layer.dtype)
    torch_layer.to(device, torch_dtype)
    x_torch = x_cpu.to(device, torch_dtype).requires_grad_()
    r_torch = r_cpu.to(device, torch_dtype)
    sync = _cuda_sync if device.startswith("cuda") else _no_sync
    kwargs = dict(
        stride=layer.stride,
        padding=layer.padding,
        output_padding=layer.output_padding,
        groups=layer.groups,
    )

    result = {
        "case": layer.name,
        **layer.describe(),
        "auto_impl": ops.resolve_impl("auto"),
        "device": {"jax": str(jax.devices()[0]), "torch": device},
        "compile_s": {},
        "not_timed": {},
    }
    compiled: dict[tuple[str, str], tuple] = {}  # (implementation, mode) -> (program, args)
    for impl in sorted({ops.resolve_impl(impl) for impl in IMPLS}):
        if impl == "reference" and reference_max_gmac is not None:
            gmac = layer.dilated_macs() / 1e9
            if gmac > reference_max_gmac:
                result["not_timed"]["reference"] = (
                    f"its conv over the stride-dilated input is {gmac:.0f} GMAC "
                    f"(over {reference_max_gmac:g})"
                )
                continue

        def forward(x, kernel, bias, impl=impl):
            return ops.conv_transpose(x, kernel, bias, impl=impl, **kwargs)

        argnums = (0, 1, 2) if layer.bias else (0, 1)

        def forward_backward(x, kernel, bias, r, forward=forward):
            return jax.value_and_grad(lambda *a: jnp.vdot(forward(*a), r), argnums)(x, kernel, bias)

        for mode, fn, args in (
            ("forward", forward, (x, kernel, bias)),
            ("forward+backward", forward_backward, (x, kernel, bias, r)),
        ):
            start = time.perf_counter()
            program = jax.jit(fn).lower(*args).compile()
            result["compile_s"][f"{impl} {mode}"] = time.perf_counter() - start
            compiled[(impl, mode)] = program, args

    def torch_forward(module) -> torch.Tensor:
        with torch.no_grad():
            return module(x_torch)

    def torch_forward_backward(module) -> None:
        x_torch.grad = None
        module.zero_grad()
        (module(x_torch) * r_torch).sum().backward()

    torch_fns = {"forward": torch_forward, "forward+backward": torch_forward_backward}
    torch_modules = {"torch": torch_layer}
    if torch_compile:
        try:
            torch._dynamo.reset()  # each case compiles afresh, under no recompile limit
            module = torch.compile(torch_layer)
            for mode, fn in torch_fns.items():
                result["compile_s"][f"torch.compile {mode}"] = _timed(lambda: sync(fn(module)))
            torch_modules["torch.compile"] = module
        except Exception as error:  # a missing toolchain, an unsupported op
            result["torch.compile error"] = f"{type(error).__name__}: {str(error)[:300]}"

    for mode in MODES:
        contenders = {}
        for impl in IMPLS:
            key = (ops.resolve_impl(impl), mode)
            if key in compiled:
                program, args = compiled[key]
                contenders[impl] = repeated(
                    functools.partial(program, *args), jax.block_until_ready, min_round_s
                )
        for name, module in torch_modules.items():
            call = functools.partial(torch_fns[mode], module)
            contenders[name] = repeated(call, sync, min_round_s)
        times = time_contenders(contenders, rounds)
        figures = {
            "ms": {name: summary(ts, 1e3) for name, ts in times.items()},
            "calls_per_round": {name: calls for name, (_, calls) in contenders.items()},
        }
        for name in ("torch", "torch.compile"):
            if name in times:
                figures[f"{name}_over"] = {
                    impl: ratios(times[name], times[impl]) for impl in IMPLS if impl in times
                }
        if "reference" in times:
            figures["reference_over_auto"] = ratios(times["reference"], times["auto"])
        result[mode] = figures

    if kernel_grad:
        result["kernel_gradient"] = kernel_gradient_case(
            layer, x, kernel, bias, r, kwargs, rounds, min_round_s
        )
    if profile:
        result["profile"] = xla_op_profile(
            *compiled[(ops.resolve_impl("auto"), "forward+backward")], repeats=3
        )
    return result


def kernel_gradient_case(
    layer: Layer, x, kernel, bias, r, kwargs: dict, rounds: int, min_round_s: float
) -> dict:
    """jaxconv auto's kernel gradient alone against one XLA matmul of the same FLOPs.

    The matmul has the gradient's own contraction: per group, ``(k^n * out / groups)
    x (batch * input pixels)`` times ``(batch * input pixels) x (in / groups)``.
    """

    def kernel_gradient(x, kernel, bias, r):
        return jax.grad(
            lambda k: jnp.vdot(ops.conv_transpose(x, k, bias, impl="auto", **kwargs), r)
        )(kernel)

    groups = layer.groups
    m = layer.kernel**layer.ndim * layer.out_channels // groups
    p = math.prod(layer.input[:-1])
    n = layer.input[-1] // groups
    lead = (groups,) if groups > 1 else ()
    key_a, key_b = jax.random.split(jax.random.key(2))
    a = jax.random.normal(key_a, (*lead, m, p), layer.dtype)
    b = jax.random.normal(key_b, (*lead, p, n), layer.dtype)
    start = time.perf_counter()
    gradient = jax.jit(kernel_gradient).lower(x, kernel, bias, r).compile()
    compile_s = time.perf_counter() - start
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    contenders = {
        "auto": repeated(
            functools.partial(gradient, x, kernel, bias, r), jax.block_until_ready, min_round_s
        ),
        "matmul": repeated(functools.partial(matmul, a, b), jax.block_until_ready, min_round_s),
    }
    times = time_contenders(contenders, rounds)
    over = ratios(times["auto"], times["matmul"])
    return {
        "ms": {name: summary(ts, 1e3) for name, ts in times.items()},
        "matmul_shape": [*lead, m, p, n],
        "gflop": 2 * layer.macs() / 1e9,
        "compile_s": compile_s,
        "over_matmul": over,
        "within_limit": over["median"] <= KERNEL_GRAD_LIMIT,
    }


def suite_summary(cases: list[dict]) -> dict:
    """Geometric mean and worst of torch / jaxconv per implementation and mode, and the
    cases that miss the auto, forward and kernel-gradient criteria."""
    result: dict = {}
    for mode in MODES:
        torch_over = {}
        for impl in IMPLS:
            timed = [
                (case["case"], case[mode]["torch_over"][impl]["median"])
                for case in cases
                if impl in case[mode]["torch_over"]
            ]
            if timed:
                worst_case, worst = min(timed, key=lambda t: t[1])
                torch_over[impl] = {
                    "geomean": geomean([v for _, v in timed]),
                    "worst": worst,
                    "worst_case": worst_case,
                    "cases": len(timed),
                }
        auto_over_fastest = {}
        for case in cases:
            ms = case[mode]["ms"]
            fastest = min(ms[impl]["median"] for impl in ("fast", "reference") if impl in ms)
            auto_over_fastest[case["case"]] = ms["auto"]["median"] / fastest
        result[mode] = {
            "torch_over": torch_over,
            "auto_over_fastest": auto_over_fastest,
            "auto_not_within_tolerance": [
                name for name, v in auto_over_fastest.items() if v > AUTO_TOLERANCE
            ],
        }
    result["auto_forward_slower_than_reference"] = [
        case["case"]
        for case in cases
        if "reference" in case["forward"]["ms"]
        and case["forward"]["ms"]["auto"]["median"] > case["forward"]["ms"]["reference"]["median"]
    ]
    result["reference_not_timed"] = [case["case"] for case in cases if case["not_timed"]]
    gradients = [
        (case["case"], case["kernel_gradient"]["over_matmul"]["median"])
        for case in cases
        if "kernel_gradient" in case
    ]
    if gradients:
        worst_case, worst = max(gradients, key=lambda t: t[1])
        result["kernel_gradient_over_matmul"] = {
            "geomean": geomean([v for _, v in gradients]),
            "worst": worst,
            "worst_case": worst_case,
            "over_limit": [name for name, v in gradients if v > KERNEL_GRAD_LIMIT],
        }
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


def torch_train_step(batch: int, compiled: bool, device: str = "cpu"):
    """One Adam step of torch's autoencoder on random images on ``device``; returns the loss."""
    model = torch_models.torch_autoencoder().to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    forward = torch.compile(model) if compiled else model
    images = torch.rand(batch, 1, 28, 28, device=device)

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


def print_op_table(title: str, cases: list[dict]) -> None:
    """ms per contender and torch / auto, for each case and mode."""
    names = ["auto", "fast", "reference", "torch", "torch.compile"]
    names = [n for n in names if any(n in c[mode]["ms"] for c in cases for mode in MODES)]
    print(f"\n{title}, ms: median [min-max]; torch/auto = torch time / jaxconv auto time")
    widths = {name: 22 for name in names}
    header = " ".join(f"{name:>{widths[name]}s}" for name in names)
    print(f"{'case':30s} {'mode':16s} {header} {'torch/auto':>18s}")
    for case in cases:
        for mode in MODES:
            m = case[mode]["ms"]
            cells = " ".join(
                f"{_fmt(m[name]) if name in m else 'not timed':>{widths[name]}s}" for name in names
            )
            ratio = _fmt(case[mode]["torch_over"]["auto"])
            print(f"{case['case'][:30]:30s} {mode:16s} {cells} {ratio:>18s}")


def print_suite(cases: list[dict], result: dict) -> None:
    print("\nSuite: transposed convs of published models (GMAC: useful forward MACs)")
    for case in cases:
        print(f"  {case['case'][:30]:30s} {case['gmac']:6.3f}  {case['source']}")
    print_op_table("Suite", cases)
    if any("kernel_gradient" in case for case in cases):
        print(
            "\nKernel gradient alone (jaxconv auto) against one XLA matmul of its FLOPs, ms; "
            f"ratio over {KERNEL_GRAD_LIMIT} marked"
        )
        for case in cases:
            kg = case["kernel_gradient"]
            mark = "" if kg["within_limit"] else "  <-- over"
            print(
                f"  {case['case'][:30]:30s} gradient {_fmt(kg['ms']['auto']):>22s}  matmul "
                f"{tuple(kg['matmul_shape'])!s:>24s} {_fmt(kg['ms']['matmul']):>22s}  "
                f"ratio {_fmt(kg['over_matmul'])}{mark}"
            )
    for mode in MODES:
        for impl, s in result[mode]["torch_over"].items():
            print(
                f"{mode:16s} torch/{impl:9s} geometric mean {s['geomean']:.2f}, worst "
                f"{s['worst']:.2f} ({s['worst_case']}), {s['cases']} cases"
            )
        missed = result[mode]["auto_not_within_tolerance"]
        print(
            f"{mode:16s} auto within {AUTO_TOLERANCE - 1:.0%} of the fastest implementation: "
            + ("every case" if not missed else "not in " + ", ".join(missed))
        )
    slower = result["auto_forward_slower_than_reference"]
    print(
        "auto's forward slower than the reference's: "
        + (", ".join(slower) if slower else "in no case")
    )
    if result["reference_not_timed"]:
        print("reference not timed: " + ", ".join(result["reference_not_timed"]))
    if "kernel_gradient_over_matmul" in result:
        kg = result["kernel_gradient_over_matmul"]
        print(
            f"kernel gradient / matmul: geometric mean {kg['geomean']:.2f}, worst "
            f"{kg['worst']:.2f} ({kg['worst_case']}); over {KERNEL_GRAD_LIMIT}: "
            + (", ".join(kg["over_limit"]) if kg["over_limit"] else "none")
        )


def print_train(report: dict) -> None:
    flops = report["model"]["train_flops"]
    peak = report["peak"]
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


def print_report(report: dict) -> None:
    meta, machine = report["meta"], report["meta"]["machine"]
    others = machine["others_cpu_share"]
    print(
        f"\njax {meta['jax']}, torch {meta['torch']}, {meta['cpu_count']} cores, "
        f"load average {machine['load_average_start']} -> {machine['load_average_end']}, "
        + (f"other processes {others:.0%} of the CPU time, " if others is not None else "")
        + f"{meta['seconds']:.0f} s"
    )
    for when in ("peak", "peak_end"):
        peak = report[when]
        print(
            f"matmul {'peak' if when == 'peak' else 'at the end'} ({peak['n']}^3 float32): "
            + ", ".join(f"{k} {v:.0f}" for k, v in peak["gflops_best_round"].items())
            + f" GFLOP/s (expected {machine['expected_peak_gflops']:.0f})"
        )
    if "ops" in report:
        print_op_table("Op level", report["ops"])
    if "suite" in report:
        print_suite(report["suite"], report["suite_summary"])
    if "train" in report:
        print_train(report)
    for title, key in (("op level, forward+backward", "ops"), ("train step", "train")):
        for case in report.get(key, []):
            if "profile" in case:
                label = case.get("case") or f"batch {case['batch']}"
                print_profile(f"{title}, {label}", case["profile"])
    for warning in machine["warnings"]:
        print(f"WARNING: {warning}; this run's figures are unreliable")


def print_profile(title: str, profile: dict) -> None:
    print(f"\nProfile, jaxconv {title}: {profile['traced_ms']:.1f} ms of traced XLA ops per call")
    for op in profile["top"]:
        print(
            f"  {op['ms']:8.2f} ms {100 * op['share']:4.0f}%  {op['shape']:28s} {op['from'][:90]}"
        )


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are a comma-separated subset of {PARTS}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer rounds")
    parser.add_argument("--out", default="benchmark.json", help="where to write the JSON table")
    parser.add_argument("--profile", action="store_true", help="add per-XLA-op profiles")
    parser.add_argument(
        "--parts",
        type=parse_parts,
        default=PARTS,
        help="a subset of ops,suite,train (default: all)",
    )
    parser.add_argument(
        "--expected-peak",
        type=float,
        default=EXPECTED_PEAK_GFLOPS,
        help="float32 matmul GFLOP/s this machine reaches when quiet (default: %(default)s)",
    )
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    load_start, cpu_start = os.getloadavg(), cpu_seconds()
    rounds, train_rounds = (2, 2) if args.quick else (7, 7)
    peak_n, peak_rounds = (1024, 3) if args.quick else (2048, 7)
    report = {
        "meta": {
            "quick": args.quick,
            "parts": list(args.parts),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "peak": matmul_peak(peak_n, peak_rounds),
        "model": training_flops_per_image(models.AutoencoderConfig()),
    }
    if "ops" in args.parts:
        cases = OP_CASES[2:3] if args.quick else OP_CASES
        report["ops"] = [op_case(case, rounds, profile=args.profile) for case in cases]
    if "suite" in args.parts:
        layers = [s.with_batch(1) for s in SUITE if s.name in QUICK_SUITE] if args.quick else SUITE
        report["suite"] = [
            op_case(
                layer,
                rounds,
                profile=args.profile,
                kernel_grad=True,
                reference_max_gmac=QUICK_REFERENCE_MAX_GMAC if args.quick else REFERENCE_MAX_GMAC,
            )
            for layer in layers
        ]
        report["suite_summary"] = suite_summary(report["suite"])
    if "train" in args.parts:
        batches = TRAIN_BATCHES[:1] if args.quick else TRAIN_BATCHES
        report["train"] = [
            train_case(
                batch,
                train_rounds,
                steps_per_round=max(1, (256 if args.quick else 4096) // batch),
                with_compile=not args.quick,
                profile=args.profile,
            )
            for batch in batches
        ]
    report["peak_end"] = matmul_peak(peak_n, peak_rounds)
    seconds = time.perf_counter() - start
    report["meta"]["seconds"] = seconds
    report["meta"]["machine"] = machine_state(
        load_start,
        os.getloadavg(),
        cpu_start,
        cpu_seconds(),
        seconds,
        [report["peak"]["peak_gflops"], report["peak_end"]["peak_gflops"]],
        args.expected_peak,
    )
    print_report(report)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
