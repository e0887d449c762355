"""jaxconv.nnx.MaxPool / AvgPool against torch.nn.MaxPoolNd / AvgPoolNd on random
configurations: outputs and input gradients in float32 and bfloat16, and torch raising
exactly where jaxconv raises.

The configurations cover 1-3 spatial dimensions, int and per-dimension arguments,
``stride=None``, padding up to half the kernel (and now and then past it), dilation,
``ceil_mode`` (sizes where torch's last-window rule drops a window come up often on
these small inputs), ``count_include_pad`` and ``divisor_override``, and bad arguments.
The inputs have distinct values per example and channel, so that every window has one
maximum (bfloat16 ties would make the gradient's choice arbitrary). See layer_parity.py
for the tolerances; ``JAXCONV_PARITY=full`` runs the full set.
"""

import random

import jax
import numpy as np
import pytest
import torch
from conftest import parity_count
from layer_parity import (
    FORWARD_TOL,
    GRADIENT_TOL,
    check,
    chunk_id,
    chunks,
    cotangent,
    distinct_input,
    forward_and_vjp,
    jaxconv_raises,
    rounded,
    run_together,
    to_jax,
    to_torch_layout,
    torch_result,
)

from jaxconv import nnx as jnnx
from jaxconv import shapes

pytestmark = pytest.mark.parity

NUM_CONFIGS = parity_count(300, 32)
MAX_POOL = {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}
AVG_POOL = {1: torch.nn.AvgPool1d, 2: torch.nn.AvgPool2d, 3: torch.nn.AvgPool3d}


def _per_dim(rng: random.Random, ndim: int, low: int, high: int):
    if rng.random() < 0.5:
        return rng.randint(low, high)
    return tuple(rng.randint(low, high) for _ in range(ndim))


def _dims(value, ndim):
    return (value,) * ndim if isinstance(value, int) else value


