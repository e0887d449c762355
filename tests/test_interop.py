"""jaxconv.interop: torch weights and state_dicts onto jaxconv parameters, and back."""

import copy
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxconv import interop
from jaxconv import nn as jnn
from jaxconv import nnx as jnnx
from jaxconv.torch_reference import channels_first, channels_last


@nnx.jit
def _call(model: nnx.Module, x: jax.Array) -> jax.Array:
    """``model(x)`` compiled as one program (eagerly, each operation compiles)."""
    return model(x)


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
    got = channels_first(jax.jit(_Decoder().apply)({"params": params}, x_jax))
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
        " jaxconv.ops, jaxconv.ports.monai_unet, jaxconv.ports.monai_basic_unet,"
        " jaxconv.ports.dcgan;"
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
    got = channels_first(_call(model, jnp.asarray(channels_last(x))))
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


class _OwnParameter(nnx.Module):
    def __init__(self):
        self.conv = jnnx.Conv(2, 2, 3, rngs=nnx.Rngs(0))
        self.gain = nnx.Param(jnp.ones(2))


def test_an_nnx_module_with_parameters_outside_known_layers_is_refused_naming_them():
    with pytest.raises(ValueError, match=r"outside the layers .*\['gain'\]"):
        interop.load_state_dict(_OwnParameter(), {})
    with pytest.raises(ValueError, match=r"\['gain'\]"):
        interop.to_state_dict(_OwnParameter())


# Flax's own layers, each with its layout change


def _torch_batch_norm():
    layer = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.weight.normal_(), layer.bias.normal_()
        layer.running_mean.normal_(), layer.running_var.uniform_(0.5, 2.0)
    layer.num_batches_tracked.fill_(7)
    return layer.eval()


def _torch_affine(layer):
    with torch.no_grad():
        layer.weight.normal_(), layer.bias.normal_()
    return layer


FLAX_LAYERS = {
    "Linear": (
        lambda: nnx.Linear(5, 3, rngs=nnx.Rngs(0)),
        lambda: torch.nn.Linear(5, 3),
        (4, 5),
        False,
    ),
    "Conv": (
        lambda: nnx.Conv(4, 6, (3, 2), feature_group_count=2, padding="VALID", rngs=nnx.Rngs(0)),
        lambda: torch.nn.Conv2d(4, 6, (3, 2), groups=2),
        (2, 4, 7, 6),
        True,
    ),
    "BatchNorm": (
        lambda: nnx.BatchNorm(3, use_running_average=True, rngs=nnx.Rngs(0)),
        _torch_batch_norm,
        (2, 3, 4, 4),
        True,
    ),
    "LayerNorm": (
        lambda: nnx.LayerNorm(6, epsilon=1e-5, rngs=nnx.Rngs(0)),
        lambda: _torch_affine(torch.nn.LayerNorm(6)),
        (2, 3, 6),
        False,
    ),
    "GroupNorm": (
        lambda: nnx.GroupNorm(6, num_groups=3, epsilon=1e-5, rngs=nnx.Rngs(0)),
        lambda: _torch_affine(torch.nn.GroupNorm(3, 6)),
        (2, 6, 4, 5),
        True,
    ),
    "InstanceNorm": (
        lambda: nnx.InstanceNorm(3, epsilon=1e-5, rngs=nnx.Rngs(0)),
        lambda: _torch_affine(torch.nn.InstanceNorm2d(3, affine=True)),
        (2, 3, 4, 5),
        True,
    ),
    "PReLU": (lambda: nnx.PReLU(), lambda: torch.nn.PReLU(init=0.3), (2, 3, 4), True),
}  # (Flax layer, torch layer, torch input shape, whether torch's channels are axis 1)


