"""What one benchmark case times, and how: a layer's implementations against torch, the
kernel gradient against a matmul, the autoencoder's train step, the matmul peak.

Every group of contenders is timed by :func:`bench.timing.time_checked` in paired
rounds, with jaxconv's contender (``auto``, ``jaxconv``) also timed as its own A/A pair,
and timed again where that pair disagrees. Implementations that resolve to the same
compiled program (on the CPU ``auto`` is ``fast``) are compiled and timed once, under
the first name (``timed_as`` says so).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from bench.profile import xla_op_profile
from bench.suite import Layer
from bench.timing import (
    MIN_ROUND_S,
    Contender,
    aa_name,
    cuda_sync,
    no_sync,
    paired_rounds,
    ratios,
    repeated,
    summary,
    time_checked,
    timed,
)
from jaxconv import fast_conv, models, ops, shapes, torch_models, train

MODES = ("forward", "forward+backward")
IMPLS = ("auto", "fast", "reference")
# fast's lowerings besides the one it picks per shape, forced by fast_conv's bounds while
# tracing: the transposed conv by phases or by overlap-add; every 'VALID' conv and kernel
# gradient XLA's own (no im2col, no native kernel); the kernel gradient by XLA's route
# where the native kernel would take it
LOWERINGS = {
    "fast: phases": {
        "OVERLAP_ADD_MAX_BYTES": 0,
        "OVERLAP_ADD_KERNEL_RATIO": 0,
        "PHASES_MIN_CHANNELS": 0,
        "TAP_PLANES_MAX_CHANNELS": 0,
    },
    "fast: overlap-add": {"OVERLAP_ADD_MAX_BYTES": 1 << 62, "TAP_PLANES_MAX_CHANNELS": 0},
    "fast: XLA convs": {"IM2COL_MAX_BYTES": 0, "NATIVE_MAX_CHANNEL_PAIRS": 0},
    "fast: no native": {"NATIVE_MAX_CHANNEL_PAIRS": 0},
}


def matmul_peak(n: int, rounds: int) -> dict:
    """GFLOP/s of an n x n float32 matmul, jax.jit and torch, in their best round."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    t = torch.from_numpy(np.asarray(a).copy())
    contenders = {
        "jax": lambda: matmul(a).block_until_ready(),
        "torch": Contender(lambda: t @ t, calls=1, spins=True),
    }
    times = paired_rounds(contenders, rounds)
    flops = 2 * n**3
    gflops = {name: flops / min(ts) / 1e9 for name, ts in times.items()}
    return {"n": n, "gflops_best_round": gflops, "peak_gflops": max(gflops.values())}


def _timed_as() -> dict[str, str]:
    """Each implementation's name in the timings: the first of ``IMPLS`` that resolves
    to the same program."""
    program = {impl: ops.resolve_impl(impl) for impl in IMPLS}
    return {impl: next(i for i in IMPLS if program[i] == program[impl]) for impl in IMPLS}


