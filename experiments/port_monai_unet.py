"""Port MONAI's 3-D UNet to jaxconv: load torch's weights by name, compare, time.

    python experiments/port_monai_unet.py [--size 32] [--batch 2] [--rounds 7] [--threads 2]

Builds ``monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2,
channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)`` in torch (MONAI's
defaults: InstanceNorm without affine parameters, PReLU, no dropout) and
:class:`jaxconv.ports.monai_unet.UNet` with the same arguments, loads the torch
``state_dict`` into the port (``interop.load_state_dict``, strict, no renaming) and
prints the largest differences from torch (evaluation and training outputs, the
gradients of an MSE loss; each ``max |jaxconv - torch| / max |torch|``) and the time of
a forward and of a forward+backward pass of both: JAX jitted, torch eager, each
restricted to ``--threads`` CPUs (the process is pinned to them before JAX starts,
which sizes XLA's thread pool; ``torch.set_num_threads`` for torch). A figure is the
median over ``--rounds`` paired rounds (both run once per round, in alternating order);
the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

CHANNELS = (16, 32, 64, 128)
STRIDES = (2, 2, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="input side (default %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPUs (default %(default)s)")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= args.threads <= len(allowed):
        parser.error(f"--threads must be in 1..{len(allowed)}, got {args.threads}")
    if args.size < 8 or args.size % 8:
        parser.error(f"--size must be a multiple of 8 (three 2x down-samplings), got {args.size}")
    os.sched_setaffinity(0, allowed[: args.threads])  # before JAX starts: XLA's pool size
    run(args)


def run(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx
    from monai.networks.nets import UNet as TorchUNet

    from jaxconv import interop
    from jaxconv.ports.monai_unet import UNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = dict(
        spatial_dims=3, in_channels=1, out_channels=2, channels=CHANNELS, strides=STRIDES,
        num_res_units=2,
    )  # fmt: skip
    torch_model = TorchUNet(**settings)
    model = nnx.eval_shape(lambda: UNet(**settings, rngs=nnx.Rngs(0)))  # nothing initialised
    state_dict = torch_model.state_dict()
    interop.load_state_dict(model, state_dict)

    x = torch.randn(args.batch, 1, args.size, args.size, args.size)
    target = torch.rand(args.batch, 2, args.size, args.size, args.size)
    x_ours = jnp.asarray(np.moveaxis(x.numpy(), 1, -1))
    target_ours = jnp.asarray(np.moveaxis(target.numpy(), 1, -1))

    def relative(ours, theirs) -> float:
        theirs = np.asarray(theirs, np.float64)
        return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())

    def channels_first(y):
        return np.moveaxis(np.asarray(y), -1, 1)

    @nnx.jit
    def forward(model, x):
        return model(x)

    @nnx.jit
    def forward_backward(model, x, target):
        def loss_fn(model):
            out = model(x)
            return jnp.mean((out - target) ** 2), out

        (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        return out, grads

    def torch_forward():
        with torch.no_grad():
            return torch_model(x)

    def torch_forward_backward():
        torch_model.zero_grad()
        out = torch_model(x)
        torch.mean((out - target) ** 2).backward()
        return out

    torch_model.eval(), model.eval()
    eval_diff = relative(channels_first(forward(model, x_ours)), torch_forward())
    torch_model.train(), model.train()
    out, grads = forward_backward(model, x_ours, target_ours)
    train_diff = relative(channels_first(out), torch_forward_backward().detach())
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grads = interop.to_state_dict(nnx.merge(graphdef, grads, rest))  # torch's keys, layouts
    # a conv bias before a norm has a gradient of 0 in exact arithmetic: its rounding
    # noise is measured against 1% of the largest gradient (as tests/test_ports_torch.py)
    floor = 1e-2 * max(float(p.grad.abs().max()) for p in torch_model.parameters())
    grad_diffs = {
        key: float(np.abs(grads[key] - p.grad.numpy()).max())
        / max(float(p.grad.abs().max()), floor)
        for key, p in torch_model.named_parameters()
    }
    worst = max(grad_diffs, key=grad_diffs.get)

    def paired(ours, theirs) -> tuple[list[float], list[float], float]:
        ours(), theirs()  # compiled, warm
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for r in range(args.rounds):
            order = [("ours", ours), ("theirs", theirs)]
            for who, fn in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                fn()
                times[who].append(time.perf_counter() - start)
        ratio = statistics.median(o / t for o, t in zip(times["ours"], times["theirs"]))
        return times["ours"], times["theirs"], ratio

    torch_model.eval(), model.eval()
    timings = {
        "forward": paired(lambda: jax.block_until_ready(forward(model, x_ours)), torch_forward)
    }
    torch_model.train(), model.train()
    timings["forward+backward"] = paired(
        lambda: jax.block_until_ready(forward_backward(model, x_ours, target_ours)),
        torch_forward_backward,
    )

    print(
        f"MONAI UNet 3-D: channels={CHANNELS}, strides={STRIDES}, num_res_units=2 "
        f"(InstanceNorm, PReLU); input ({args.batch}, 1, {args.size}, {args.size}, {args.size}); "
        f"threads: {args.threads}"
    )
    parameters = sum(p.numel() for p in torch_model.parameters())
    print(f"loaded by name: {len(state_dict)} tensors, {parameters:,} parameters, none renamed")
    print("largest difference from torch (max |jaxconv - torch| / max |torch|):")
    print(f"  evaluation output  {eval_diff:.1e}")
    print(f"  training output    {train_diff:.1e}")
    print(f"  gradients          {grad_diffs[worst]:.1e} (worst of {len(grad_diffs)}: {worst})")
    print(f"time per call, median of {args.rounds} paired rounds (min-max):")
    print(f"  {'':18}{'jaxconv (jit)':>24}{'torch (eager)':>24}{'jaxconv / torch':>18}")
    for name, (ours, theirs, ratio) in timings.items():

        def cell(t: list[float]) -> str:
            return f"{statistics.median(t) * 1e3:.1f} ms ({min(t) * 1e3:.0f}-{max(t) * 1e3:.0f})"

        print(f"  {name:18}{cell(ours):>24}{cell(theirs):>24}{ratio:>17.2f}x")


if __name__ == "__main__":
    main()
