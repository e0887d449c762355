"""The lecture's round trips: Conv2d then ConvTranspose2d on a 64x64 input.

    python experiments/shape_roundtrip.py

Shapes computed by jaxconv (the shape module and the layers themselves), with
PyTorch's beside them when torch is installed.
"""

import jax
import jax.numpy as jnp

from jaxconv import nn as jnn
from jaxconv import shapes

CASES = [
    ("kernel 5", dict(kernel_size=5)),
    ("kernel 5, padding 2", dict(kernel_size=5, padding=2)),
    ("kernel 5, stride 2", dict(kernel_size=5, stride=2)),
    ("kernel 5, stride 2, output_padding 1", dict(kernel_size=5, stride=2, output_padding=1)),
]
INPUT = (2, 64, 64, 8)  # NHWC, the lecture's torch.randn(2, 8, 64, 64)


def jaxconv_round_trip(kwargs: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv output, transposed-conv output) shapes from running the jaxconv layers."""
    conv_kwargs = {k: v for k, v in kwargs.items() if k != "output_padding"}
    x = jnp.zeros(INPUT)
    conv, convt = jnn.Conv(8, **conv_kwargs), jnn.ConvTranspose(8, **kwargs)
    y = jax.eval_shape(lambda x: conv.apply(conv.init(jax.random.key(0), x), x), x)
    back = jax.eval_shape(lambda y: convt.apply(convt.init(jax.random.key(0), y), y), y)
    return y.shape, back.shape


def torch_round_trip(kwargs: dict) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    try:
        import torch
    except ImportError:
        return None
    conv_kwargs = {k: v for k, v in kwargs.items() if k != "output_padding"}
    x = torch.randn(2, 8, 64, 64)
    y = torch.nn.Conv2d(8, 8, **conv_kwargs)(x)
    back = torch.nn.ConvTranspose2d(8, 8, **kwargs)(y)
    return tuple(y.shape), tuple(back.shape)


def main() -> None:
    rows = [("case", "input", "conv", "conv_transpose", "torch conv", "torch conv_transpose")]
    for name, kwargs in CASES:
        y, back = jaxconv_round_trip(kwargs)
        reference = torch_round_trip(kwargs)
        torch_cols = ("(torch not installed)", "") if reference is None else reference
        rows.append((name, INPUT, y, back, *torch_cols))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
    print("\njaxconv shapes are NHWC, torch's NCHW.")
    print("Stride 2 comes back one short (63); output_padding =", end=" ")
    print(shapes.output_padding_for((64, 64), 5, stride=2), "fixes it.")


if __name__ == "__main__":
    main()
