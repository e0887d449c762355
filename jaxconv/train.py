"""Training: one loop for every task, checkpointed in its run directory, and resume.

A *task* (the autoencoder of :mod:`jaxconv.models`, the segmenter of
:mod:`jaxconv.segmentation`) says what differs between trained models: the initial
parameters, the loss of a batch, the optimizer and the test metrics. The rest is this
module's, written once:

* :func:`train_step`: the task's loss, its gradient and one optax update, jit-compiled;
  the batch is sharded over every device of every process, the parameters replicated
  (:mod:`jaxconv.distributed`);
* the run directory (:mod:`jaxconv.rundir`): ``run.json`` (settings), ``metrics.jsonl``
  and ``checkpoints/``, each checkpoint with the metrics of every epoch up to it;
* resume from the latest checkpoint, ending bitwise equal to an uninterrupted run (the
  data order is a function of seed and epoch);
* Ctrl-C stops after saving the last finished epoch (:class:`Interrupted`); a non-finite
  loss stops the run before anything of it is saved (:class:`Diverged`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from jaxconv import configs, distributed, input_pipeline
from jaxconv.models import AutoencoderConfig
from jaxconv.rundir import (
    CheckpointError,
    RunDir,
    RunDirError,
    restore_latest,
    save_checkpoint,
)

Batch = Mapping[str, jax.Array]
Arrays = Mapping[str, np.ndarray]

SEED_LIMIT = 2**32  # jax.random.key folds larger seeds onto smaller ones
# Train steps between two looks at the losses (a device-to-host transfer) and at Ctrl-C
# (with several processes, a collective): the steps run ahead of the host in between.
CHECK_EVERY = 10
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def _last_level_cache_bytes(caches: Path = CPU_CACHES) -> int | None:
    """The size of the CPU's highest cache level (Linux's sysfs), or None where unreadable."""
    sizes = {}
    try:
        for index in caches.glob("index*"):
            size = (index / "size").read_text().strip()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            sizes[int((index / "level").read_text())] = int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        return None
    return sizes[max(sizes)] if sizes else None


def _cpu_chunk(cache_bytes: int | None) -> int:
    """Examples per device in one chunk of a train step's batch on the CPU at most (see
    loss_and_grads): a larger batch's activations outgrow the caches. 256 with 32 MiB of
    last-level cache or more, else 128.

    The lecture autoencoder, images/s (2 cores). With 16 MiB of L3 (the previous host),
    at batch 1024: 7.4k whole, 10.9k / 11.3k / 10.8k in chunks of 64 / 128 / 256. With 32 MiB
    (2026-12-05, medians of 15 paired rounds, chunks of 128 against 256): batch 256 19.1k
    -> 20.0k and 19.1k -> 20.0k, batch 1024 20.2k -> 20.4k and 19.1k -> 19.6k; chunks of
    512 at 1024, 16.1k."""
    return 256 if cache_bytes is not None and cache_bytes >= 32 << 20 else 128


CPU_CHUNK = _cpu_chunk(_last_level_cache_bytes())


class Task(Protocol):
    """What a trained model is; :func:`train_step` and :func:`fit` are the same for all."""

    train_metric: ClassVar[str]  # the name of the mean train loss in the metrics
    # whether loss(batch) is the mean of loss(chunk) over equal chunks of the batch
    loss_is_example_mean: ClassVar[bool]

    def init_params(self, seed: int) -> dict: ...

    def apply(self, params: dict, inputs: jax.Array) -> jax.Array: ...

    def loss(self, params: dict, batch: Batch) -> jax.Array: ...

    def eval_sums(self, params: dict, batch: Batch, mask: jax.Array) -> dict[str, jax.Array]:
        """Sums over the real (``mask`` = 1) examples, added up over the test batches."""

    def metrics(self, sums: dict[str, np.ndarray], count: int) -> dict[str, Any]:
        """The test metrics from the sums of all ``count`` test examples."""

    def optimizer(
        self, learning_rate: float, steps_per_epoch: int
    ) -> optax.GradientTransformation: ...

    def augment(
        self, rows: dict[str, np.ndarray], rngs: list[np.random.Generator]
    ) -> dict[str, np.ndarray]:
        """The training batch made of ``rows`` (one generator per row for random draws)."""


class ModelConfig(Protocol):
    """A frozen, hashable description of a model: what a checkpoint needs to be read back."""

    task_name: ClassVar[str]  # its task's name, recorded in run.json
    command: ClassVar[str]  # the jaxconv command that trains it

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig: ...

    def task(self) -> Task: ...


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What a run is: resuming it with other values would not continue the same run."""

    dataset: str = input_pipeline.EMBEDDED_DATASET
    batch_size: int = configs.AUTOENCODER.batch_size
    learning_rate: float = configs.AUTOENCODER.learning_rate
    seed: int = configs.AUTOENCODER.seed
    model: Any = AutoencoderConfig()  # a ModelConfig

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0, SEED_LIMIT - 1)
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ValueError(f"learning_rate must be a positive number, got {rate!r}")
        if not math.isfinite(rate):
            raise ValueError(f"learning_rate must be finite, got {rate!r}")

    @property
    def task(self) -> Task:
        return self.model.task()

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "task": self.model.task_name,
            "model": self.model.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict, model_class: type = AutoencoderConfig) -> TrainConfig:
        """The settings of ``d`` (a ``run.json``); ``ValueError`` naming what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"settings must be a JSON object, got {type(d).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in fields if name not in d]
        if missing:
            raise ValueError(f"missing settings: {', '.join(missing)}")
        task = model_class.task_name
        if d.get("task", task) != task:
            raise ValueError(f"it holds {_a(d['task'])} run, not {_a(task)} run")
        try:
            model = model_class.from_dict(d["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad model settings: {e!r}") from e
        return cls(**{name: d[name] for name in fields if name != "model"}, model=model)


def _a(word: str) -> str:
    """``word`` after its indefinite article: 'an autoencoder', 'a segmentation'."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


