"""What PyTorch does, for the parity tests: layouts, ops, and 'does torch raise?'."""

import warnings

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(2)

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
TORCH_ERRORS = (RuntimeError, ValueError, TypeError)


def channels_last(x: torch.Tensor) -> np.ndarray:
    """torch (batch, channels, *spatial) -> numpy (batch, *spatial, channels)."""
    return np.moveaxis(x.detach().numpy(), 1, -1)


def channels_first(x) -> np.ndarray:
    return np.moveaxis(np.asarray(x), -1, 1)


def kernel_to_torch(kernel) -> np.ndarray:
    """jaxconv kernel (*k, b, a) -> torch weight (a, b, *k): the inverse of interop's map."""
    k = np.asarray(kernel)
    n = k.ndim - 2
    return np.transpose(k, (n + 1, n, *range(n)))


def torch_output_shape(transposed: bool, input_shape, kernel_size, **kwargs):
    """The spatial output shape torch computes for a 1-channel op, or None if torch raises."""
    ndim = len(input_shape)
    k = (kernel_size,) * ndim if isinstance(kernel_size, int) else tuple(kernel_size)
    x = torch.zeros(1, 1, *input_shape)
    w = torch.zeros(1, 1, *k) if len(k) == ndim else torch.zeros(1, 1, *k)
    op = CONV_TRANSPOSE[ndim] if transposed else CONV[ndim]
    try:
        return tuple(op(x, w, **kwargs).shape[2:])
    except TORCH_ERRORS:
        return None


CONV_LAYER = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONV_TRANSPOSE_LAYER = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}


def torch_output_size_shape(input_shape, kernel_size, output_size, **kwargs):
    """The spatial shape of ``ConvTransposeNd.forward(x, output_size)`` for a 1-channel
    layer, or None if torch raises.

    1-tuples are expanded: torch's functional ops broadcast them (as jaxconv does), but
    the module's output_size rule indexes them per dimension (an IndexError).
    """
    ndim = len(input_shape)
    kwargs = {k: v * ndim if isinstance(v, tuple) and len(v) == 1 else v for k, v in kwargs.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns on initialising a zero-size kernel
            layer = CONV_TRANSPOSE_LAYER[ndim](1, 1, kernel_size, bias=False, **kwargs)
        return tuple(layer(torch.zeros(1, 1, *input_shape), output_size=output_size).shape[2:])
    except (*TORCH_ERRORS, IndexError):  # the module indexes a too-short tuple
        return None
