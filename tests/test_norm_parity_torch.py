"""jaxconv.nnx's BatchNorm, InstanceNorm, GroupNorm and LayerNorm against torch's on
random configurations: outputs, gradients (input, scale, bias) and running statistics
over a few steps in training and evaluation mode, in float32 and bfloat16, and torch
raising exactly where jaxconv raises.

A configuration runs one or two steps, each in training or evaluation mode
(``model.train()`` / ``model.eval()``), on fresh inputs with an offset and a spread (as
activations have), starting from random affine parameters and running statistics (and
``num_batches_tracked``, for ``momentum=None``'s cumulative average). Inputs have 0-3
spatial dimensions (BatchNorm, GroupNorm) or 1-3 (InstanceNorm); LayerNorm normalises
the last 1-3 axes of a 2-4 dimensional array, the same array in both. Bad arguments
come up now and then: channel counts that differ from ``num_features``, one value per
channel in training, ``eps <= 0``, groups that do not divide the channels, a
``normalized_shape`` the input does not end with. The running statistics are float32
in both dtypes (compared within 1e-5); see layer_parity.py for the other tolerances.
"""

import random
import warnings

import jax
import numpy as np
import pytest
import torch
from conftest import parity_count
from flax import nnx
from layer_parity import (
    FORWARD_TOL,
    GRADIENT_TOL,
    check,
    chunk_id,
    chunks,
    cotangent,
    jaxconv_raises,
    rounded,
    run_together,
    to_jax,
    to_torch_layout,
    torch_result,
)

from jaxconv import nnx as jnnx

pytestmark = [pytest.mark.parity, pytest.mark.filterwarnings("ignore:x has .* channels")]

NUM_CONFIGS = parity_count(300, 32)
STATS_TOL = 1e-5
BATCH_NORM = {0: torch.nn.BatchNorm1d, 1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d,
              3: torch.nn.BatchNorm3d}  # fmt: skip
INSTANCE_NORM = {1: torch.nn.InstanceNorm1d, 2: torch.nn.InstanceNorm2d,
                 3: torch.nn.InstanceNorm3d}  # fmt: skip


def norm_config(seed: int) -> dict:
    rng = random.Random(60_000 + seed)
    kind = rng.choice(["batch", "batch", "instance", "group", "layer"])
    channels = rng.randint(1, 6)
    ndim = rng.choice([0, 1, 2, 3] if kind in ("batch", "group") else [1, 2, 3])
    spatial = tuple(rng.randint(1, 5 if ndim < 3 else 3) for _ in range(ndim))
    cfg = dict(kind=kind, batch=rng.randint(1, 4), channels=channels, spatial=spatial,
               eps=rng.choice([1e-5, 1e-5, 1e-3]),
               dtype="bfloat16" if rng.random() < 0.25 else "float32")  # fmt: skip
    if kind in ("batch", "instance"):
        cfg.update(
            num_features=channels,
            momentum=rng.choice([0.1, 0.1, 0.3, None]),
            affine=rng.random() < (0.7 if kind == "batch" else 0.4),
            track_running_stats=rng.random() < (0.8 if kind == "batch" else 0.5),
        )
        # with running statistics: two steps, training then either, or evaluation then
        # training; without, one step in either mode (both use the batch's statistics)
        if cfg["track_running_stats"]:
            cfg["modes"] = rng.choice([("train", "eval"), ("train", "train"), ("eval", "train")])
        else:
            cfg["modes"] = (rng.choice(["train", "eval"]),)
        if rng.random() < 0.05:
            cfg["num_features"] = channels + 1
        if kind == "batch" and rng.random() < 0.04:
            cfg["eps"] = rng.choice([0.0, -1e-5])
    elif kind == "group":
        groups = rng.choice([d for d in range(1, channels + 1) if channels % d == 0])
        cfg.update(num_groups=groups if rng.random() > 0.05 else channels + 1,
                   affine=rng.random() < 0.7, modes=("train",))  # fmt: skip
    else:
        shape = (cfg["batch"], *(rng.randint(1, 5) for _ in range(rng.randint(1, 3))))
        k = rng.randint(1, len(shape) - 1)
        normalized = shape[-k:]
        if rng.random() < 0.05:
            normalized = (*normalized[:-1], normalized[-1] + 1)
        cfg.update(shape=shape, normalized_shape=normalized if k > 1 or rng.random() < 0.5
                   else normalized[0], elementwise_affine=rng.random() < 0.7,
                   bias=rng.random() < 0.7, modes=("train",))  # fmt: skip
    return cfg