def op_case(
    layer: Layer,
    rounds: int,
    *,
    profile: bool = False,
    device: str = "cpu",
    min_round_s: float = MIN_ROUND_S,
    kernel_grad: bool = False,
    reference_max_gmac: float | None = None,
    torch_compile: bool = False,
    lowerings: bool = False,
) -> dict:
    """jaxconv's implementations and torch (``device``) on one layer, forward and
    forward+backward (the loss ``<y, r>`` for a fixed random ``r`` and its gradients in
    the input, kernel and bias); optionally torch.compile and the kernel gradient
    against a matmul, and ``fast``'s other ``LOWERINGS`` (each where it compiles to
    another program than ``auto``'s). JAX arrays live on JAX's default device. The
    reference is not compiled where its conv over the stride-dilated input exceeds
    ``reference_max_gmac``.
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
    sync = cuda_sync if device.startswith("cuda") else no_sync
    kwargs = dict(
        stride=layer.stride,
        padding=layer.padding,
        output_padding=layer.output_padding,
        groups=layer.groups,
    )
    timed_as = _timed_as()

    result = {
        "case": layer.name,
        **layer.describe(),
        "auto_impl": ops.resolve_impl("auto"),
        "timed_as": {impl: name for impl, name in timed_as.items() if impl != name},
        "device": {"jax": str(jax.devices()[0]), "torch": device},
        "compile_s": {},
        "not_timed": {},
    }
    arrays = (x, kernel, bias, r)
    wanted = {}  # (name timed, mode) -> (impl, fast_conv's bounds)
    for name in sorted(set(timed_as.values())):
        if name == "reference" and reference_max_gmac is not None:
            gmac = layer.dilated_macs() / 1e9
            if gmac > reference_max_gmac:
                result["not_timed"]["reference"] = (
                    f"its conv over the stride-dilated input is {gmac:.0f} GMAC "
                    f"(over {reference_max_gmac:g})"
                )
                continue
        wanted.update({(name, mode): (ops.resolve_impl(name), {}) for mode in MODES})
    forced = lowerings and ops.resolve_impl("auto") == "fast"
    if forced:
        for name, mode in itertools.product(LOWERINGS, MODES):
            wanted[(name, mode)] = ("fast", LOWERINGS[name])
    compiled: dict[tuple[str, str], tuple] = {}  # (name timed, mode) -> (program, args)
    texts = {}  # (name timed, mode) -> the program as traced (StableHLO)
    for (name, mode), (impl, bounds) in wanted.items():
        start = time.perf_counter()
        # every program from this one line: equal programs then have equal text, source
        # locations included
        *compiled[(name, mode)], texts[(name, mode)] = _program(
            impl, layer, kwargs, mode, arrays, bounds
        )
        result["compile_s"][f"{name} {mode}"] = time.perf_counter() - start
    if forced:
        result["same_as_auto"] = []
        for name, mode in itertools.product(LOWERINGS, MODES):
            if texts[(name, mode)] == texts[(timed_as["auto"], mode)]:
                del compiled[(name, mode)]
                result["same_as_auto"].append(f"{name} {mode}")

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
                result["compile_s"][f"torch.compile {mode}"] = timed(lambda: sync(fn(module)))
            torch_modules["torch.compile"] = module
        except Exception as error:  # a missing toolchain, an unsupported op
            result["torch.compile error"] = f"{type(error).__name__}: {str(error)[:300]}"

    for mode in MODES:
        contenders = {
            name: repeated(functools.partial(program, *args), jax.block_until_ready, min_round_s)
            for (name, m), (program, args) in compiled.items()
            if m == mode
        }
        for name, module in torch_modules.items():
            call = functools.partial(torch_fns[mode], module)
            contenders[name] = repeated(call, sync, min_round_s, spins=True)
        times, check = time_checked(contenders, rounds, aa="auto")
        aa = aa_name("auto")
        for impl, name in timed_as.items():
            if name in times:
                times[impl] = times[name]
        figures = {
            "ms": {name: summary(ts, 1e3) for name, ts in times.items()},
            "calls_per_round": {name: c.calls_per_round for name, c in contenders.items()},
            "aa": check,
        }
        for name in ("torch", "torch.compile"):
            if name in times:
                figures[f"{name}_over"] = {
                    impl: ratios(times[name], times[impl]) for impl in IMPLS if impl in times
                }
        figures["auto_over"] = {
            name: ratios(times["auto"], times[name])
            for name in ("fast", "reference", *LOWERINGS)
            if name in times
        }
        figures["ms"][aa] = figures["ms"].pop(aa)  # last, after the implementations
        result[mode] = figures

    if kernel_grad:
        result["kernel_gradient"] = kernel_gradient_case(
            layer, x, kernel, bias, r, kwargs, rounds, min_round_s
        )
    if profile:
        result["profile"] = xla_op_profile(*compiled[("auto", "forward+backward")], repeats=3)
    return result


def _program(impl: str, layer: Layer, kwargs: dict, mode: str, arrays: tuple, bounds: dict):
    """``impl``'s compiled program for ``mode`` (fast_conv's ``bounds`` set while tracing),
    its arguments and its text as traced (StableHLO: the same for the same program,
    unlike a compiled program's HLO once read back from JAX's compilation cache)."""
    x, kernel, bias, r = arrays
    argnums = (0, 1, 2) if layer.bias else (0, 1)

    def forward(x, kernel, bias):
        return ops.conv_transpose(x, kernel, bias, impl=impl, **kwargs)

    def forward_backward(x, kernel, bias, r):
        return jax.value_and_grad(lambda *a: jnp.vdot(forward(*a), r), argnums)(x, kernel, bias)

    fn, args = (forward, arrays[:3]) if mode == "forward" else (forward_backward, arrays)
    with _fast_conv_bounds(bounds):
        lowered = jax.jit(fn).lower(*args)
    return lowered.compile(), args, lowered.as_text()


@contextlib.contextmanager
def _fast_conv_bounds(bounds: dict):
    saved = {name: getattr(fast_conv, name) for name in bounds}
    for name, value in bounds.items():
        setattr(fast_conv, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(fast_conv, name, value)


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
    times, check = time_checked(contenders, rounds, aa="auto")
    return {
        "ms": {name: summary(ts, 1e3) for name, ts in times.items()},
        "calls_per_round": {name: c.calls_per_round for name, c in contenders.items()},
        "matmul_shape": [*lead, m, p, n],
        "gflop": 2 * layer.macs() / 1e9,
        "compile_s": compile_s,
        "over_matmul": ratios(times["auto"], times["matmul"]),
        "aa": check,
    }


# ----------------------------------------------------------------------------------
# The train step of the lecture autoencoder


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
    """The jit-compiled step of jaxconv's autoencoder (forward, MSE, backward, Adam; the
    loss and gradient of :func:`jaxconv.train.loss_and_grads`, in chunks of the batch on
    the CPU), its state ``[params, opt_state]``, random images, and its compile time in
    seconds."""
    config = models.AutoencoderConfig()
    task = config.task()
    tx = optax.adam(1e-3)
    params = models.init_params(config, 0)
    opt_state = jax.jit(tx.init)(params)

    def step(params, opt_state, images):
        loss, grads = train.loss_and_grads(task, params, {"image": images})
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    images = jax.random.uniform(jax.random.key(1), (batch, *config.image_shape))
    start = time.perf_counter()
    donate_argnums = (0, 1) if donate else ()
    compiled = jax.jit(step, donate_argnums=donate_argnums).lower(params, opt_state, images)
    compiled = compiled.compile()
    return compiled, [params, opt_state], images, time.perf_counter() - start


def torch_train_step(batch: int, compiled: bool, device: str = "cpu") -> Callable[[], object]:
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
    batch: int, rounds: int, min_round_s: float, with_compile: bool, profile: bool
) -> dict:
    """images/s of jaxconv's train step, torch eager and optionally torch.compile, paired
    rounds of at least ``min_round_s``; jaxconv's step is its own A/A pair."""
    compiled, state, images, jax_compile_s = jax_train_step(batch)

    def jax_step():
        state[0], state[1], loss = compiled(state[0], state[1], images)
        return loss

    steps = {
        "jaxconv": (jax_step, jax.block_until_ready),
        "torch eager": (torch_train_step(batch, compiled=False), no_sync),
    }
    result = {"batch": batch, "compile_s": {"jaxconv": jax_compile_s}}
    if with_compile:
        try:
            torch_compiled = torch_train_step(batch, compiled=True)
            result["compile_s"]["torch.compile (first step)"] = timed(torch_compiled)
            steps["torch.compile"] = (torch_compiled, no_sync)
        except Exception as error:  # torch.compile needs a C++ toolchain
            result["torch.compile error"] = f"{type(error).__name__}: {str(error)[:200]}"
    contenders = {
        name: repeated(call, sync, min_round_s, spins=name.startswith("torch"))
        for name, (call, sync) in steps.items()
    }
    times, check = time_checked(contenders, rounds, aa="jaxconv")
    per_image = {name: [t / batch for t in ts] for name, ts in times.items()}
    result["steps_per_round"] = {name: c.calls_per_round for name, c in contenders.items()}
    result["images_per_s"] = {name: summary([1 / t for t in ts]) for name, ts in per_image.items()}
    result["jaxconv_over_torch_eager"] = ratios(per_image["torch eager"], per_image["jaxconv"])
    if "torch.compile" in per_image:
        result["jaxconv_over_torch_compile"] = ratios(
            per_image["torch.compile"], per_image["jaxconv"]
        )
    result["aa"] = check
    if profile:  # the same step, without donated buffers, so that it can be rerun
        compiled, state, images, _ = jax_train_step(batch, donate=False)
        result["profile"] = xla_op_profile(compiled, (*state, images), repeats=8)
    return result
