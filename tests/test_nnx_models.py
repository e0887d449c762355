"""jaxconv.nnx_models: the NNX autoencoder against the linen one and torch's."""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from jaxconv import interop, nnx_models
from jaxconv.models import Autoencoder, AutoencoderConfig, init_params
from jaxconv.torch_models import torch_autoencoder
from jaxconv.torch_reference import channels_first, channels_last
from jaxconv.train import TrainConfig

CONFIG = AutoencoderConfig()
STEPS = 30
EXPERIMENT = Path(__file__).parent.parent / "experiments" / "nnx_autoencoder.py"


def test_a_torch_state_dict_round_trips_bitwise_through_the_nnx_model():
    """torch -> NNX (by name) -> torch: the same keys, bitwise the same tensors."""
    torch_model = torch_autoencoder(CONFIG)
    model = nnx.eval_shape(lambda: nnx_models.Autoencoder(CONFIG, rngs=nnx.Rngs(0)))
    interop.load_state_dict(model, torch_model.state_dict())
    back = torch_autoencoder(CONFIG)
    back.load_state_dict(interop.to_state_dict(model, as_torch=True))
    for (key, theirs), (back_key, ours) in zip(
        torch_model.state_dict().items(), back.state_dict().items()
    ):
        assert key == back_key and torch.equal(theirs, ours), key
    images = torch.rand(2, 1, 28, 28)
    assert torch.equal(back(images), torch_model(images))


def test_torch_weights_load_by_name_and_give_torchs_reconstructions():
    config = AutoencoderConfig(image_shape=(20, 20, 3), channels=(8, 16), embedding_dim=10)
    torch_model = torch_autoencoder(config)
    model = nnx.eval_shape(lambda: nnx_models.Autoencoder(config, rngs=nnx.Rngs(0)))
    interop.load_state_dict(model, torch_model.state_dict())
    images = torch.rand(3, 3, 20, 20)
    got = channels_first(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(channels_last(images))))
    np.testing.assert_allclose(got, torch_model(images).detach().numpy(), atol=1e-5)


def test_linen_name_map_is_the_pairing_by_order_of_torchs_layers():
    state_dict = torch_autoencoder(CONFIG).state_dict()
    images = jnp.zeros((1, *CONFIG.image_shape))
    by_order = interop.name_map_by_order(state_dict, Autoencoder(CONFIG), images)
    assert by_order == nnx_models.linen_name_map(CONFIG)


def test_from_linen_params_holds_bitwise_the_linen_parameters():
    params = init_params(CONFIG, seed=0)
    model = nnx_models.from_linen_params(CONFIG, params)
    encoder_kernel = model.encoder.layers[4].kernel[...]
    np.testing.assert_array_equal(encoder_kernel, params["encoder"]["Conv_2"]["kernel"])
    decoder_bias = model.decoder.layers[5].bias[...]
    np.testing.assert_array_equal(decoder_bias, params["decoder"]["ConvTranspose_2"]["bias"])


def _experiment():
    spec = importlib.util.spec_from_file_location("nnx_autoencoder", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nnx_training_follows_the_linen_loss_curve(small_digits):
    """experiments/nnx_autoencoder.py's steps: 30 Adam steps of the NNX model (nnx.Optimizer,
    nnx.jit) and of the linen model (jaxconv.train), same start, same batches: same losses."""
    experiment = _experiment()
    state, model, optimizer = experiment.start(TrainConfig(batch_size=32))
    images = small_digits.train_images[:64]
    losses = []
    for step in range(STEPS):
        batch = images[(step % 2) * 32 : (step % 2 + 1) * 32]
        state, linen_loss, nnx_loss = experiment.step(state, model, optimizer, batch)
        losses.append((linen_loss, nnx_loss))
    linen, ours = np.array(losses).T
    assert linen[-1] < 0.7 * linen[0]  # it trained
    np.testing.assert_allclose(ours, linen, rtol=1e-5)