class TrainState(train_state.TrainState):
    """Flax's train state, with the task that gives its loss (static: not saved)."""

    task: Task = flax.struct.field(pytree_node=False, default=None)


def create_train_state(
    config: TrainConfig, params: dict | None = None, *, steps_per_epoch: int = 1
) -> TrainState:
    """A fresh optimizer state for ``params``, by default the task's init from ``config.seed``.

    ``steps_per_epoch`` is for tasks whose learning-rate schedule is counted in epochs.
    """
    task = config.task
    if params is None:
        params = task.init_params(config.seed)
    params = jax.tree.map(jnp.asarray, params)
    tx = _optimizer(task, config.learning_rate, steps_per_epoch)
    state = TrainState.create(apply_fn=_apply_fn(task), params=params, tx=tx, task=task)
    # a restored step is a strong int32; a weak one would compile the steps a second time
    return state.replace(step=jnp.zeros((), jnp.int32))


# The train state's static fields, made once per process for equal settings: the jitted
# steps key on them, so that every state of these settings shares their programs.
@functools.lru_cache(maxsize=32)
def _apply_fn(task: Task) -> Callable:
    return task.apply


@functools.lru_cache(maxsize=32)
def _optimizer(
    task: Task, learning_rate: float, steps_per_epoch: int
) -> optax.GradientTransformation:
    return task.optimizer(learning_rate, steps_per_epoch)


@jax.jit
def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, jax.Array]:
    """One optimizer step on the task's loss of ``batch``; returns the new state and the loss."""
    loss, grads = loss_and_grads(state.task, state.params, batch)
    return state.apply_gradients(grads=grads), loss


