"""Train the autoencoder in jaxconv and in PyTorch side by side, from the same start.

    python experiments/compare_torch.py [--epochs 10] [--batch-size 64]

Both start from the same weights (a torch init, imported into jaxconv), see the same
batches of the embedded digits in the same order, and use Adam with the same
settings; the table gives each epoch's test MSE for both and their relative gap.
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
import torch

from jaxconv import input_pipeline, interop
from jaxconv.models import Autoencoder
from jaxconv.torch_models import torch_autoencoder
from jaxconv.train import TrainConfig, create_train_state, evaluate, train_step


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 1)))


def torch_test_mse(model: torch.nn.Module, images: np.ndarray) -> float:
    with torch.no_grad():
        x = nchw(images)
        return torch.nn.functional.mse_loss(model(x), x).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)

    data = input_pipeline.load_dataset()
    config = TrainConfig(batch_size=args.batch_size, seed=args.seed)
    torch_model = torch_autoencoder(config.model)
    optimizer = torch.optim.Adam(torch_model.parameters(), lr=config.learning_rate)
    params = interop.params_from_state_dict(
        torch_model.state_dict(), Autoencoder(config.model), jnp.asarray(data.test_images[:1])
    )
    state = create_train_state(config, params)

    print(
        f"{'epoch':>5}  {'jaxconv test MSE':>16}  {'torch test MSE':>14}  {'rel. gap':>8}  "
        f"{'jaxconv s':>9}  {'torch s':>7}"
    )
    for epoch in range(1, args.epochs + 1):
        batches = list(
            input_pipeline.train_batches(
                data.train_images, config.batch_size, seed=config.seed, epoch=epoch
            )
        )
        start = time.perf_counter()
        for images in batches:
            state, loss = train_step(state, {"image": jnp.asarray(images)})
        loss.block_until_ready()
        jax_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for images in batches:
            optimizer.zero_grad()
            x = nchw(images)
            torch.nn.functional.mse_loss(torch_model(x), x).backward()
            optimizer.step()
        torch_seconds = time.perf_counter() - start
        ours = evaluate(state, {"image": data.test_images}, config.batch_size)["test_mse"]
        theirs = torch_test_mse(torch_model, data.test_images)
        print(
            f"{epoch:>5}  {ours:>16.6f}  {theirs:>14.6f}  {abs(ours / theirs - 1):>8.1e}  "
            f"{jax_seconds:>9.2f}  {torch_seconds:>7.2f}"
        )


if __name__ == "__main__":
    main()