def torch_shape(cfg: dict) -> tuple[int, ...]:
    if cfg["kind"] == "layer":
        return cfg["shape"]
    return (cfg["batch"], cfg["channels"], *cfg["spatial"])


def _torch_module(cfg: dict) -> torch.nn.Module:
    kind, ndim = cfg["kind"], len(cfg["spatial"])
    if kind == "batch":
        args = {k: cfg[k] for k in ("eps", "momentum", "affine", "track_running_stats")}
        return BATCH_NORM[ndim](cfg["num_features"], **args)
    if kind == "instance":
        args = {k: cfg[k] for k in ("eps", "momentum", "affine", "track_running_stats")}
        return INSTANCE_NORM[ndim](cfg["num_features"], **args)
    if kind == "group":
        return torch.nn.GroupNorm(cfg["num_groups"], cfg["channels"], cfg["eps"], cfg["affine"])
    args = {k: cfg[k] for k in ("eps", "elementwise_affine", "bias")}
    return torch.nn.LayerNorm(cfg["normalized_shape"], **args)


def _jaxconv_module(cfg: dict, dtype: str | None) -> nnx.Module:
    kind = cfg["kind"]
    if kind in ("batch", "instance"):
        args = {k: cfg[k] for k in ("eps", "momentum", "affine", "track_running_stats")}
        layer = jnnx.BatchNorm if kind == "batch" else jnnx.InstanceNorm
        return layer(cfg["num_features"], **args, dtype=dtype)
    if kind == "group":
        return jnnx.GroupNorm(cfg["num_groups"], cfg["channels"], cfg["eps"], cfg["affine"],
                              dtype=dtype)  # fmt: skip
    args = {k: cfg[k] for k in ("eps", "elementwise_affine", "bias")}
    return jnnx.LayerNorm(cfg["normalized_shape"], **args, dtype=dtype)


def _randomise(module: torch.nn.Module, g: torch.Generator) -> None:
    """Random affine parameters and running statistics, so that both matter."""
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.5 + (name == "weight"))
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
            module.num_batches_tracked.fill_(int(torch.randint(0, 4, (), generator=g)))


def _grads(module: torch.nn.Module) -> dict:
    grads = {}
    for name, tensor in module.named_parameters():
        grads[name] = tensor.grad.numpy().copy()
        tensor.grad = None
    return grads


def _stats(module: torch.nn.Module) -> dict:
    if getattr(module, "running_mean", None) is None:
        return {}
    return {name: getattr(module, name).numpy().copy()
            for name in ("running_mean", "running_var", "num_batches_tracked")}  # fmt: skip


def _torch_run(cfg: dict, seed: int):
    """The initial module and, per step, (x, r, y, dx, parameter grads, stats after);
    None where torch raises."""
    g = torch.Generator().manual_seed(seed)

    exact = degenerate(cfg)

    def run():
        module = _torch_module(cfg)
        _randomise(module, g)
        if exact:
            module.double()
        initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
        steps = []
        for mode in cfg["modes"]:
            module.train(mode == "train")
            offset = float(torch.randn((), generator=g)) * 3
            x = torch.randn(torch_shape(cfg), generator=g) * (1 + 2 * torch.rand((), generator=g))
            x = rounded(x + offset, cfg["dtype"])
            x = (x.double() if exact else x).requires_grad_()
            y = module(x)
            r = cotangent(y.shape, seed + len(steps), cfg["dtype"]).to(y.dtype)
            (y * r).sum().backward()
            step = (x.detach(), r, y.detach(), x.grad.numpy(), _grads(module), _stats(module))
            steps.append(step)
        return initial, steps

    return torch_result(run)


