"""Training the autoencoder: the jit-compiled steps, sharding, checkpoints and the loop.

``train_step`` is the whole update: reconstruction MSE, its gradient, one optax
Adam step. The batch is sharded over all local devices (parameters replicated),
so the same code runs on one CPU, several GPUs or a TPU slice. A run directory
holds ``run.json`` (model and training settings), ``metrics.jsonl`` (one line per
epoch) and ``checkpoints/`` (orbax); a restarted run resumes from its latest
checkpoint and ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxconv import input_pipeline, models
from jaxconv.models import AutoencoderConfig

TrainState = train_state.TrainState


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What a run is: resuming it with other values would not continue the same run."""

    dataset: str = input_pipeline.EMBEDDED_DATASET
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    model: AutoencoderConfig = AutoencoderConfig()

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{**d, "model": AutoencoderConfig.from_dict(d["model"])})


def mse(reconstructions: jax.Array, images: jax.Array) -> jax.Array:
    """Mean squared error over all pixels (``torch.nn.MSELoss()``)."""
    return jnp.mean((reconstructions - images) ** 2)


def create_train_state(config: TrainConfig, params: dict | None = None) -> TrainState:
    """A fresh Adam state for ``params``, by default PyTorch's init from ``config.seed``."""
    model = models.Autoencoder(config.model)
    if params is None:
        params = models.init_params(config.model, config.seed)
    params = jax.tree.map(jnp.asarray, params)
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=optax.adam(config.learning_rate)
    )


@jax.jit
def train_step(state: TrainState, images: jax.Array) -> tuple[TrainState, jax.Array]:
    """One Adam step on the reconstruction MSE of ``images``; returns the new state and the loss."""

    def loss_fn(params):
        return mse(state.apply_fn({"params": params}, images), images)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def eval_step(state: TrainState, images: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over the real (``mask`` = 1) images of each image's reconstruction MSE."""
    reconstructions = state.apply_fn({"params": state.params}, images)
    per_image = jnp.mean((reconstructions - images) ** 2, axis=(1, 2, 3))
    return jnp.sum(per_image * mask)


def reconstruct(state: TrainState, images: np.ndarray) -> np.ndarray:
    """The model's reconstructions of ``images``."""
    return np.asarray(jax.jit(state.apply_fn)({"params": state.params}, images))


def shardings() -> tuple[NamedSharding, NamedSharding]:
    """(batch split over all local devices, replicated) on a 1-D device mesh."""
    mesh = Mesh(np.array(jax.local_devices()), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, num_examples: int) -> None:
    """Raises ``ValueError`` unless ``batch_size`` fits the data and splits over the devices."""
    input_pipeline.steps_per_epoch(num_examples, batch_size)
    devices = jax.local_device_count()
    if batch_size % devices:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of the number of devices ({devices})"
        )


def evaluate(state: TrainState, images: np.ndarray, batch_size: int) -> float:
    """Reconstruction MSE over all of ``images`` (per image, then averaged)."""
    batch_sharding, _ = shardings()
    total = 0.0
    for batch, mask in input_pipeline.eval_batches(images, batch_size):
        total += float(eval_step(state, *jax.device_put((batch, mask), batch_sharding)))
    return total / len(images)