def loss_and_grads(task: Task, params: dict, batch: Batch) -> tuple[jax.Array, Any]:
    """The task's loss of ``batch`` and its gradient in ``params``.

    On the CPU, where the loss is a mean over examples (``task.loss_is_example_mean``)
    and a device holds over ``CPU_CHUNK`` of them, both are the mean over ``c`` equal
    chunks, taken one after the other in a loop (``lax.scan``): ``c`` is the fewest that
    divides the examples per device into at most ``CPU_CHUNK`` and at least half that.
    Chunk ``k`` holds examples ``k, k + c, ...``, so that every device keeps its rows.
    """
    value_and_grad = jax.value_and_grad(task.loss)
    if not (task.loss_is_example_mean and jax.default_backend() == "cpu"):
        return value_and_grad(params, batch)
    count = _chunk_count(len(next(iter(batch.values()))) // jax.device_count())
    if count == 1:
        return value_and_grad(params, batch)
    chunks = {
        key: jnp.swapaxes(value.reshape(-1, count, *value.shape[1:]), 0, 1)
        for key, value in batch.items()
    }

    def add(total, chunk):
        return jax.tree.map(jnp.add, total, value_and_grad(params, chunk)), None

    zeros = jax.tree.map(jnp.zeros_like, (jnp.zeros(()), params))
    total, _ = jax.lax.scan(add, zeros, chunks)
    return jax.tree.map(lambda t: t / count, total)


def _chunk_count(examples: int) -> int:
    """The fewest chunks that divide ``examples`` into ``CPU_CHUNK // 2`` to ``CPU_CHUNK``
    each; 1 if there is none."""
    for count in range(1, examples + 1):
        if examples % count == 0 and examples // count <= CPU_CHUNK:
            return count if 2 * (examples // count) >= CPU_CHUNK else 1
    return 1


@jax.jit
def eval_step(state: TrainState, batch: Batch, mask: jax.Array) -> dict[str, jax.Array]:
    """The task's sums over the real (``mask`` = 1) examples of ``batch``."""
    return state.task.eval_sums(state.params, batch, mask)


def _local(batch: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    rows = distributed.process_rows(batch_size)
    return {key: value[rows] for key, value in batch.items()}


def evaluate(state: TrainState, test: Arrays, batch_size: int) -> dict[str, Any]:
    """The task's test metrics over all of ``test`` (padded batches, padding masked out)."""
    batch_sharding, _ = distributed.shardings()
    totals: dict[str, np.ndarray] = {}
    for batch, mask in input_pipeline.eval_batches(test, batch_size):
        local = _local({**batch, "mask": mask}, batch_size)
        sharded = distributed.global_batch(local, batch_sharding)
        mask_array = sharded.pop("mask")
        sums = jax.device_get(eval_step(state, sharded, mask_array))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0) + np.asarray(value, np.float64)
    return state.task.metrics(totals, input_pipeline.num_examples(test))


class Diverged(RuntimeError):
    """The loss became NaN or infinite; nothing of the diverged epoch was saved."""

    def __init__(self, epoch: int, step: int, loss: float, saved: int) -> None:
        resume = f"the last good checkpoint (epoch {saved}) is kept" if saved else "none saved"
        super().__init__(
            f"the loss became {loss} at epoch {epoch}, step {step}: training diverged and "
            f"stopped; {resume}. Lower --learning-rate and use a new --workdir"
        )
        self.epoch, self.step = epoch, step


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped after saving its last finished epoch."""

    def __init__(self, saved: int) -> None:
        super().__init__(saved)
        self.saved = saved


def check_run(train: Arrays, test: Arrays, workdir: str | Path, config: TrainConfig) -> None:
    """Raises ``ValueError`` for settings that cannot train on these splits in ``workdir``."""
    if input_pipeline.num_examples(test) == 0:
        raise ValueError(f"dataset {config.dataset!r} has an empty test split")
    input_pipeline.steps_per_epoch(input_pipeline.num_examples(train), config.batch_size)
    distributed.check_batch_size(config.batch_size)
    RunDir(workdir).check(config)


@contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C (SIGINT); a second one interrupts at once."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        tqdm.write("Ctrl-C: stopping after saving the last finished epoch (again: stop now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def fit(
    train: Arrays,
    test: Arrays,
    workdir: str | Path,
    config: TrainConfig,
    epochs: int,
    *,
    checkpoint_every: int = configs.CHECKPOINT_EVERY,
    keep: int = configs.KEEP,
    progress: bool = True,
) -> tuple[TrainState, list[dict]]:
    """Trains ``config.task`` for ``epochs`` epochs in ``workdir``, resuming from its checkpoint.

    ``train`` and ``test`` map the batch keys the task reads (``"image"``, ...) to arrays
    with one row per example. Checkpoints are saved every ``checkpoint_every`` epochs and
    after the last; the ``keep`` newest stay. Returns the final state and the metrics of
    every epoch.

    Raises:
        ValueError: settings that cannot train here (``RunDirError`` for the workdir), or
            ``epochs`` below the epoch of the latest checkpoint.
        Diverged: the loss became NaN or infinite.
        Interrupted: Ctrl-C; the last finished epoch is saved.

    The loss and Ctrl-C are looked at every ``CHECK_EVERY`` steps and at the end of each
    epoch; with several processes, all raise either at the same step, even when only one
    of them got the Ctrl-C.
    """
    _check_int("epochs", epochs, 1)
    _check_int("checkpoint_every", checkpoint_every, 1)
    _check_int("keep", keep, 1)
    check_run(train, test, workdir, config)
    run = RunDir(workdir, keep)
    run.claim(config)
    batch_sharding, replicated = distributed.shardings()
    num_train = input_pipeline.num_examples(train)
    steps = input_pipeline.steps_per_epoch(num_train, config.batch_size)
    task = config.task
    with run.checkpoints() as manager:
        fresh = jax.eval_shape(lambda: create_train_state(config, steps_per_epoch=steps))
        state, history, start = restore_latest(manager, fresh)
        if start > epochs:
            raise ValueError(
                f"{run.path} is checkpointed at epoch {start}, after --epochs {epochs}: "
                f"ask for --epochs {start} or more, or use another --workdir"
            )
        if start == 0:
            state = create_train_state(config, steps_per_epoch=steps)
        state = jax.device_put(state, replicated)
        run.write_metrics(history)
        if progress and start:
            left = f"epochs {start + 1} to {epochs}" if start < epochs else "nothing left to train"
            _log(f"{run.path}: resumed from epoch {start} (its latest checkpoint); {left}")
        if start == epochs:
            return state, history
        first = _train_batch(task, train, np.arange(config.batch_size), config, 0)
        example = {
            key: jax.ShapeDtypeStruct(
                (config.batch_size, *value.shape[1:]), value.dtype, sharding=batch_sharding
            )
            for key, value in first.items()
        }
        compile_start = time.perf_counter()
        step_fn = train_step.lower(state, example).compile()
        if progress:
            _log(f"compiled the train step in {time.perf_counter() - compile_start:.1f} s")

        saved, finished, stopping = start, state, False
        with _stop_on_ctrl_c() as stop:
            for epoch in range(start + 1, epochs + 1):
                state, train_loss, seconds, stopping = _train_epoch(
                    step_fn, state, train, config, epoch, epochs, steps, stop, progress, saved
                )
                if train_loss is None:  # Ctrl-C within the epoch: its state is dropped
                    break
                finished = state
                metrics = {
                    "epoch": epoch,
                    task.train_metric: train_loss,
                    **evaluate(state, test, config.batch_size),
                    "images_per_s": steps * config.batch_size / seconds,
                    "seconds": seconds,
                }
                history.append(metrics)
                if epoch % checkpoint_every == 0 or epoch == epochs:
                    save_checkpoint(manager, epoch, state, history)
                    saved = epoch
                run.write_metrics(history)
                if progress:
                    _log(_summary(metrics))
                if stopping:
                    break
            if stopping:  # every process agreed on it, so they save together
                if saved < len(history):
                    save_checkpoint(manager, len(history), finished, history)
                raise Interrupted(len(history))
    return state, history


def _log(text: str) -> None:
    """A line of progress, with the process's id when there are several."""
    tqdm.write(distributed.log_prefix() + text)


def _summary(metrics: dict) -> str:
    numbers = "  ".join(
        f"{key} {value:.5f}"
        for key, value in metrics.items()
        if isinstance(value, float) and key not in ("images_per_s", "seconds")
    )
    return f"epoch {metrics['epoch']:3d}  {numbers}  {metrics['images_per_s']:.0f} img/s"


def _train_batch(
    task: Task, train: Arrays, examples: np.ndarray, config: TrainConfig, epoch: int
) -> dict[str, np.ndarray]:
    """The rows ``examples`` of ``train`` as the task trains on them (augmented).

    Each example's random draws come from its own generator, seeded by ``(seed, epoch,
    example)``: the same however the batch is split over processes, and on resume.
    """
    rows = {key: value[examples] for key, value in train.items()}
    rngs = [np.random.default_rng([config.seed, epoch, int(i)]) for i in examples]
    return task.augment(rows, rngs)


def _fetch(losses: list[jax.Array]) -> np.ndarray:
    """The host copy of ``losses`` (one transfer)."""
    return np.asarray(jax.device_get(losses))


def _train_epoch(
    step_fn,
    state: TrainState,
    train: Arrays,
    config: TrainConfig,
    epoch: int,
    epochs: int,
    steps: int,
    stop: threading.Event,
    progress: bool,
    saved: int,
) -> tuple[TrainState, float | None, float, bool]:
    """One epoch of train steps: ``(state, mean loss, seconds, stopping)``.

    Every ``CHECK_EVERY`` steps and after the last, the losses not yet fetched are
    fetched (one transfer) and every process learns whether any was asked to stop, so
    all stop at the same step: ``stopping`` is True, with mean loss None when the stop
    came before the epoch's last step (its state is then dropped). Raises ``Diverged``
    at the first non-finite loss, before the state can be saved; the losses are the
    same on every process (a mean over the global batch), so all raise it together.
    """
    batch_sharding, _ = distributed.shardings()
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch}/{epochs}",
        disable=not (progress and distributed.is_primary()),
        leave=False,
    )
    pending: list[jax.Array] = []  # losses still on the devices
    fetched: list[np.ndarray] = []
    start_time = time.perf_counter()
    order = input_pipeline.epoch_permutation(input_pipeline.num_examples(train), config.seed, epoch)
    rows = distributed.process_rows(config.batch_size)
    for step in range(1, steps + 1):
        examples = order[(step - 1) * config.batch_size : step * config.batch_size][rows]
        local = _train_batch(state.task, train, examples, config, epoch)
        state, loss = step_fn(state, distributed.global_batch(local, batch_sharding))
        pending.append(loss)
        bar.update()
        if step % CHECK_EVERY and step < steps:
            continue
        values = _fetch(pending)
        pending.clear()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            bar.close()
            first = step - len(values) + int(bad[0]) + 1
            raise Diverged(epoch, first, float(values[bad[0]]), saved)
        fetched.append(values)
        elapsed = time.perf_counter() - start_time
        bar.set_postfix(loss=f"{values[-1]:.4f}", img_s=f"{step * config.batch_size / elapsed:.0f}")
        stopping = distributed.any_process(stop.is_set())
        if stopping and step < steps:
            bar.close()
            return state, None, 0.0, True
    seconds = time.perf_counter() - start_time
    bar.close()
    return state, float(np.mean(np.concatenate(fetched))), seconds, stopping


