"""jaxconv.interop: torch weights and state_dicts onto jaxconv parameters."""

import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_reference import channels_first, channels_last

from jaxconv import interop
from jaxconv import nn as jnn


def test_conv_params_reverse_torchs_axes():
    weight = torch.randn(6, 2, 3, 5)  # (out, in // groups, kh, kw)
    params = interop.conv_params(weight, torch.randn(6), groups=2)
    assert params["kernel"].shape == (3, 5, 2, 6)
    np.testing.assert_array_equal(params["kernel"][1, 4, 0, 5], weight[5, 0, 1, 4].numpy())


def test_conv_transpose_params_reverse_torchs_axes():
    weight = torch.randn(6, 2, 3)  # (in, out // groups, k)
    params = interop.conv_transpose_params(weight, groups=3)
    assert set(params) == {"kernel"}
    np.testing.assert_array_equal(params["kernel"][2, 1, 4], weight[4, 1, 2].numpy())


def test_params_accept_tensors_that_require_grad():
    layer = torch.nn.ConvTranspose2d(3, 4, 3)
    params = interop.conv_transpose_params(layer.weight, layer.bias)
    assert params["kernel"].shape == (3, 3, 4, 3) and params["bias"].shape == (4,)


def test_weight_not_divisible_by_groups_raises():
    with pytest.raises(ValueError, match="groups"):
        interop.conv_params(torch.randn(5, 2, 3, 3), groups=2)


def test_bias_of_the_wrong_size_raises():
    with pytest.raises(ValueError, match="bias"):
        interop.conv_transpose_params(torch.randn(4, 2, 3, 3), torch.randn(4))


class _Decoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(jnn.ConvTranspose(8, 3, stride=2, padding=1, output_padding=1)(x))
        return jnn.Conv(2, 3, padding=1, groups=2, use_bias=False)(x)


def _torch_decoder():
    return torch.nn.Sequential(
        torch.nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 2, 3, padding=1, groups=2, bias=False),
    )


def test_a_state_dict_loads_and_gives_torchs_output():
    torch_model = _torch_decoder()
    x = torch.randn(2, 4, 5, 5)
    x_jax = jnp.asarray(channels_last(x))
    params = interop.params_from_state_dict(torch_model.state_dict(), _Decoder(), x_jax)
    got = channels_first(_Decoder().apply({"params": params}, x_jax))
    np.testing.assert_allclose(got, torch_model(x).detach().numpy(), atol=1e-5)


def test_a_state_dict_of_another_shape_raises_naming_the_key():
    torch_model = _torch_decoder()
    torch_model[2] = torch.nn.Conv2d(8, 2, 5, padding=2, groups=2, bias=False)
    with pytest.raises(ValueError, match="2.weight"):
        interop.params_from_state_dict(
            torch_model.state_dict(), _Decoder(), jnp.zeros((1, 5, 5, 4))
        )


def test_importing_jaxconv_does_not_import_torch():
    code = (
        "import sys, jaxconv, jaxconv.nn, jaxconv.interop, jaxconv.ops;"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _WithDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnn.Conv(2, 3)(x))


def test_a_model_with_other_parameters_raises_naming_them():
    torch_model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 3))
    with pytest.raises(ValueError, match="Dense_0"):
        interop.params_from_state_dict(
            torch_model.state_dict(), _WithDense(), jnp.zeros((1, 5, 5, 4))
        )