def _load(layer: nnx.Module, initial: dict) -> None:
    names = {"weight": "scale", "bias": "bias"}  # the rest keep torch's names
    for key, value in initial.items():
        variable = getattr(layer, names.get(key, key))
        variable[...] = jax.numpy.asarray(value.numpy(), variable[...].dtype)


def _jaxconv_steps(cfg: dict, initial: dict | None):
    """``run(xs, rs, params, stats)`` of the jaxconv layer through the configuration's
    steps (outputs, gradients and statistics of each), and its initial (params, stats)."""
    dtype = "bfloat16" if cfg["dtype"] == "bfloat16" else None
    layer = _jaxconv_module(cfg, dtype)
    if initial is not None:
        _load(layer, initial)
    graphdefs = {}
    for mode in set(cfg["modes"]):
        layer.train() if mode == "train" else layer.eval()
        graphdefs[mode], params, stats = nnx.split(layer, nnx.Param, nnx.BatchStat)

    def run(xs, rs, params, stats):
        results = []
        for mode, x, r in zip(cfg["modes"], xs, rs):

            def forward(x, params, stats=stats, mode=mode):
                fresh = jax.tree.map(lambda a: a, stats)  # Variables of this trace level
                module = nnx.merge(graphdefs[mode], params, fresh)
                y = module(x)
                return y, nnx.state(module, nnx.BatchStat)

            y, vjp, stats = jax.vjp(forward, x, params, has_aux=True)
            dx, dparams = vjp(r.astype(y.dtype))
            results.append((y, dx, dparams, stats))
        return results

    return run, params, stats


def _abstract_run(cfg: dict, spec: jax.ShapeDtypeStruct) -> None:
    """The layer built and called abstractly in each of the configuration's modes:
    raises where jaxconv does."""
    layer = _jaxconv_module(cfg, "bfloat16" if cfg["dtype"] == "bfloat16" else None)
    for mode in set(cfg["modes"]):
        layer.train() if mode == "train" else layer.eval()
        graphdef, state = nnx.split(layer)
        jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x), state, spec)


def values_per_statistic(cfg: dict, mode: str) -> int | None:
    """How many values a step's mean and variance are over (None: running statistics)."""
    spatial = int(np.prod(cfg.get("spatial", ())))
    kind = cfg["kind"]
    batch_stats = mode == "train" or not cfg.get("track_running_stats")
    if kind == "batch":
        return cfg["batch"] * spatial if batch_stats else None
    if kind == "instance":
        return spatial if batch_stats else None
    if kind == "group":
        return cfg["channels"] // cfg["num_groups"] * spatial
    return int(np.prod(np.atleast_1d(cfg["normalized_shape"])))


def degenerate(cfg: dict) -> bool:
    """Statistics over 1 or 2 values, where float32 results are rounding-bound: one value
    normalises to exactly 0 (torch's float32 group and layer norms give ~1e-4 noise
    there, computing the variance as E[x^2] - E[x]^2), two to (-1, 1) within eps, with
    ``dx`` ~eps / var. There the reference is torch in float64; ``dx`` and ``dweight``
    of one value must be 0 (the normalised value is) and ``dx`` of two values is not
    compared (any float32 implementation's is noise)."""
    counts = [values_per_statistic(cfg, mode) for mode in cfg["modes"]]
    return any(n is not None and n <= 2 for n in counts)


def _layout(cfg: dict) -> bool:
    return cfg["kind"] != "layer"  # LayerNorm: the same array in both


