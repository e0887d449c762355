"""jaxconv.interop: torch weights and state_dicts onto jaxconv parameters, and back."""

import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_reference import channels_first, channels_last

from jaxconv import interop
from jaxconv import nn as jnn
from jaxconv import nnx as jnnx


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
        "import sys, jaxconv, jaxconv.nn, jaxconv.nnx, jaxconv.nnx_models, jaxconv.interop,"
        " jaxconv.ops;"
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


# Flax linen: name maps


class _TwoConvs(nn.Module):
    """Calls ``first`` then ``second``: two look-alike layers."""

    @nn.compact
    def __call__(self, x):
        return jnn.Conv(4, 3, padding=1, name="second")(jnn.Conv(4, 3, padding=1, name="first")(x))


class _TorchTwoConvs(torch.nn.Module):
    """Registers ``second`` before ``first`` but calls ``first`` first."""

    def __init__(self):
        super().__init__()
        self.second = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.first = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.second(self.first(x))


def test_look_alike_layers_in_unknown_order_are_refused_without_a_name_map():
    with pytest.raises(ValueError, match=r"second.weight and first.weight .* name_map"):
        interop.params_from_state_dict(
            _TorchTwoConvs().state_dict(), _TwoConvs(), jnp.zeros((1, 5, 5, 4))
        )


def test_a_name_map_pairs_look_alike_layers_by_name():
    torch_model = _TorchTwoConvs()
    x = torch.randn(2, 4, 5, 5)
    x_jax = jnp.asarray(channels_last(x))
    name_map = {"first": "first", "second": "second"}
    params = interop.params_from_state_dict(
        torch_model.state_dict(), _TwoConvs(), x_jax, name_map=name_map
    )
    got = channels_first(_TwoConvs().apply({"params": params}, x_jax))
    np.testing.assert_allclose(got, torch_model(x).detach().numpy(), atol=1e-5)


def test_look_alike_layers_of_one_sequential_pair_in_index_order():
    """nn.Sequential calls its modules in index order: no ambiguity, no name map needed."""
    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1)
    )
    name_map = interop.name_map_by_order(
        torch_model.state_dict(), _TwoConvs(), jnp.zeros((1, 5, 5, 4))
    )
    assert name_map == {"0": "first", "2": "second"}


@pytest.mark.parametrize(
    "name_map, message",
    [
        ({"0": "Conv_0"}, r"layers not mapped: \['ConvTranspose_0'\]"),
        ({"0": "ConvTranspose_0", "2": "Conv_9"}, r"not layers: \['Conv_9'\]"),
        ({"0": "ConvTranspose_0", "2": "ConvTranspose_0"}, r"mapped twice: \['ConvTranspose_0'\]"),
        ({"0": "ConvTranspose_0", "1": "Conv_0"}, r"missing keys: \['1.weight'\]"),
    ],
)
def test_a_name_map_that_does_not_fit_is_refused_naming_the_layers(name_map, message):
    with pytest.raises(ValueError, match=message):
        interop.params_from_state_dict(
            _torch_decoder().state_dict(), _Decoder(), jnp.zeros((1, 5, 5, 4)), name_map=name_map
        )


