"""jaxconv.models: the lecture's autoencoder, its configuration, and torch parity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxconv import interop
from jaxconv.models import Autoencoder, AutoencoderConfig, init_params
from jaxconv.torch_models import torch_autoencoder
from jaxconv.torch_reference import channels_first, channels_last


def _kernel_shapes(params, half):
    return [params[half][name]["kernel"].shape for name in sorted(params[half])]


def test_default_model_is_the_lecture_model():
    params = jax.eval_shape(lambda: init_params(AutoencoderConfig(), seed=0))  # shapes only
    # Conv(16,3,s2,p1)-Conv(32,3,s2,p1)-Conv(64,7) / ConvTranspose(32,7)-(16,3)-(1,3)
    assert _kernel_shapes(params, "encoder") == [(3, 3, 1, 16), (3, 3, 16, 32), (7, 7, 32, 64)]
    assert _kernel_shapes(params, "decoder") == [(7, 7, 32, 64), (3, 3, 16, 32), (3, 3, 1, 16)]


def test_encode_gives_the_embedding_and_decode_the_image():
    model, config = Autoencoder(), AutoencoderConfig()
    params = {"params": init_params(config, seed=0)}
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 28, 28, 1)), jnp.float32)

    @jax.jit  # one compile, not one per operation
    def encode_decode_and_apply(params, images):
        embeddings = model.apply(params, images, method=Autoencoder.encode)
        decoded = model.apply(params, embeddings, method=Autoencoder.decode)
        return embeddings, decoded, model.apply(params, images)

    embeddings, decoded, applied = encode_decode_and_apply(params, images)
    assert embeddings.shape == (3, 64)
    assert decoded.shape == (3, 28, 28, 1)
    assert float(decoded.min()) > 0 and float(decoded.max()) < 1
    np.testing.assert_allclose(decoded, applied, atol=1e-6)


@pytest.mark.parametrize("image_shape", [(32, 32, 3), (27, 29, 1)])
def test_image_shape_and_embedding_size_are_configurable(image_shape):
    config = AutoencoderConfig(image_shape=image_shape, channels=(8, 16, 24), embedding_dim=10)
    model = Autoencoder(config)
    params = jax.eval_shape(lambda: {"params": init_params(config, seed=0)})  # shapes only
    images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    encode = functools.partial(model.apply, method=Autoencoder.encode)
    assert jax.eval_shape(encode, params, images).shape == (2, 10)
    assert jax.eval_shape(model.apply, params, images).shape == (2, *image_shape)


def test_wrong_output_padding_names_the_layer_and_the_fix():
    with pytest.raises(ValueError, match=r"ConvTranspose_2.*output_padding=\(0, 0\) would fix"):
        AutoencoderConfig(image_shape=(27, 27, 1), output_padding=((1, 1), (1, 1)))


def test_a_torch_state_dict_gives_torchs_reconstructions():
    config = AutoencoderConfig(image_shape=(32, 32, 3), embedding_dim=16)
    torch_model = torch_autoencoder(config)
    images = torch.rand(4, 3, 32, 32)
    images_jax = jnp.asarray(channels_last(images))
    model = Autoencoder(config)
    params = interop.params_from_state_dict(torch_model.state_dict(), model, images_jax)
    got = channels_first(jax.jit(model.apply)({"params": params}, images_jax))
    np.testing.assert_allclose(got, torch_model(images).detach().numpy(), atol=1e-5)
