"""jaxconv.shapes against PyTorch's own arithmetic on random configurations.

Each test draws its configurations from its own seeded stream, in chunks; by default
the first ``*_PER_CHUNK`` of each chunk's stream, ``JAXCONV_PARITY=full`` all of them.
"""

import random
import warnings

import pytest
from conftest import parity_count

from jaxconv import shapes
from jaxconv.torch_reference import torch_output_shape, torch_output_size_shape

pytestmark = pytest.mark.parity

PER_CHUNK = parity_count(1000, 250)  # x 10 chunks: 10,000 configs in the full set
INVERSE_PER_CHUNK = parity_count(1000, 250)  # x 4 chunks
OUTPUT_SIZE_PER_CHUNK = parity_count(1000, 500)  # x 2 chunks


def _int_or_tuple(rng: random.Random, ndim: int, low: int, high: int):
    """An int, a per-dimension tuple, or now and then a tuple of the wrong length."""
    roll = rng.random()
    if roll < 0.5:
        return rng.randint(low, high)
    length = ndim if roll < 0.97 else rng.choice([n for n in (1, 2, 3, 4) if n != ndim])
    return tuple(rng.randint(low, high) for _ in range(length))


def _random_config(rng: random.Random):
    ndim = rng.randint(1, 3)
    input_shape = tuple(rng.randint(1, 12) for _ in range(ndim))
    kernel = tuple(rng.randint(0 if rng.random() < 0.02 else 1, 7) for _ in range(ndim))
    kwargs = dict(
        stride=_int_or_tuple(rng, ndim, 0 if rng.random() < 0.02 else 1, 4),
        padding=_int_or_tuple(rng, ndim, -1 if rng.random() < 0.02 else 0, 4),
        dilation=_int_or_tuple(rng, ndim, 0 if rng.random() < 0.02 else 1, 3),
    )
    return input_shape, kernel, kwargs


def _ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError:
        return None


@pytest.mark.parametrize("chunk", range(10))
def test_conv_output_shape_matches_torch(chunk):
    rng = random.Random(chunk)
    for _ in range(PER_CHUNK):
        input_shape, kernel, kwargs = _random_config(rng)
        if rng.random() < 0.15:
            kwargs["padding"] = rng.choice(["same", "valid"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns on 'same' with even kernels
            expected = torch_output_shape(False, input_shape, kernel, **kwargs)
        got = _ours(shapes.conv_output_shape, input_shape, kernel, **kwargs)
        assert got == expected, (input_shape, kernel, kwargs)


@pytest.mark.parametrize("chunk", range(10))
def test_conv_transpose_output_shape_matches_torch(chunk):
    rng = random.Random(100 + chunk)
    for _ in range(PER_CHUNK):
        input_shape, kernel, kwargs = _random_config(rng)
        kwargs["output_padding"] = _int_or_tuple(
            rng, len(input_shape), -1 if rng.random() < 0.02 else 0, 3
        )
        expected = torch_output_shape(True, input_shape, kernel, **kwargs)
        if expected is not None and 0 in expected:
            expected = None  # some torch CPU kernels allow an empty output, others raise
        got = _ours(shapes.conv_transpose_output_shape, input_shape, kernel, **kwargs)
        assert got == expected, (input_shape, kernel, kwargs)


@pytest.mark.parametrize("chunk", range(4))
def test_output_padding_for_inverts_torch_conv_shape(chunk):
    rng = random.Random(200 + chunk)
    checked = 0
    for _ in range(INVERSE_PER_CHUNK):
        input_shape, kernel, kwargs = _random_config(rng)
        op = _ours(shapes.output_padding_for, input_shape, kernel, **kwargs)
        conv_out = torch_output_shape(False, input_shape, kernel, **kwargs)
        if op is None:
            assert conv_out is None, (input_shape, kernel, kwargs)
            continue
        back = torch_output_shape(True, conv_out, kernel, output_padding=op, **kwargs)
        assert back == input_shape, (input_shape, kernel, kwargs, op)
        checked += 1
    assert checked > 0.3 * INVERSE_PER_CHUNK


def _smallest_transpose_output(input_shape, kernel, kwargs) -> list[int]:
    """torch's smallest output size for ``output_size``; the input's where arguments are bad."""
    ndim = len(input_shape)
    try:
        s, p, d = (shapes.per_dim(a, kwargs[a], ndim) for a in ("stride", "padding", "dilation"))
    except ValueError:
        return list(input_shape)
    return [
        (n - 1) * si - 2 * pi + di * (k - 1) + 1
        for n, k, si, pi, di in zip(input_shape, kernel, s, p, d)
    ]


@pytest.mark.parametrize("chunk", range(2))
def test_output_size_rule_matches_torch(chunk):
    """``forward(x, output_size)``: sizes from 2 below to 5 above torch's smallest, spatial
    or whole (torch's whole shape is channels-first, ours channels-last)."""
    rng = random.Random(300 + chunk)
    for _ in range(OUTPUT_SIZE_PER_CHUNK):
        input_shape, kernel, kwargs = _random_config(rng)
        smallest = _smallest_transpose_output(input_shape, kernel, kwargs)
        spatial = tuple(rng.randint(m - 2, m + 5) for m in smallest)
        whole = rng.random() < 0.3
        theirs = (1, 1, *spatial) if whole else spatial
        expected = torch_output_size_shape(input_shape, kernel, theirs, **kwargs)
        if expected is not None and 0 in expected:
            expected = None  # some torch CPU kernels allow an empty output, others raise
        ours = (1, *spatial, 1) if whole else spatial
        op = _ours(shapes.output_padding_for_size, input_shape, ours, kernel, **kwargs)
        got = op and _ours(
            shapes.conv_transpose_output_shape, input_shape, kernel, output_padding=op, **kwargs
        )
        assert got == expected, (input_shape, kernel, kwargs, theirs)
