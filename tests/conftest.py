import os

import jax
import pytest
import torch

from jaxconv.input_pipeline import Dataset, load_dataset

# Parity with PyTorch's float32 needs float32 products: on GPUs XLA's default is TF32.
jax.config.update("jax_default_matmul_precision", "highest")
# One torch thread per test process (pytest-xdist runs one per core): more OpenMP threads
# than cores stall on each other; a 5-pixel conv1d took 24 ms with 2 threads on the busy
# 2-core machine, 0.01 ms with 1.
torch.set_num_threads(1)


def parity_count(full: int, sample: int) -> int:
    return full if os.environ.get("JAXCONV_PARITY") == "full" else sample


@pytest.fixture(scope="session")
def mnist5k() -> Dataset:
    return load_dataset()


@pytest.fixture(scope="session")
def small_digits(mnist5k) -> Dataset:
    """256 train and 64 test real digits: enough to train for a few quick epochs."""
    return Dataset(
        "mnist5k",
        mnist5k.train_images[:256],
        mnist5k.train_labels[:256],
        mnist5k.test_images[:64],
        mnist5k.test_labels[:64],
    )