@pytest.mark.parametrize("seeds", chunks(NUM_CONFIGS), ids=chunk_id)
def test_norms_match_torch(seeds):
    functions, arguments, references = [], [], []
    for seed in seeds:
        cfg = norm_config(seed)
        reference = _torch_run(cfg, seed)
        channels_last = _layout(cfg)
        shape = torch_shape(cfg)
        spec_shape = (shape[0], *shape[2:], shape[1]) if channels_last and len(shape) > 2 else shape
        spec = jax.ShapeDtypeStruct(spec_shape, cfg["dtype"])

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raises = jaxconv_raises(lambda: _abstract_run(cfg, spec))
        torch_raises = reference is None
        assert raises == torch_raises, f"seed {seed}: torch raises: {torch_raises}, {cfg}"
        if reference is None:
            continue
        initial, steps = reference
        run, params, stats = _jaxconv_steps(cfg, initial)
        xs = [to_jax(x, cfg["dtype"], channels_last) for x, *_ in steps]
        rs = [to_jax(r, cfg["dtype"], channels_last) for _, r, *_ in steps]
        functions.append(run)
        arguments.append((xs, rs, params, stats))
        references.append((seed, cfg, steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_together(functions, arguments)
    for ours, (seed, cfg, steps) in zip(results, references):
        tol, gtol = FORWARD_TOL[cfg["dtype"]], GRADIENT_TOL[cfg["dtype"]]
        channels_last = _layout(cfg)
        for i, ((y, dx, dparams, stats), (_, _, ty, tdx, tgrads, tstats)) in enumerate(
            zip(ours, steps)
        ):
            what = f"seed {seed} step {i} ({cfg['modes'][i]}) {cfg}"
            check(to_torch_layout(y, channels_last), ty.numpy(), tol, f"{what}: output")
            count = values_per_statistic(cfg, cfg["modes"][i])
            if count == 1:  # one value normalises to 0 whatever it is: dx is exactly 0
                assert not np.any(np.asarray(dx)), f"{what}: dx of one value"
            elif count != 2:
                check(to_torch_layout(dx, channels_last), tdx, gtol, f"{what}: dx")
            grads = nnx.to_pure_dict(dparams)
            for name, expected in tgrads.items():
                got = np.asarray(grads["scale" if name == "weight" else "bias"])
                if count == 1 and name == "weight":  # the normalised values are all 0
                    assert not np.any(got), f"{what}: dweight of one value"
                else:
                    check(got, expected, gtol, f"{what}: d{name}")
            got_stats = nnx.to_pure_dict(stats)
            for name, expected in tstats.items():
                if name == "num_batches_tracked":
                    assert int(got_stats[name]) == int(expected), f"{what}: {name}"
                else:
                    check(np.asarray(got_stats[name]), expected, STATS_TOL, f"{what}: {name}")


def test_the_configurations_cover_what_they_claim():
    cfgs = [norm_config(seed) for seed in range(300)]
    ok = [cfg for seed, cfg in enumerate(cfgs) if _torch_run(cfg, seed) is not None]
    norms = ("batch", "instance")
    counts = {
        "torch raises": len(cfgs) - len(ok),
        **{kind: sum(c["kind"] == kind for c in ok) for kind in ("batch", "instance", "group",
                                                                 "layer")},
        **{f"{kind} {d}-D": sum(c["kind"] == kind and len(c["spatial"]) == d for c in ok)
           for kind in ("batch", "instance", "group") for d in (1, 2, 3)},
        "eval with running stats": sum(c["kind"] in norms and c["track_running_stats"]
                                       and "eval" in c["modes"] for c in ok),
        "momentum=None, training": sum(c["kind"] in norms and c["momentum"] is None
                                       and c["track_running_stats"] for c in ok),
        "bfloat16": sum(c["dtype"] == "bfloat16" for c in ok),
    }  # fmt: skip
    assert len(ok) >= 250 and min(counts.values()) >= 5, counts
