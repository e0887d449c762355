import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from filelock import FileLock

from jaxconv import input_pipeline
from jaxconv.input_pipeline import EMBEDDED_DATASET, Dataset, load_dataset

# Parity with PyTorch's float32 needs float32 products: on GPUs XLA's default is TF32.
jax.config.update("jax_default_matmul_precision", "highest")
# The XLA flags of every process of the run (pytest_configure keeps them, empty if unset).
XLA_FLAGS_AT_START = os.environ.get("XLA_FLAGS", "")
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
    # Every process of the run, this one and the ``jaxconv`` subprocesses of the tests, runs
    # XLA with the same flags (set, even empty, XLA_FLAGS is left alone by the commands,
    # which otherwise turn YNN fusion off in theirs only: tests/test_cli.py tests that), so
    # that a compiled program in the shared cache is what its key says. XLA reads the
    # variable when its backend starts, at the first computation, after this.
    os.environ.setdefault("XLA_FLAGS", "")
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller (workers inherit it)
        config._jaxconv_cache = tempfile.mkdtemp(prefix="jaxconv-tests-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._jaxconv_cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
        # A size limit turns on the cache's file lock around every read and write: without
        # it a process can read an entry another is still writing (a warning on stderr).
        os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_compilation_cache_max_size", int(os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE", -1))
    )
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


@pytest.fixture
def same_numerics_env() -> dict[str, str]:
    """The environment for a Python subprocess whose JAX computes bitwise what this test
    process computes: the matmul precision above and the XLA flags this process started
    with (set, even empty, ``jaxconv``'s commands leave them as they are)."""
    return {
        **os.environ,
        "XLA_FLAGS": XLA_FLAGS_AT_START,
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
    }


@pytest.fixture(scope="session")
def run_digits(mnist5k) -> Dataset:
    """512 train images (8 steps of the default batch of 64) and the whole test split (500)."""
    return Dataset(
        "mnist5k",
        mnist5k.train_images[:512],
        mnist5k.train_labels[:512],
        mnist5k.test_images,
        mnist5k.test_labels,
    )


def made_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """The folder ``name`` that ``make(folder)`` filled once for the whole pytest run: the
    first xdist worker to ask makes it, a worker asking meanwhile waits (a file lock)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders are side by side in the run's
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():  # written last: a worker may have failed half-way
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


FINISHED_RUN_EPOCHS = 3


@pytest.fixture(scope="session")
def finished_run(run_digits, tmp_path_factory) -> Path:
    """A finished run of the default autoencoder settings (``TrainConfig()``) on
    ``run_digits``: ``FINISHED_RUN_EPOCHS`` epochs, checkpoints 1 to 3, run.json and
    metrics.jsonl, trained once per test session (``made_once``). Tests read it; to write,
    copy it (``run_copy``)."""
    from jaxconv.train import TrainConfig, train_and_evaluate

    def train(folder: Path) -> None:
        state, _ = train_and_evaluate(
            run_digits, folder / "run", TrainConfig(), FINISHED_RUN_EPOCHS, progress=False
        )
        np.savez(folder / "params.npz", *(np.asarray(p) for p in jax.tree.leaves(state.params)))

    return made_once(tmp_path_factory, "finished_run", train) / "run"


@pytest.fixture(scope="session")
def finished_run_params(finished_run) -> list[np.ndarray]:
    """The parameters that training ``finished_run`` returned (``jax.tree.leaves`` order)."""
    with np.load(finished_run.parent / "params.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def save_digits(digits: Dataset, path: Path) -> None:
    """``digits`` as arrays ``train_x``, ``train_y``, ``test_x``, ``test_y`` in the .npz
    file ``path``, for subprocesses (faster than parsing the embedded CSV file)."""
    np.savez(
        path,
        train_x=digits.train_images,
        train_y=digits.train_labels,
        test_x=digits.test_images,
        test_y=digits.test_labels,
    )


@pytest.fixture(scope="session")
def run_digits_file(run_digits, tmp_path_factory) -> Path:
    """``run_digits`` saved by :func:`save_digits`."""
    path = tmp_path_factory.mktemp("run_digits") / "digits.npz"
    save_digits(run_digits, path)
    return path


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of ``finished_run``, for a test that writes in it."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture
def cli_dataset(monkeypatch) -> Callable[[Dataset], None]:
    """``use(dataset)``: from then on the in-process ``jaxconv`` commands (``cli.main``) get
    ``dataset`` for ``--dataset mnist5k`` instead of parsing the embedded CSV file again
    (about a second each time); other datasets load as usual."""
    real = input_pipeline.load_dataset

    def use(dataset: Dataset) -> None:
        def load(name: str = EMBEDDED_DATASET, *, data_dir: str | None = None) -> Dataset:
            return dataset if name == EMBEDDED_DATASET else real(name, data_dir=data_dir)

        monkeypatch.setattr(input_pipeline, "load_dataset", load)

    return use