def test_an_extra_key_in_the_state_dict_is_refused_naming_it():
    state_dict = {**_torch_decoder().state_dict(), "head.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"state_dict has 3 weights"):
        interop.params_from_state_dict(state_dict, _Decoder(), jnp.zeros((1, 5, 5, 4)))
    state_dict = {**_torch_decoder().state_dict(), "0.running_mean": torch.zeros(8)}
    with pytest.raises(ValueError, match=r"unexpected keys: \['0.running_mean'\]"):
        interop.params_from_state_dict(state_dict, _Decoder(), jnp.zeros((1, 5, 5, 4)))


def test_linen_params_export_bitwise_to_torch_through_the_name_map():
    """torch -> linen -> torch: bitwise the same weights, hence the same outputs."""
    torch_model = _torch_decoder()
    x = jnp.zeros((1, 5, 5, 4))
    name_map = interop.name_map_by_order(torch_model.state_dict(), _Decoder(), x)
    params = interop.params_from_state_dict(torch_model.state_dict(), _Decoder(), x)
    back = _torch_decoder()
    back.load_state_dict(interop.to_state_dict({"params": params}, name_map, as_torch=True))
    for key, value in torch_model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(back(x), torch_model(x))


def test_to_state_dict_gives_arrays_that_torch_from_numpy_loads():
    params = interop.conv_transpose_params(torch.randn(4, 8, 3, 3), torch.randn(8))
    state_dict = interop.to_state_dict({"layer": params})
    assert set(state_dict) == {"layer.weight", "layer.bias"}
    layer = torch.nn.ConvTranspose2d(4, 8, 3)
    layer.load_state_dict(
        {k.removeprefix("layer."): torch.from_numpy(v) for k, v in state_dict.items()}
    )
    np.testing.assert_array_equal(layer.weight.detach().numpy(), state_dict["layer.weight"])


def test_to_state_dict_refuses_params_of_other_layers_naming_them():
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        interop.to_state_dict({"Dense_0": {"kernel": np.zeros((3, 4))}})


# Flax NNX: names from attribute paths


class _NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.decoder = nnx.Sequential(
            jnnx.ConvTranspose(4, 8, 3, stride=2, padding=1, output_padding=1, rngs=rngs),
            nnx.relu,
            jnnx.Conv(8, 2, 3, padding=1, groups=2, use_bias=False, rngs=rngs),
        )
        self.blocks = nnx.List([jnnx.Conv(2, 2, (1, 1), rngs=rngs)])

    def __call__(self, x):
        return self.blocks[0](self.decoder(x))


class _TorchModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = _torch_decoder()
        self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(2, 2, 1)])

    def forward(self, x):
        return self.blocks[0](self.decoder(x))


def _abstract_nnx_model():
    return nnx.eval_shape(lambda: _NNXModel(nnx.Rngs(0)))


def test_nnx_keys_are_torchs_names_of_the_same_attributes():
    model = _NNXModel(nnx.Rngs(0))
    assert set(interop.to_state_dict(model)) == set(_TorchModel().state_dict())


def test_a_state_dict_loads_into_nnx_by_name_and_gives_torchs_output():
    torch_model, model = _TorchModel(), _abstract_nnx_model()
    interop.load_state_dict(model, torch_model.state_dict())
    x = torch.randn(2, 4, 5, 5)
    got = channels_first(model(jnp.asarray(channels_last(x))))
    np.testing.assert_allclose(got, torch_model(x).detach().numpy(), atol=1e-5)


def test_a_lone_nnx_layer_has_the_keys_weight_and_bias():
    torch_layer = torch.nn.Conv1d(3, 6, 5, groups=3)
    layer = nnx.eval_shape(lambda: jnnx.Conv(3, 6, (5,), groups=3, rngs=nnx.Rngs(0)))
    interop.load_state_dict(layer, torch_layer.state_dict())
    np.testing.assert_array_equal(
        interop.to_state_dict(layer)["weight"], torch_layer.weight.detach().numpy()
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("blocks.0.bias"), r"missing keys: \['blocks.0.bias'\]"),
        (lambda sd: sd.update({"decoder.2.bias": torch.zeros(2)}),
         r"unexpected keys: \['decoder.2.bias'\]"),
        (lambda sd: sd.update({"decoder.0.weight": torch.zeros(4, 8, 5, 5)}),
         r"shape mismatch: decoder.0.weight: \(4, 8, 5, 5\) in torch's layout"),
    ],
    ids=["missing", "unexpected", "shape"],
)  # fmt: skip
def test_an_nnx_load_that_does_not_fit_is_refused_naming_the_keys(change, message):
    state_dict = dict(_TorchModel().state_dict())
    change(state_dict)
    model = _NNXModel(nnx.Rngs(0))
    before = interop.to_state_dict(model)
    with pytest.raises(ValueError, match=message):
        interop.load_state_dict(model, state_dict)
    for key, value in interop.to_state_dict(model).items():  # left unchanged
        np.testing.assert_array_equal(value, before[key])


def test_an_nnx_module_with_other_parameters_is_refused_naming_them():
    model = nnx.Sequential(jnnx.Conv(2, 2, 3, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"1.kernel"):
        interop.load_state_dict(model, {})