class RunDir:
    """A run directory's files: settings, metrics and orbax checkpoints."""

    def __init__(self, workdir: str | Path, keep: int = 3) -> None:
        self.path = Path(workdir)
        self.config_path = self.path / "run.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_dir = self.path / "checkpoints"
        self.keep = keep

    def read_config(self) -> TrainConfig | None:
        if not self.config_path.exists():
            return None
        return TrainConfig.from_dict(json.loads(self.config_path.read_text()))

    def check(self, config: TrainConfig) -> None:
        """Raises ``ValueError`` if the directory holds a run with other settings."""
        existing = self.read_config()
        if existing is not None and existing != config:
            raise ValueError(
                f"{self.path} holds a run with other settings ({existing}); resuming it with "
                f"{config} would not continue it. Choose another --workdir."
            )

    def claim(self, config: TrainConfig) -> None:
        """Writes ``run.json``; :meth:`check` it first."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    def checkpoints(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.checkpoint_dir.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler(),  # so that item_metadata reads shapes
        )

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def keep_metrics_until(self, epoch: int) -> list[dict]:
        """Drops the lines of epochs after ``epoch`` (their checkpoint was never saved)."""
        kept = [m for m in self.metrics() if m["epoch"] <= epoch]
        self.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
        return kept

    def append_metrics(self, metrics: dict) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")


def restore_latest(manager: ocp.CheckpointManager, state: TrainState) -> tuple[TrainState, int]:
    """The latest checkpoint's state and epoch, or ``(state, 0)`` when there is none."""
    epoch = manager.latest_step()
    if epoch is None:
        return state, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    _check_fits(manager.item_metadata(epoch), abstract, epoch)
    return manager.restore(epoch, args=ocp.args.StandardRestore(abstract)), epoch


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
    """``{"params/encoder/Conv_0/kernel": shape, ...}`` of a pytree (a Python scalar: ``()``)."""

    def name(key) -> str:  # a dict key, an attribute or a sequence index
        return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))

    return {
        "/".join(map(name, path)): tuple(getattr(leaf, "shape", ()))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _check_fits(metadata, abstract, epoch: int) -> None:
    """Raises ``ValueError`` naming the arrays whose saved shape ``abstract`` does not
    have, before a restore starts (orbax leaves work behind when one fails)."""
    saved, wanted = _shapes_by_path(metadata), _shapes_by_path(abstract)
    wrong = [
        f"{path}: saved {saved.get(path)}, model needs {wanted.get(path)}"
        for path in sorted(saved.keys() | wanted.keys(), key=lambda p: (p.startswith("opt"), p))
        if saved.get(path) != wanted.get(path)
    ]
    if wrong:
        shown = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise ValueError(f"checkpoint of epoch {epoch}, arrays that differ: {shown}")


def check_run(dataset: input_pipeline.Dataset, workdir: str | Path, config: TrainConfig) -> None:
    """Raises ``ValueError`` for settings that cannot train on ``dataset`` in ``workdir``."""
    check_batch_size(config.batch_size, len(dataset.train_images))
    models.check_images(config.model, dataset.train_images.shape)
    RunDir(workdir).check(config)


def train_and_evaluate(
    dataset: input_pipeline.Dataset,
    workdir: str | Path,
    config: TrainConfig,
    epochs: int,
    *,
    checkpoint_every: int = 1,
    keep: int = 3,
    progress: bool = True,
) -> tuple[TrainState, list[dict]]:
    """Trains to ``epochs`` epochs in ``workdir``, resuming from its latest checkpoint.

    Checkpoints are saved every ``checkpoint_every`` epochs and after the last; the
    ``keep`` newest stay. Returns the final state and the metrics of every epoch.
    """
    check_run(dataset, workdir, config)
    run = RunDir(workdir, keep)
    run.claim(config)
    batch_sharding, replicated = shardings()
    manager = run.checkpoints()
    state, start = restore_latest(manager, create_train_state(config))
    state = jax.device_put(state, replicated)
    history = run.keep_metrics_until(start)
    steps = input_pipeline.steps_per_epoch(len(dataset.train_images), config.batch_size)
    batch_shape = jax.ShapeDtypeStruct(
        (config.batch_size, *config.model.image_shape), jnp.float32, sharding=batch_sharding
    )
    compile_start = time.perf_counter()
    step = train_step.lower(state, batch_shape).compile()
    if progress and start < epochs:
        tqdm.write(f"compiled the train step in {time.perf_counter() - compile_start:.1f} s")

    for epoch in range(start + 1, epochs + 1):
        batches = input_pipeline.train_batches(
            dataset.train_images, config.batch_size, seed=config.seed, epoch=epoch
        )
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        losses = []
        start_time = time.perf_counter()
        for images in batches:
            state, loss = step(state, jax.device_put(images, batch_sharding))
            losses.append(loss)
            bar.update()
            if bar.n % 10 == 0 or bar.n == steps:
                elapsed = time.perf_counter() - start_time
                bar.set_postfix(
                    loss=f"{float(loss):.4f}", img_s=f"{bar.n * config.batch_size / elapsed:.0f}"
                )
        train_mse = float(np.mean(jax.device_get(losses)))
        seconds = time.perf_counter() - start_time
        bar.close()
        metrics = {
            "epoch": epoch,
            "train_mse": train_mse,
            "test_mse": evaluate(state, dataset.test_images, config.batch_size),
            "images_per_s": steps * config.batch_size / seconds,
            "seconds": seconds,
        }
        if epoch % checkpoint_every == 0 or epoch == epochs:
            manager.save(epoch, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
        run.append_metrics(metrics)
        history.append(metrics)
        if progress:
            tqdm.write(
                f"epoch {epoch:3d}  train_mse {train_mse:.5f}  test_mse {metrics['test_mse']:.5f}  "
                f"{metrics['images_per_s']:.0f} img/s"
            )
    manager.close()
    return state, history


class RunDirError(ValueError):
    """A run directory that is missing, unfinished, or from an incompatible model."""


def load_run(workdir: str | Path) -> tuple[TrainConfig, TrainState]:
    """The settings and the latest checkpointed state of the run in ``workdir``."""
    run = RunDir(workdir)
    hint = f"train one first: jaxconv train --workdir {run.path}"
    if not run.config_path.exists():
        raise RunDirError(f"{run.path} holds no jaxconv run (no run.json); {hint}")
    try:
        config = run.read_config()
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(
            f"{run.config_path} is not from this version of jaxconv's model ({e!r}); {hint}"
        ) from e
    manager = run.checkpoints()
    if manager.latest_step() is None:
        raise RunDirError(f"{run.path} has no finished checkpoint yet; {hint}")
    try:
        # an abstract target: restoring needs shapes, not a compiled init
        target = jax.eval_shape(lambda: create_train_state(config))
        state, _ = restore_latest(manager, target)
    except (ValueError, KeyError) as e:
        raise RunDirError(
            f"the checkpoint in {run.checkpoint_dir} does not fit the model of "
            f"{run.config_path}: {e}"
        ) from e
    finally:
        manager.close()
    return config, state
