"""A run directory: ``run.json`` (the settings), ``metrics.jsonl`` (one line per epoch) and
``checkpoints/`` (orbax), written so that a crash at any moment leaves a run that resumes.

Each checkpoint holds the train state *and* the metrics of every epoch up to it, so the two
are committed together: on resume ``metrics.jsonl`` is rewritten from the checkpoint.
``run.json`` and ``metrics.jsonl`` are replaced atomically. A checkpoint is checked against
the model before it is restored (:func:`restore_latest`). The training loop that writes
them is :mod:`jaxconv.train`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxconv import configs, distributed


class RunDirError(ValueError):
    """A run directory that is missing, unfinished, unreadable, or from another model."""


class CheckpointError(RunDirError):
    """A checkpoint that cannot be read (truncated, damaged): a runtime failure."""


class RunDir:
    """A run directory's files: settings, metrics and orbax checkpoints.

    Only the primary process writes ``run.json`` and ``metrics.jsonl``; every process
    takes part in saving and restoring checkpoints.
    """

    def __init__(self, workdir: str | Path, keep: int = configs.KEEP) -> None:
        self.path = Path(workdir)
        self.config_path = self.path / "run.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_dir = self.path / "checkpoints"
        self.keep = keep

    def read_config(self, config_class: type, model_class: type) -> Any:
        """The settings in ``run.json`` as ``config_class.from_dict(settings, model_class)``
        (a :class:`jaxconv.train.TrainConfig`), None if there is none; ``RunDirError`` if
        unreadable."""
        if not self.config_path.exists():
            return None
        try:
            return config_class.from_dict(json.loads(self.config_path.read_text()), model_class)
        except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise RunDirError(
                f"{self.config_path} cannot be read as jaxconv run settings ({e}); "
                f"choose another --workdir or move the file away"
            ) from e

    def check(self, config: Any) -> None:
        """Raises ``RunDirError`` unless ``workdir`` is a usable directory for ``config``."""
        nearest = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not nearest.is_dir():
            raise RunDirError(f"--workdir {self.path}: {nearest} is a file, not a directory")
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise RunDirError(f"--workdir {self.path}: {nearest} is not writable")
        existing = self.read_config(type(config), type(config.model))
        if existing is not None and existing != config:
            ours, theirs = _flat(config.to_dict()), _flat(existing.to_dict())
            differ = ", ".join(
                f"{name} {json.dumps(theirs.get(name))} (asked: {json.dumps(ours.get(name))})"
                for name in sorted(ours.keys() | theirs.keys())
                if ours.get(name) != theirs.get(name)
            )
            raise RunDirError(
                f"{self.path} holds a run with other settings: {differ}. Resuming it with "
                "these would not continue it: choose another --workdir, or the run's settings."
            )

    def claim(self, config: Any) -> None:
        """Writes ``run.json`` (primary process); :meth:`check` it first."""
        if distributed.is_primary():
            self.path.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.config_path, json.dumps(config.to_dict(), indent=2) + "\n")

    def checkpoints(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.checkpoint_dir.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, create=True, cleanup_tmp_directories=True
            ),
            item_handlers={  # named handlers, so that item_metadata reads the saved shapes
                "state": ocp.StandardCheckpointHandler(),
                "history": ocp.JsonCheckpointHandler(),
            },
        )

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def write_metrics(self, history: list[dict]) -> None:
        """Replaces ``metrics.jsonl`` with one line per epoch of ``history`` (atomically)."""
        if distributed.is_primary():
            _write_atomically(self.metrics_path, "".join(json.dumps(m) + "\n" for m in history))


def _flat(settings: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"embedding_dim": 8}}`` as ``{"model.embedding_dim": 8}``."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_atomically(path: Path, text: str) -> None:
    """``path`` holds either its old contents or ``text``, never a part of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(manager: ocp.CheckpointManager, epoch: int, state: Any, history: list) -> None:
    """Saves ``state`` (a pytree) and the metrics ``history`` as the checkpoint of ``epoch``,
    and waits until it is written."""
    manager.save(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)
        ),
    )
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> tuple[Any, list[dict], int]:
    """The latest checkpoint's state, metrics history and epoch, or ``(state, [], 0)``.

    Raises ``RunDirError`` naming the checkpoint when it does not fit ``state`` or
    cannot be read; nothing on disk is changed.
    """
    epoch = manager.latest_step()
    if epoch is None:
        return state, [], 0
    where = manager.directory / str(epoch)
    _, replicated = distributed.shardings()  # where every process can read them from
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state
    )
    try:
        _check_fits(manager.item_metadata(epoch)["state"], abstract, epoch)
        restored = manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
            ),
        )
    except RunDirError:
        raise
    except Exception as e:  # orbax raises many kinds for a damaged checkpoint
        raise CheckpointError(
            f"the checkpoint {where} cannot be read ({type(e).__name__}: {_first_line(e)}); "
            f"move it out of {manager.directory} to resume from the one before"
        ) from e
    history = restored["history"]
    if not isinstance(history, list) or [m.get("epoch") for m in history] != list(
        range(1, epoch + 1)
    ):
        raise CheckpointError(f"the checkpoint {where} holds no metrics of epochs 1 to {epoch}")
    return restored["state"], history, epoch


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
    """``{"params/encoder/Conv_0/kernel": shape, ...}`` of a pytree (a Python scalar: ``()``)."""

    def name(key) -> str:  # a dict key, an attribute or a sequence index
        return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))

    return {
        "/".join(map(name, path)): tuple(getattr(leaf, "shape", ()))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _check_fits(metadata, abstract, epoch: int) -> None:
    """Raises ``RunDirError`` naming the arrays whose saved shape ``abstract`` does not
    have, before a restore starts (orbax leaves work behind when one fails)."""
    saved, wanted = _shapes_by_path(metadata), _shapes_by_path(abstract)
    wrong = [
        f"{path}: saved {saved.get(path)}, model needs {wanted.get(path)}"
        for path in sorted(saved.keys() | wanted.keys(), key=lambda p: (p.startswith("opt"), p))
        if saved.get(path) != wanted.get(path)
    ]
    if wrong:
        shown = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise RunDirError(f"checkpoint of epoch {epoch}, arrays that differ: {shown}")
