"""Train the NNX autoencoder beside the linen one, from the same initial weights.

    python experiments/nnx_autoencoder.py [--epochs 3] [--batch-size 64] [--seed 0]

The linen model (:class:`jaxconv.models.Autoencoder`) trains with
:func:`jaxconv.train.train_step`; the NNX model (:class:`jaxconv.nnx_models.Autoencoder`)
starts from the linen model's initial parameters and trains with ``nnx.Optimizer``
and ``nnx.jit`` (:func:`jaxconv.nnx_models.train_step`). Both use Adam with the same
settings on the same batches of the embedded digits; the table gives each epoch's mean
train loss and test MSE for both, and the largest relative gap between their losses
over that epoch's steps.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxconv import configs, input_pipeline, nnx_models
from jaxconv.train import TrainConfig, TrainState, create_train_state, evaluate, train_step


def start(config: TrainConfig) -> tuple[TrainState, nnx_models.Autoencoder, nnx.Optimizer]:
    """The linen train state (PyTorch's init from ``config.seed``) and the NNX model and
    optimizer holding the same parameters."""
    state = create_train_state(config)
    model = nnx_models.from_linen_params(config.model, jax.device_get(state.params))
    return state, model, nnx_models.optimizer(model, config.learning_rate)


def step(
    state: TrainState, model: nnx_models.Autoencoder, optimizer: nnx.Optimizer, images: np.ndarray
) -> tuple[TrainState, float, float]:
    """One Adam step of both on ``images``: the new linen state, the linen and NNX losses."""
    batch = jnp.asarray(images)
    state, linen_loss = train_step(state, {"image": batch})
    nnx_loss = nnx_models.train_step(model, optimizer, batch)
    return state, float(linen_loss), float(nnx_loss)


@nnx.jit
def _squared_error_sum(model: nnx_models.Autoencoder, images: jax.Array, mask: jax.Array):
    per_image = jnp.mean((model(images) - images) ** 2, axis=(1, 2, 3))
    return jnp.sum(per_image * mask)


def nnx_test_mse(model: nnx_models.Autoencoder, images: np.ndarray, batch_size: int) -> float:
    """Reconstruction MSE over all of ``images`` (per image, then averaged)."""
    total = sum(
        float(_squared_error_sum(model, jnp.asarray(batch), jnp.asarray(mask)))
        for batch, mask in input_pipeline.eval_batches(images, batch_size)
    )
    return total / len(images)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=configs.AUTOENCODER.batch_size)
    parser.add_argument("--seed", type=int, default=configs.AUTOENCODER.seed)
    args = parser.parse_args(argv)

    data = input_pipeline.load_dataset()
    config = TrainConfig(batch_size=args.batch_size, seed=args.seed)
    state, model, optimizer = start(config)
    print(
        f"{'epoch':>5}  {'linen train':>11}  {'NNX train':>11}  {'max rel. gap':>12}  "
        f"{'linen test':>10}  {'NNX test':>10}  {'seconds':>7}"
    )
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        losses = []
        for images in input_pipeline.train_batches(
            data.train_images, config.batch_size, seed=config.seed, epoch=epoch
        ):
            state, linen_loss, nnx_loss = step(state, model, optimizer, images)
            losses.append((linen_loss, nnx_loss))
        linen, ours = np.array(losses).T
        linen_test = evaluate(state, {"image": data.test_images}, config.batch_size)["test_mse"]
        nnx_test = nnx_test_mse(model, data.test_images, config.batch_size)
        print(
            f"{epoch:>5}  {linen.mean():>11.6f}  {ours.mean():>11.6f}  "
            f"{np.max(np.abs(ours / linen - 1)):>12.1e}  {linen_test:>10.6f}  {nnx_test:>10.6f}  "
            f"{time.perf_counter() - started:>7.1f}"
        )


if __name__ == "__main__":
    main()