@pytest.mark.parametrize("name", FLAX_LAYERS)
def test_flax_layers_take_torchs_tensors_and_give_torchs_outputs(name):
    make, make_torch, shape, channels_first_input = FLAX_LAYERS[name]
    torch_layer, layer = make_torch(), nnx.eval_shape(make)
    assert interop.load_state_dict(layer, torch_layer.state_dict()) == ([], [])
    x = torch.randn(*shape)
    if channels_first_input:
        got = channels_first(_call(layer, jnp.asarray(channels_last(x))))
    else:
        got = _call(layer, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(got, torch_layer(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("name", FLAX_LAYERS)
def test_flax_layers_export_bitwise_what_torch_loads_strictly(name):
    make, make_torch, _, _ = FLAX_LAYERS[name]
    torch_layer, layer = make_torch(), nnx.eval_shape(make)
    interop.load_state_dict(layer, torch_layer.state_dict())
    back = make_torch()
    back.load_state_dict(interop.to_state_dict(layer, as_torch=True), strict=True)
    for key, value in torch_layer.state_dict().items():
        if key != "num_batches_tracked":  # Flax keeps no count; torch keeps back's own
            assert torch.equal(back.state_dict()[key], value), key


def test_flax_embed_takes_torchs_embedding_table_as_it_is():
    torch_layer = torch.nn.Embedding(7, 3)
    layer = nnx.eval_shape(lambda: nnx.Embed(7, 3, rngs=nnx.Rngs(0)))
    interop.load_state_dict(layer, torch_layer.state_dict())
    ids = torch.tensor([[0, 6, 2]])
    np.testing.assert_array_equal(_call(layer, ids.numpy()), torch_layer(ids).detach().numpy())
    back = torch.nn.Embedding(7, 3)
    back.load_state_dict(interop.to_state_dict(layer, as_torch=True))
    assert torch.equal(back.weight, torch_layer.weight)


def test_flax_batch_norm_reads_and_drops_torchs_batch_count():
    layer = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    state_dict = _torch_batch_norm().state_dict()
    assert interop.load_state_dict(layer, state_dict, strict=False) == ([], [])
    del state_dict["num_batches_tracked"]
    assert interop.load_state_dict(layer, state_dict) == ([], [])
    assert set(interop.to_state_dict(layer)) == {"weight", "bias", "running_mean", "running_var"}
    np.testing.assert_array_equal(layer.var[...], state_dict["running_var"].numpy())


# strict, non-strict, rename


def test_strict_false_loads_what_matches_and_returns_the_rest():
    torch_model, model = _TorchModel(), _NNXModel(nnx.Rngs(0))
    state_dict = dict(torch_model.state_dict())
    del state_dict["blocks.0.bias"]
    state_dict["head.weight"] = torch.zeros(3)
    result = interop.load_state_dict(model, state_dict, strict=False)
    assert isinstance(result, interop.IncompatibleKeys)
    assert result.missing_keys == ["blocks.0.bias"] and result.unexpected_keys == ["head.weight"]
    got = interop.to_state_dict(model)
    np.testing.assert_array_equal(got["blocks.0.weight"], state_dict["blocks.0.weight"].numpy())
    assert not np.array_equal(got["blocks.0.bias"], torch_model.state_dict()["blocks.0.bias"])


def test_strict_load_names_every_problem_and_leaves_the_model_unchanged():
    state_dict = dict(_TorchModel().state_dict())
    del state_dict["blocks.0.bias"], state_dict["decoder.0.bias"]
    state_dict["head.weight"] = torch.zeros(3)
    state_dict["decoder.2.weight"] = torch.zeros(2, 4, 5, 5)
    model = _NNXModel(nnx.Rngs(0))
    before = interop.to_state_dict(model)
    message = (
        r"missing keys: \['blocks.0.bias', 'decoder.0.bias'\]; unexpected keys: "
        r"\['head.weight'\]; shape mismatch: decoder.2.weight: \(2, 4, 5, 5\)"
    )
    with pytest.raises(ValueError, match=message):
        interop.load_state_dict(model, state_dict)
    for key, value in interop.to_state_dict(model).items():
        np.testing.assert_array_equal(value, before[key])


def test_a_shape_mismatch_raises_even_when_not_strict_and_changes_nothing():
    state_dict = dict(_TorchModel().state_dict())
    state_dict["blocks.0.bias"] = torch.zeros(5)
    model = _NNXModel(nnx.Rngs(0))
    before = interop.to_state_dict(model)
    with pytest.raises(ValueError, match=r"shape mismatch: blocks.0.bias: \(5,\)"):
        interop.load_state_dict(model, state_dict, strict=False)
    for key, value in interop.to_state_dict(model).items():
        np.testing.assert_array_equal(value, before[key])


def _prefixed_state_dict():
    """torch's keys under another prefix: ``net.up.0.weight`` for the model's ``decoder.0``."""
    state_dict = _TorchModel().state_dict()
    renamed = {}
    for key, value in state_dict.items():
        renamed["net." + key.replace("decoder.", "up.").replace("blocks.", "heads.")] = value
    return state_dict, renamed


def test_rename_by_regexes_applies_them_in_order():
    state_dict, renamed = _prefixed_state_dict()
    model = _abstract_nnx_model()
    # the second pattern sees the first one's result: in the other order nothing matches
    rename = {r"^net\.": "", r"^up\.": "decoder.", r"^heads\.": "blocks."}
    assert interop.load_state_dict(model, renamed, rename=rename) == ([], [])
    got = interop.to_state_dict(model)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(got[key], value.numpy())
    with pytest.raises(ValueError, match="missing keys"):
        reversed_order = dict(reversed(list(rename.items())))
        interop.load_state_dict(_abstract_nnx_model(), renamed, rename=reversed_order)


def test_rename_by_a_function_of_the_key_and_back_on_export():
    state_dict, renamed = _prefixed_state_dict()
    model = _abstract_nnx_model()

    def to_model(key):
        return key.removeprefix("net.").replace("up.", "decoder.").replace("heads.", "blocks.")

    def to_torch(key):
        return "net." + key.replace("decoder.", "up.").replace("blocks.", "heads.")

    interop.load_state_dict(model, renamed, rename=to_model)
    exported = interop.to_state_dict(model, rename=to_torch)
    assert set(exported) == set(renamed)
    for key, value in renamed.items():
        np.testing.assert_array_equal(exported[key], value.numpy())


def test_rename_that_merges_two_keys_is_refused_naming_both():
    with pytest.raises(
        ValueError, match=r"'decoder.0.bias' for both 'decoder.0.weight' and 'decoder.0.bias'"
    ):
        interop.load_state_dict(
            _abstract_nnx_model(), _TorchModel().state_dict(), rename={r"\.weight$": ".bias"}
        )


@pytest.mark.parametrize("rename", [3, {"(": "x"}], ids=["type", "bad regex"])
def test_a_bad_rename_is_refused_naming_it(rename):
    with pytest.raises((TypeError, ValueError), match="rename"):
        interop.load_state_dict(_abstract_nnx_model(), _TorchModel().state_dict(), rename=rename)


# torch bfloat16


def test_torch_bfloat16_tensors_round_trip_bitwise():
    torch_model = _TorchModel().to(torch.bfloat16)
    model = nnx.eval_shape(lambda: _NNXModel(nnx.Rngs(0)))
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Param):
            variable.set_value(jax.ShapeDtypeStruct(variable.get_value().shape, jnp.bfloat16))
    interop.load_state_dict(model, torch_model.state_dict())
    assert model.decoder.layers[0].kernel[...].dtype == jnp.bfloat16
    back = _TorchModel().to(torch.bfloat16)
    back.load_state_dict(interop.to_state_dict(model, as_torch=True))
    for key, value in torch_model.state_dict().items():
        assert torch.equal(back.state_dict()[key].view(torch.int16), value.view(torch.int16)), key


def test_torch_bfloat16_weights_import_for_linen_too():
    weight = torch.randn(6, 2, 3, 5, dtype=torch.bfloat16)
    kernel = interop.conv_params(weight)["kernel"]
    assert kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        kernel[1, 4, 0, 5].view(np.int16), weight[5, 0, 1, 4].view(torch.int16).numpy()
    )


# jaxconv.nnx's layers: every parameter and buffer, torch's keys


def _torch_stack():
    layers = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        torch.nn.GroupNorm(2, 4),
        torch.nn.PReLU(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 5),
        torch.nn.LayerNorm(5),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in layers.state_dict().items():
            if key.endswith("num_batches_tracked"):
                tensor.fill_(5)
            elif key.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            else:
                tensor.normal_(generator=generator)
    return layers.eval()


def _stack():
    return nnx.Sequential(
        jnnx.Conv(3, 4, 3, rngs=nnx.Rngs(0)),
        jnnx.BatchNorm(4),
        jnnx.InstanceNorm(4, affine=True, track_running_stats=True),
        jnnx.GroupNorm(2, 4),
        jnnx.PReLU(4),
        jnnx.Flatten(),
        jnnx.Linear(4 * 3 * 3, 5, rngs=nnx.Rngs(0)),
        jnnx.LayerNorm(5),
    )


def test_jaxconv_layers_load_every_tensor_and_give_torchs_output():
    torch_model, model = _torch_stack(), nnx.eval_shape(_stack)
    assert interop.load_state_dict(model, torch_model.state_dict()) == ([], [])
    assert model.layers[1].num_batches_tracked[...] == 5
    model.eval()
    x = torch.randn(2, 3, 5, 5)
    got = _call(model, jnp.asarray(channels_last(x)))
    np.testing.assert_allclose(got, torch_model(x).detach().numpy(), atol=1e-5)


def test_jaxconv_layers_export_bitwise_with_the_batch_count_as_int64():
    torch_model, model = _torch_stack(), nnx.eval_shape(_stack)
    interop.load_state_dict(model, torch_model.state_dict())
    exported = interop.to_state_dict(model)
    assert exported["1.num_batches_tracked"].dtype == np.int64
    assert exported["1.num_batches_tracked"].shape == ()
    back = copy.deepcopy(torch_model)
    with torch.no_grad():
        for tensor in back.state_dict().values():
            tensor.zero_()
    back.load_state_dict(interop.to_state_dict(model, as_torch=True), strict=True)
    for key, value in torch_model.state_dict().items():
        assert back.state_dict()[key].dtype == value.dtype, key
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: jnnx.BatchNorm(3, affine=False), lambda: torch.nn.BatchNorm1d(3, affine=False)),
        (
            lambda: jnnx.BatchNorm(3, track_running_stats=False),
            lambda: torch.nn.BatchNorm1d(3, track_running_stats=False),
        ),
        (lambda: jnnx.InstanceNorm(3), lambda: torch.nn.InstanceNorm1d(3)),
        (
            lambda: jnnx.GroupNorm(1, 3, affine=False),
            lambda: torch.nn.GroupNorm(1, 3, affine=False),
        ),
        (
            lambda: jnnx.LayerNorm((2, 3), bias=False),
            lambda: torch.nn.LayerNorm((2, 3), bias=False),
        ),
        (
            lambda: jnnx.Linear(3, 2, bias=False, rngs=nnx.Rngs(0)),
            lambda: torch.nn.Linear(3, 2, bias=False),
        ),
        (lambda: jnnx.PReLU(), lambda: torch.nn.PReLU()),
    ],
    ids=["bn-no-affine", "bn-no-stats", "instance", "group-no-affine", "layer-no-bias", "linear",
         "prelu"],
)  # fmt: skip
def test_jaxconv_layers_have_torchs_keys_in_every_configuration(ours, theirs):
    torch_layer, layer = theirs(), ours()
    assert sorted(interop.to_state_dict(layer)) == sorted(torch_layer.state_dict())
    assert interop.load_state_dict(layer, torch_layer.state_dict()) == ([], [])
