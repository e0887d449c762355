"""The ported networks (``jaxconv.ports``) against torch on the CPU: parity, then time.

    python experiments/bench_ports.py [--networks NAME,...] [--rounds 15] [--threads 2]
                                      [--min-round-s 0.1] [--quick]

The networks (``NETWORKS``; input in torch's layout ``batch x channels x spatial``, the
port's is channels-last):

- ``unet-{2d,3d}-{instance,batch}``: MONAI's ``UNet`` (1 -> 2 channels, channels (16, 32,
  64, 128), strides (2, 2, 2), ``num_res_units=2``, PReLU) with its default
  InstanceNorm or ``norm="batch"``, on 1x1x128x128 (2-D) and 1x1x64x64x64 (3-D);
- ``basic-unet-2d``: MONAI's ``BasicUNet`` (2-D, 1 -> 2 channels, its default features
  (32, 32, 64, 128, 256, 32), InstanceNorm, LeakyReLU, deconv up-sampling) on
  1x1x128x128;
- ``dcgan-generator`` / ``dcgan-discriminator``: PyTorch's DCGAN example at its size
  (nz 100, ngf = ndf = 64, 64x64x3 images, batch 64; the discriminator's last conv a
  Flatten -> Linear head, as the port's): 64x100x1x1 noise, 64x3x64x64 images.

Each is built in torch (default initialisation, seed 0), its ``state_dict`` loaded into
the port by name (``interop.load_state_dict``, strict), and both run on one random
input:

- ``forward``: evaluation mode (BatchNorm normalises by its running statistics;
  InstanceNorm, without running statistics as MONAI's, by each example's own), torch eager
  under ``torch.no_grad()``, jaxconv's forward jit-compiled;
- ``forward+backward``: training mode (BatchNorm normalises by the batch's statistics and
  updates its running ones, in both), the loss ``sum(y ** 2)`` and its gradients in
  the parameters: torch eager ``zero_grad``, forward, ``backward()``; jaxconv one
  jit-compiled pure function of the model's state returning the output, the
  gradients and the updated running statistics.

Parity (``diff``) is ``max |jaxconv - torch| / max |torch|``: of the evaluation output
for ``forward``; for ``forward+backward`` the largest of the training output's and of every
parameter gradient's (a gradient's denominator at least 1 % of the largest gradient:
a conv bias before a norm has a gradient of 0 in exact arithmetic, so only its
rounding noise). ``compile s`` is the time XLA took to compile jaxconv's two programs.

Time: the harness of ``experiments/bench/timing.py``, as ``benchmark.py``: per network
and mode, jaxconv, torch and jaxconv again (its A/A pair) in ``--rounds`` paired rounds
of at least ``--min-round-s`` each; a figure is the median over the rounds (min-max),
``torch/jaxconv`` the median of the per-round ratios of torch's time over jaxconv's
(above 1: jaxconv is faster), ``A/A`` jaxconv's time over its second name's. The process
is pinned to ``--threads`` CPUs before JAX starts (XLA sizes its pool by them) and
torch gets as many threads; the thread counts found, the load and a warning per A/A
ratio outside 0.97-1.03 are printed. ``--quick`` runs small versions of the networks
in 3 short rounds: a smoke run, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine, timing  # noqa: E402  (no JAX yet: the CPUs are pinned first)
from benchmark import (  # noqa: E402
    QUICK_MIN_ROUND_S,
    QUICK_ROUNDS,
    ROUNDS,
    add_timing_arguments,
)

MODES = ("forward", "forward+backward")  # as bench.cases.MODES
GRADIENT_FLOOR = 1e-2  # a gradient's parity denominator at least this share of the largest
UNET_CHANNELS, UNET_STRIDES = (16, 32, 64, 128), (2, 2, 2)
QUICK_UNET_CHANNELS = (4, 8, 16, 32)
QUICK_BASIC_FEATURES = (4, 4, 8, 8, 16, 4)
DCGAN = dict(nz=100, ngf=64, ndf=64, nc=3, image_size=64, batch=64)  # the example's
QUICK_DCGAN = dict(nz=8, ngf=4, ndf=4, nc=3, image_size=16, batch=2)


@dataclass(frozen=True)
class Network:
    """A torch network, its port (same arguments), and the input (torch's layout)."""

    description: str
    torch_model: Callable[[], Any]
    port: Callable[[Any], Any]  # nnx.Rngs -> the port
    input: tuple[int, ...]


def _unet(spatial_dims: int, norm: str, quick: bool) -> Network:
    from monai.networks.nets import UNet as TorchUNet

    from jaxconv.ports.monai_unet import UNet

    channels = QUICK_UNET_CHANNELS if quick else UNET_CHANNELS
    side = 16 if quick else {2: 128, 3: 64}[spatial_dims]
    settings = dict(
        spatial_dims=spatial_dims, in_channels=1, out_channels=2, channels=channels,
        strides=UNET_STRIDES, num_res_units=2, norm=norm,
    )  # fmt: skip
    return Network(
        f"MONAI UNet {spatial_dims}-D, channels {channels}, strides {UNET_STRIDES}, "
        f"num_res_units=2, {norm} norm, PReLU",
        lambda: TorchUNet(**settings),
        lambda rngs: UNet(**settings, rngs=rngs),
        (1, 1) + (side,) * spatial_dims,
    )


def _basic_unet(quick: bool) -> Network:
    from monai.networks.nets import BasicUNet as TorchBasicUNet

    from jaxconv.ports.monai_basic_unet import BasicUNet

    features = QUICK_BASIC_FEATURES if quick else (32, 32, 64, 128, 256, 32)  # MONAI's
    settings = dict(spatial_dims=2, in_channels=1, out_channels=2, features=features)
    side = 32 if quick else 128
    return Network(
        f"MONAI BasicUNet 2-D, features {features}, instance norm, LeakyReLU, deconv",
        lambda: TorchBasicUNet(**settings),
        lambda rngs: BasicUNet(**settings, rngs=rngs),
        (1, 1, side, side),
    )


def _torch_dcgan_generator(nz: int, ngf: int, nc: int, image_size: int) -> Any:
    """PyTorch's DCGAN example generator (``main``: ConvTranspose2d, BatchNorm2d, ReLU
    per layer, Tanh) for a power-of-two ``image_size``; the example's is 64."""
    from torch import nn

    layers: list = []
    channels_in, n = nz, image_size.bit_length() - 3  # 2x layers from 4x4
    for k in range(n):
        channels = ngf * 2 ** (n - 1 - k)
        stride, padding = (1, 0) if k == 0 else (2, 1)
        layers += [
            nn.ConvTranspose2d(channels_in, channels, 4, stride, padding, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        ]
        channels_in = channels
    layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(OrderedDict(main=nn.Sequential(*layers)))


def _torch_dcgan_discriminator(ndf: int, nc: int, image_size: int) -> Any:
    """PyTorch's DCGAN example discriminator (``main``: Conv2d, BatchNorm2d but on the
    first, LeakyReLU 0.2), its last 4x4 conv replaced by Flatten -> Linear -> Sigmoid
    (as :class:`jaxconv.ports.dcgan.Discriminator`); one probability per image."""
    from torch import nn

    layers: list = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    channels_in = ndf
    for k in range(1, image_size.bit_length() - 3):
        channels = ndf * 2**k
        layers += [
            nn.Conv2d(channels_in, channels, 4, 2, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels_in = channels
    layers += [nn.Flatten(), nn.Linear(channels_in * 16, 1), nn.Sigmoid()]
    return nn.Sequential(OrderedDict(main=nn.Sequential(*layers), per_image=nn.Flatten(0)))


def _dcgan(part: str, quick: bool) -> Network:
    from jaxconv.ports import dcgan

    s = QUICK_DCGAN if quick else DCGAN
    size = s["image_size"]
    if part == "generator":
        return Network(
            f"DCGAN generator (PyTorch's example), nz {s['nz']}, ngf {s['ngf']} -> "
            f"{size}x{size}x{s['nc']}",
            lambda: _torch_dcgan_generator(s["nz"], s["ngf"], s["nc"], size),
            lambda rngs: dcgan.Generator(s["nz"], s["ngf"], s["nc"], size, rngs=rngs),
            (s["batch"], s["nz"], 1, 1),
        )
    return Network(
        f"DCGAN discriminator (PyTorch's example, Flatten -> Linear head), ndf {s['ndf']}",
        lambda: _torch_dcgan_discriminator(s["ndf"], s["nc"], size),
        lambda rngs: dcgan.Discriminator(s["ndf"], s["nc"], size, rngs=rngs),
        (s["batch"], s["nc"], size, size),
    )


NETWORKS: dict[str, Callable[[bool], Network]] = {  # quick -> the network
    "unet-2d-instance": lambda quick: _unet(2, "instance", quick),
    "unet-2d-batch": lambda quick: _unet(2, "batch", quick),
    "unet-3d-instance": lambda quick: _unet(3, "instance", quick),
    "unet-3d-batch": lambda quick: _unet(3, "batch", quick),
    "basic-unet-2d": _basic_unet,
    "dcgan-generator": lambda quick: _dcgan("generator", quick),
    "dcgan-discriminator": lambda quick: _dcgan("discriminator", quick),
}


def parse_networks(text: str) -> tuple[str, ...]:
    """``--networks``: a comma-separated subset of ``NETWORKS``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or set(names) - set(NETWORKS):
        raise argparse.ArgumentTypeError(
            f"networks are a comma-separated subset of {', '.join(NETWORKS)}; got {text!r}"
        )
    return names


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"bench_ports.py: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--rounds`` and ``--min-round-s`` resolved for ``--quick``)."""
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small networks: a smoke run")
    parser.add_argument(
        "--networks",
        type=parse_networks,
        default=tuple(NETWORKS),
        help=f"a comma-separated subset of {','.join(NETWORKS)} (default: all)",
    )
    add_timing_arguments(parser, "network and mode")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    args.min_round_s = args.min_round_s or (QUICK_MIN_ROUND_S if args.quick else timing.MIN_ROUND_S)
    return args


def _relative(ours: Any, theirs: Any, floor: float = 0.0) -> float:
    """``max |ours - theirs| / max(max |theirs|, floor)``."""
    import numpy as np

    theirs = np.asarray(theirs, np.float64)
    scale = max(float(np.abs(theirs).max()), floor)
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / scale)


def _programs(model: Any, x: Any) -> tuple[Callable, tuple, Callable, tuple, float]:
    """jaxconv's compiled forward (evaluation mode) and forward+backward (training mode)
    of ``model`` with their arguments, and the seconds both took to compile."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model.eval()
    eval_def, eval_state = nnx.split(model)
    model.train()
    train_def, train_state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(eval_def, state)(x)

    def forward_backward(state, x):
        def loss_fn(model):
            y = model(x)
            return jnp.sum(y**2), y

        model = nnx.merge(train_def, state)
        (_, y), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        return y, grads, nnx.state(model, nnx.BatchStat)

    start = time.perf_counter()
    forward = jax.jit(forward).lower(eval_state, x).compile()
    forward_backward = jax.jit(forward_backward).lower(train_state, x).compile()
    return forward, (eval_state, x), forward_backward, (train_state, x), time.perf_counter() - start


def measure(name: str, network: Network, rounds: int, min_round_s: float) -> dict:
    """One network's parity and times (see the module's docstring), by mode."""
    import functools

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from jaxconv import interop
    from jaxconv.torch_reference import channels_first, channels_last

    torch.manual_seed(0)
    torch_model = network.torch_model()
    model = nnx.eval_shape(lambda: network.port(nnx.Rngs(0)))  # nothing initialised
    interop.load_state_dict(model, torch_model.state_dict())
    x = torch.randn(network.input, generator=torch.Generator().manual_seed(1))
    forward, forward_args, forward_backward, backward_args, compile_s = _programs(
        model, jnp.asarray(channels_last(x))
    )

    def ours(y: Any) -> Any:
        return channels_first(y) if y.ndim > 1 else y

    def torch_forward() -> Any:
        with torch.no_grad():
            return torch_model(x)

    def torch_forward_backward() -> Any:
        torch_model.zero_grad()
        y = torch_model(x)
        (y**2).sum().backward()
        return y

    torch_model.eval()
    diff = {"forward": _relative(ours(forward(*forward_args)), torch_forward())}
    torch_model.train()
    y, grads, _ = forward_backward(*backward_args)
    theirs = torch_forward_backward().detach()
    model.train()
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grads = interop.to_state_dict(nnx.merge(graphdef, grads, rest))  # torch's keys, layouts
    floor = GRADIENT_FLOOR * max(float(p.grad.abs().max()) for p in torch_model.parameters())
    diff["forward+backward"] = max(
        _relative(ours(y), theirs),
        *(_relative(grads[k], p.grad, floor) for k, p in torch_model.named_parameters()),
    )

    result = {
        "case": name,
        "description": network.description,
        "input": "x".join(map(str, network.input)),
        "parameters": sum(p.numel() for p in torch_model.parameters()),
        "compile_s": compile_s,
    }
    calls = {
        "forward": (functools.partial(forward, *forward_args), torch_forward, torch_model.eval),
        "forward+backward": (
            functools.partial(forward_backward, *backward_args),
            torch_forward_backward,
            torch_model.train,
        ),
    }
    for mode, (jax_call, torch_call, torch_mode) in calls.items():
        torch_mode()
        contenders = {
            "jaxconv": timing.repeated(jax_call, jax.block_until_ready, min_round_s),
            "torch": timing.repeated(torch_call, timing.no_sync, min_round_s, spins=True),
        }
        times, check = timing.time_checked(contenders, rounds, aa="jaxconv")
        result[mode] = {
            "diff": diff[mode],
            "ms": {who: timing.summary(ts, 1e3) for who, ts in times.items()},
            "calls_per_round": {who: c.calls_per_round for who, c in contenders.items()},
            "torch_over_jaxconv": timing.ratios(times["torch"], times["jaxconv"]),
            "aa": check,
        }
    return result


def _ms(s: dict) -> str:
    digits = 1 if s["median"] >= 10 else 2
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def print_table(results: list[dict]) -> None:
    """One markdown row per network and mode, then each mode's geometric mean."""
    print(
        "\n| network | input | mode | jaxconv ms (min-max) | torch ms (min-max) "
        "| torch/jaxconv | A/A | diff | compile s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for mode in MODES:
            f = r[mode]
            print(
                f"| {r['case']} | {r['input']} | {mode} | {_ms(f['ms']['jaxconv'])} "
                f"| {_ms(f['ms']['torch'])} | {f['torch_over_jaxconv']['median']:.2f} "
                f"| {f['aa']['ratio']['median']:.3f} | {f['diff']:.1e} | {r['compile_s']:.1f} |"
            )
    for mode in MODES:
        speedups = [r[mode]["torch_over_jaxconv"]["median"] for r in results]
        worst = min(results, key=lambda r: r[mode]["torch_over_jaxconv"]["median"])
        print(
            f"{mode}: torch/jaxconv geometric mean {timing.geomean(speedups):.2f} over "
            f"{len(results)} networks, worst {min(speedups):.2f} ({worst['case']})"
        )


def run(args: argparse.Namespace) -> list[dict]:
    """Measures ``args.networks`` and prints the run's settings, the table and the
    warnings (threads not equal, load, A/A ratios outside their limits)."""
    import jax
    import torch
    from bench import report

    start = time.perf_counter()
    load_start, cpu_start = os.getloadavg(), machine.cpu_seconds()
    results = []
    for name in args.networks:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)  # minutes at full size
        results.append(measure(name, NETWORKS[name](args.quick), args.rounds, args.min_round_s))
    seconds = time.perf_counter() - start
    threads = {"torch": torch.get_num_threads(), "xla_intra_op": machine.xla_intra_op_threads()}
    print(
        f"jax {jax.__version__}, torch {torch.__version__}; threads: torch "
        f"{threads['torch']}, XLA intra-op {threads['xla_intra_op']}; {args.rounds} paired "
        f"rounds of >= {args.min_round_s} s per network and mode; {seconds:.0f} s"
        + ("; --quick: small networks, not a measurement" if args.quick else "")
    )
    for r in results:
        print(f"  {r['case']}: {r['description']}; {r['parameters']:,} parameters")
    print(
        "forward: evaluation mode, torch under no_grad; forward+backward: training mode, loss "
        "sum(y**2), gradients in the parameters; torch/jaxconv: median of per-round ratios "
        "(> 1: jaxconv faster); A/A: jaxconv / jaxconv timed again; diff: max |jaxconv - "
        "torch| / max |torch| (forward+backward: output and gradients); compile s: "
        "jaxconv's two programs"
    )
    print_table(results)
    state = machine.machine_state(
        load_start, os.getloadavg(), cpu_start, machine.cpu_seconds(), seconds, [],
        machine.EXPECTED_PEAK_GFLOPS, threads=args.threads,
    )  # fmt: skip
    # the harness's verdicts read the benchmark's result layout: the networks as its cases
    layout = {"meta": {"threads": threads}, "aa": report.aa_summary({"ops": results})}
    for warning in state["warnings"] + report.run_warnings(layout):
        print(f"WARNING: {warning}")
    return results


def main() -> None:
    args = parse_args()
    try:
        machine.pin_cpus(args.threads)
    except ValueError as error:
        print(f"bench_ports.py: --{error}", file=sys.stderr)
        sys.exit(2)
    import torch  # JAX starts in run(), on the pinned CPUs

    torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
