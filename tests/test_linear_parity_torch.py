"""jaxconv.nnx.Linear, PReLU and a Flatten -> Linear head against torch on random
configurations: outputs and gradients (input, kernel = weight.T, bias, slopes) in
float32 and bfloat16. torch's weights go in as they are (the kernel transposed): a
ported head computes torch's numbers. See layer_parity.py for the tolerances.
"""

import random

import jax
import jax.numpy as jnp
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
    rounded,
    run_together,
    to_jax,
    to_torch_layout,
)

from jaxconv import nnx as jnnx

pytestmark = pytest.mark.parity

NUM_CONFIGS = parity_count(96, 16)


def config(seed: int) -> dict:
    rng = random.Random(70_000 + seed)
    kind = rng.choice(["linear", "prelu", "head"])
    cfg = dict(kind=kind, dtype="bfloat16" if rng.random() < 0.25 else "float32",
               batch=rng.randint(1, 3), channels=rng.randint(1, 5))  # fmt: skip
    if kind == "linear":
        lead = tuple(rng.randint(1, 3) for _ in range(rng.randint(0, 2)))
        cfg.update(shape=(*lead, rng.randint(1, 8)), out=rng.randint(1, 6), bias=rng.random() < 0.7)
    elif kind == "prelu":
        spatial = tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 3)))
        cfg.update(shape=(cfg["batch"], cfg["channels"], *spatial),
                   num_parameters=rng.choice([1, cfg["channels"]]))  # fmt: skip
    else:
        spatial = tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 3)))
        cfg.update(shape=(cfg["batch"], cfg["channels"], *spatial), out=rng.randint(1, 4),
                   bias=rng.random() < 0.7)  # fmt: skip
    return cfg


def _torch_module(cfg: dict, g: torch.Generator) -> torch.nn.Module:
    if cfg["kind"] == "linear":
        module = torch.nn.Linear(cfg["shape"][-1], cfg["out"], bias=cfg["bias"])
    elif cfg["kind"] == "prelu":
        module = torch.nn.PReLU(cfg["num_parameters"])
    else:
        features = int(np.prod(cfg["shape"][1:]))
        module = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(features, cfg["out"], bias=cfg["bias"])
        )
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(rounded(torch.randn(p.shape, generator=g) * 0.5, "bfloat16"))
    return module


def _jaxconv_module(cfg: dict, torch_module: torch.nn.Module) -> nnx.Module:
    dtype = "bfloat16" if cfg["dtype"] == "bfloat16" else None
    if cfg["kind"] == "prelu":
        layer = jnnx.PReLU(cfg["num_parameters"], dtype=dtype)
        layer.weight[...] = jnp.asarray(torch_module.weight.detach().numpy())
        return layer
    linear_torch = torch_module if cfg["kind"] == "linear" else torch_module[1]
    linear = jnnx.Linear(linear_torch.in_features, linear_torch.out_features,
                         bias=cfg["bias"], dtype=dtype, rngs=nnx.Rngs(0))  # fmt: skip
    linear.kernel[...] = jnp.asarray(linear_torch.weight.detach().numpy().T)
    if cfg["bias"]:
        linear.bias[...] = jnp.asarray(linear_torch.bias.detach().numpy())
    return linear if cfg["kind"] == "linear" else nnx.Sequential(jnnx.Flatten(), linear)


def _torch_grads(cfg: dict, module: torch.nn.Module) -> dict:
    if cfg["kind"] == "prelu":
        return {"weight": module.weight.grad.numpy()}
    linear = module if cfg["kind"] == "linear" else module[1]
    grads = {"kernel": linear.weight.grad.numpy().T}
    if cfg["bias"]:
        grads["bias"] = linear.bias.grad.numpy()
    return grads


def _apply(graphdef):
    def run(x, params, r):
        y, vjp = jax.vjp(lambda x, p: nnx.merge(graphdef, p)(x), x, params)
        return y, vjp(r.astype(y.dtype))

    return run


@pytest.mark.parametrize("seeds", chunks(NUM_CONFIGS), ids=chunk_id)
def test_linear_prelu_and_flatten_heads_match_torch(seeds):
    functions, arguments, references = [], [], []
    for seed in seeds:
        cfg = config(seed)
        g = torch.Generator().manual_seed(seed)
        module = _torch_module(cfg, g)
        x = rounded(torch.randn(cfg["shape"], generator=g), cfg["dtype"]).requires_grad_()
        y = module(x)
        r = cotangent(y.shape, seed, cfg["dtype"])
        (y * r).sum().backward()
        channels_last = cfg["kind"] != "linear"  # Linear reads the same array as torch
        graphdef, params = nnx.split(_jaxconv_module(cfg, module))
        functions.append(_apply(graphdef))
        r_jax = to_jax(r, cfg["dtype"], channels_last=cfg["kind"] == "prelu")
        arguments.append((to_jax(x, cfg["dtype"], channels_last), params, r_jax))
        grads = _torch_grads(cfg, module)
        references.append((seed, cfg, y.detach().numpy(), x.grad.numpy(), grads))
    for (y, (dx, dparams)), (seed, cfg, ty, tdx, tgrads) in zip(
        run_together(functions, arguments), references
    ):
        what = f"seed {seed} {cfg}"
        tol, gtol = FORWARD_TOL[cfg["dtype"]], GRADIENT_TOL[cfg["dtype"]]
        check(to_torch_layout(y, cfg["kind"] == "prelu"), ty, tol, f"{what}: output")
        check(to_torch_layout(dx, cfg["kind"] != "linear"), tdx, gtol, f"{what}: dx")
        grads = nnx.to_pure_dict(dparams)
        if cfg["kind"] == "head":
            grads = grads["layers"][1]
        for name, expected in tgrads.items():
            check(np.asarray(grads[name]), expected, gtol, f"{what}: d{name}")