def pool_config(seed: int) -> dict:
    rng = random.Random(30_000 + seed)
    kind = rng.choice(["max", "avg"])
    ndim = rng.choice([1, 2, 2, 3])
    kernel = _per_dim(rng, ndim, 1, 4 if ndim < 3 else 3)
    dilation = _per_dim(rng, ndim, 1, 3) if kind == "max" else 1
    # padding up to half the kernel, one past it now and then (torch refuses that)
    half = [k // 2 + (rng.random() < 0.05) for k in _dims(kernel, ndim)]
    padding = tuple(rng.randint(0, h) for h in half) if rng.random() < 0.7 else 0
    # sizes around the padded window's extent, where ceil_mode's rule and "too small" live
    spatial = tuple(
        max(1, d * (k - 1) + 1 - 2 * p + rng.randint(-1, 4 if ndim < 3 else 2))
        for k, d, p in zip(*(_dims(a, ndim) for a in (kernel, dilation, padding)))
    )
    cfg = dict(
        kind=kind,
        ndim=ndim,
        shape=(rng.randint(1, 2), rng.randint(1, 3), *spatial),
        kernel_size=kernel,
        stride=None if rng.random() < 0.25 else _per_dim(rng, ndim, 1, 3),
        padding=padding,
        ceil_mode=rng.random() < 0.5,
        dtype="bfloat16" if rng.random() < 0.25 else "float32",
    )
    if kind == "max":
        cfg["dilation"] = dilation
    else:
        cfg["count_include_pad"] = rng.random() < 0.5
        if ndim > 1 and rng.random() < 0.3:  # torch's AvgPool1d has no divisor_override
            cfg["divisor_override"] = rng.choice([1, 2, 3, 5, -2, 0])
    if rng.random() < 0.06:  # a bad argument of another kind
        key, value = rng.choice(
            [("kernel_size", 0), ("stride", 0), ("padding", -1), ("ceil_mode", 1),
             ("kernel_size", 2.0)]
        )  # fmt: skip
        cfg[key] = value
    return cfg


def window_outside_input(cfg: dict) -> bool:
    """Whether some dilated max-pooling window falls wholly in the padding (its positions
    ``start + j d`` all outside the input). torch 2.13 reads outside its buffers there
    (it aborted with "free(): invalid size"); jaxconv gives ``-inf``."""
    if cfg["kind"] != "max":
        return False
    ndim, spatial = cfg["ndim"], cfg["shape"][2:]
    try:
        out = shapes.pool_output_shape(spatial, **_arguments(cfg))
    except (TypeError, ValueError):
        return False
    k, d, p = (_dims(cfg[key], ndim) for key in ("kernel_size", "dilation", "padding"))
    s = k if cfg["stride"] is None else _dims(cfg["stride"], ndim)
    return any(
        all(not 0 <= i * si - pi + j * di < n for j in range(ki))
        for n, m, ki, si, pi, di in zip(spatial, out, k, s, p, d)
        for i in range(m)
    )


def _arguments(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("kind", "ndim", "shape", "dtype")}


def _torch_run(cfg: dict, seed: int):
    """torch's (x, y, r, x.grad) on the bfloat16-rounded input, or None if it raises."""
    x = rounded(distinct_input(cfg["shape"], seed), cfg["dtype"]).requires_grad_()
    layers = MAX_POOL if cfg["kind"] == "max" else AVG_POOL

    def run():
        y = layers[cfg["ndim"]](**_arguments(cfg))(x)
        r = cotangent(y.shape, seed, cfg["dtype"])
        (y * r).sum().backward()
        return x, y.detach(), r, x.grad

    return torch_result(run)


def _jaxconv_layer(cfg: dict):
    args = _arguments(cfg)
    if not (cfg["ndim"] == 2 and isinstance(args["kernel_size"], int)):
        args["kernel_size"] = _dims(args["kernel_size"], cfg["ndim"])  # an int means 2-D
    return (jnnx.MaxPool if cfg["kind"] == "max" else jnnx.AvgPool)(**args)


@pytest.mark.parametrize("seeds", chunks(NUM_CONFIGS), ids=chunk_id)
def test_pooling_matches_torch(seeds):
    functions, arguments, references = [], [], []
    for seed in seeds:
        cfg = pool_config(seed)
        if window_outside_input(cfg):
            continue  # torch's result is undefined: test_a_window_in_the_padding_is_minus_inf
        reference = _torch_run(cfg, seed)
        x_spec = jax.ShapeDtypeStruct((cfg["shape"][0], *cfg["shape"][2:], cfg["shape"][1]),
                                      cfg["dtype"])  # fmt: skip
        raises = jaxconv_raises(lambda: jax.eval_shape(_jaxconv_layer(cfg), x_spec))
        torch_raises = reference is None
        assert raises == torch_raises, f"seed {seed}: torch raises: {torch_raises}, {cfg}"
        if reference is None:
            continue
        x, y, r, dx = reference
        functions.append(forward_and_vjp(_jaxconv_layer(cfg)))
        arguments.append((to_jax(x, cfg["dtype"]), to_jax(r, cfg["dtype"])))
        references.append((seed, cfg, y, dx))
    for (y_jax, (dx_jax,)), (seed, cfg, y, dx) in zip(
        run_together(functions, arguments), references
    ):
        what = f"seed {seed} {cfg}"
        check(to_torch_layout(y_jax), y.numpy(), FORWARD_TOL[cfg["dtype"]], f"{what}: output")
        check(to_torch_layout(dx_jax), dx.numpy(), GRADIENT_TOL[cfg["dtype"]], f"{what}: dx")


def test_a_window_in_the_padding_is_minus_inf():
    """MaxPool1d(2, padding=1, dilation=2) on one position: the first window reads
    positions -1 and 1, both padding."""
    y = jnnx.MaxPool((2,), stride=1, padding=1, dilation=2)(jax.numpy.ones((1, 1, 1)))
    assert y.shape == (1, 1, 1) and float(y[0, 0, 0]) == -np.inf
    assert window_outside_input(
        dict(kind="max", ndim=1, shape=(1, 1, 1), kernel_size=2, stride=1, padding=1,
             dilation=2, ceil_mode=False)
    )  # fmt: skip


def test_the_configurations_cover_what_they_claim():
    """The full set's coverage: each feature comes up, raising and not."""
    cfgs = [pool_config(seed) for seed in range(300)]
    cfgs = [cfg for cfg in cfgs if not window_outside_input(cfg)]
    runs = [(cfg, _torch_run(cfg, seed)) for seed, cfg in enumerate(cfgs)]
    ok = [cfg for cfg, ref in runs if ref is not None]
    counts = {
        "torch raises": len(cfgs) - len(ok),
        "ceil_mode": sum(cfg["ceil_mode"] is True for cfg in ok),
        "padding": sum(any(np.atleast_1d(cfg["padding"])) for cfg in ok),
        "dilation": sum(any(np.atleast_1d(cfg.get("dilation", 1)) > 1) for cfg in ok),
        "divisor_override": sum(cfg.get("divisor_override") is not None for cfg in ok),
        "exclude pad": sum(cfg.get("count_include_pad") is False for cfg in ok),
        "bfloat16": sum(cfg["dtype"] == "bfloat16" for cfg in ok),
        "3-D": sum(cfg["ndim"] == 3 for cfg in ok),
    }
    assert len(ok) >= 180 and min(counts.values()) >= 15, counts
