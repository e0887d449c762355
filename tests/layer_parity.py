"""Shared by the layer parity tests (test_*_parity_torch.py): tolerances, torch's
errors, bfloat16 references, and running many configurations in one compile.

Tolerances are relative to the scale of torch's result, ``max |got - torch| / max
|torch|``: 1e-5 for float32 outputs and 1e-4 for float32 gradients (issue 17). A
bfloat16 run is compared with torch in float32 on the same bfloat16-rounded inputs
(and cotangents), so the reference has no bfloat16 error of its own: jaxconv computes
in float32 inside and rounds its result to bfloat16 once, an error of at most half a
bfloat16 unit, 2^-8 of the scale; the tolerance is 2^-7 (two roundings) for outputs
and gradients.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch

torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine
TORCH_ERRORS = (RuntimeError, ValueError, TypeError, NotImplementedError, IndexError,
                ZeroDivisionError)  # fmt: skip
FORWARD_TOL = {"float32": 1e-5, "bfloat16": 2**-7}
GRADIENT_TOL = {"float32": 1e-4, "bfloat16": 2**-7}
CHUNK = 16  # configurations compiled together in one program


def chunks(count: int) -> list[range]:
    """``range(count)`` in pieces of :data:`CHUNK` (one test and one compile each)."""
    return [range(i, min(i + CHUNK, count)) for i in range(0, count, CHUNK)]


def chunk_id(seeds: range) -> str:
    return f"{seeds.start}-{seeds.stop - 1}"


def torch_result(run: Callable[[], object]) -> object | None:
    """``run()``, or None where torch raises (its warnings silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run()
    except TORCH_ERRORS:
        return None


def rounded(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """``t`` as the float32 torch reference sees a ``dtype`` input: rounded to it."""
    return t.to(torch.bfloat16).float() if dtype == "bfloat16" else t


def to_jax(t: torch.Tensor, dtype: str, channels_last: bool = True) -> jax.Array:
    a = t.detach().float().numpy()
    if channels_last and a.ndim >= 3:
        a = np.moveaxis(a, 1, -1)
    return jnp.asarray(a, dtype=dtype)


def to_torch_layout(a: jax.Array, channels_last: bool = True) -> np.ndarray:
    a = np.asarray(jnp.asarray(a, jnp.float32))
    return np.moveaxis(a, -1, 1) if channels_last and a.ndim >= 3 else a


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    expected = np.asarray(expected, np.float64)
    scale = float(np.abs(expected).max(initial=0.0))
    err = float(np.abs(np.asarray(got, np.float64) - expected).max(initial=0.0))
    return err / scale if scale else err


def check(got: np.ndarray, expected: np.ndarray, tol: float, what: str) -> float:
    """Asserts equal shapes and ``relative_error <= tol``; returns the error."""
    expected = np.asarray(expected)
    assert np.shape(got) == expected.shape, f"{what}: shape {np.shape(got)} != {expected.shape}"
    err = relative_error(got, expected)
    assert err <= tol, f"{what}: max error {err:.3g} of the output scale > {tol:.3g}"
    return err


def cotangent(shape: Sequence[int], seed: int, dtype: str) -> torch.Tensor:
    r = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))
    return rounded(r, dtype)


def run_together(functions: Sequence[Callable], arguments: Sequence[tuple]) -> list:
    """``[f(*args) for f, args in zip(functions, arguments)]`` compiled as one program:
    the configurations of a chunk share one compile. XLA's HLO passes run as usual, only
    LLVM's code generation is left unoptimised (it dominates small programs' compile)."""

    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def run(arguments):
        return [f(*args) for f, args in zip(functions, arguments)]

    return run(list(arguments))


def forward_and_vjp(f: Callable) -> Callable:
    """A function of ``(*primals, cotangent)`` giving ``(f(*primals), vjp(cotangent))``."""

    def run(*args):
        *primals, cot = args
        y, vjp = jax.vjp(f, *primals)
        return y, vjp(cot.astype(y.dtype))

    return run


def jaxconv_raises(run: Callable[[], object]) -> bool:
    """Whether ``run()`` (a construction and an abstract call) raises jaxconv's errors:
    ``ValueError`` or ``TypeError``, nothing else."""
    try:
        run()
    except (ValueError, TypeError):
        return True
    return False


def distinct_input(shape: Sequence[int], seed: int) -> torch.Tensor:
    """A torch input ``(batch, channels, *spatial)`` whose values differ within each
    example and channel and are exact in bfloat16 (multiples of 1/16 below 16 in
    magnitude for up to 512 positions): a maximum has one position, in both dtypes."""
    batch, channels, *spatial = shape
    positions = math.prod(spatial)
    assert positions <= 512, "bfloat16 holds the integers up to 256 exactly"
    g = torch.Generator().manual_seed(seed)
    values = torch.stack([torch.randperm(positions, generator=g) for _ in range(batch * channels)])
    return ((values.float() - positions / 2) / 16).reshape(tuple(shape))