def train_and_evaluate(
    dataset: input_pipeline.Dataset,
    workdir: str | Path,
    config: TrainConfig,
    epochs: int,
    **kwargs: Any,
) -> tuple[TrainState, list[dict]]:
    """:func:`fit` of the autoencoder on ``dataset``'s images (keyword arguments: ``fit``'s)."""
    return fit(
        {"image": dataset.train_images},
        {"image": dataset.test_images},
        workdir,
        config,
        epochs,
        **kwargs,
    )


def load_run(
    workdir: str | Path, model_class: type = AutoencoderConfig
) -> tuple[TrainConfig, TrainState]:
    """The settings and the latest checkpointed state of the run in ``workdir``.

    ``model_class`` is the kind of model expected (the autoencoder's config by default).
    Raises ``RunDirError`` naming the file and the fix when there is no such run.
    """
    run = RunDir(workdir)
    nearest = next(p for p in (run.path, *run.path.parents) if p.exists())
    if not nearest.is_dir():  # no command would make it a run
        raise RunDirError(f"--workdir {run.path}: {nearest} is a file, not a run directory")
    hint = f"train one first: jaxconv {model_class.command} --workdir {run.path}"
    if not run.config_path.exists():
        raise RunDirError(f"{run.path} holds no jaxconv run (no run.json); {hint}")
    config = run.read_config(TrainConfig, model_class)
    with run.checkpoints() as manager:
        if manager.latest_step() is None:
            raise RunDirError(f"{run.path} has no finished checkpoint yet; {hint}")
        # an abstract target: restoring needs shapes, not a compiled init
        target = jax.eval_shape(lambda: create_train_state(config))
        try:
            state, _, epoch = restore_latest(manager, target)
        except CheckpointError:
            raise
        except RunDirError as e:
            raise RunDirError(
                f"the checkpoint in {run.checkpoint_dir} does not fit the model of "
                f"{run.config_path}: {e}"
            ) from e
    # the optimizer of the run: a schedule counted in epochs needs its steps per epoch
    steps_per_epoch = int(state.step) // epoch
    tx = _optimizer(config.task, config.learning_rate, steps_per_epoch)
    return config, state.replace(tx=tx)
