import os
import shutil
import tempfile

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


def pytest_configure(config: pytest.Config) -> None:
    """One persistent XLA compilation cache for the whole run, shared by the xdist workers
    and every ``jaxconv`` subprocess a test starts (they inherit the environment): the
    autoencoder's and segmenter's programs, compiled again by each of some 40 processes,
    are compiled once. The first process to compile a program writes it; results are the
    same executable's."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller (workers inherit it)
        config._jaxconv_cache = tempfile.mkdtemp(prefix="jaxconv-tests-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._jaxconv_cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")),
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    cache = getattr(config, "_jaxconv_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


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
