"""Processes and devices: the one place that knows how a global batch is laid out.

A run is one JAX process or several joined by ``jax.distributed`` (one per host). Every
device of every process holds a slice of each global batch (parameters are replicated),
so the results do not depend on how the devices are split into processes:

* :func:`shardings`: ``(batch split over all devices, replicated)`` on a 1-D mesh;
* :func:`process_rows`: which rows of a global batch this process loads;
* :func:`global_batch`: this process's rows as one global, sharded array per key;
* :func:`is_primary`: whether this process writes the run's files (process 0).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def shardings() -> tuple[NamedSharding, NamedSharding]:
    """(batch split over all devices of all processes, replicated) on a 1-D device mesh."""
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int) -> None:
    """Raises ``ValueError`` unless ``batch_size`` splits evenly over all devices."""
    devices = jax.device_count()
    if batch_size % devices:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of the number of devices ({devices})"
        )


def process_rows(batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that this process loads.

    Processes hold equal numbers of devices here, so each loads the same number of
    consecutive rows: process ``i`` of ``n`` loads ``[i * b / n, (i + 1) * b / n)``.
    """
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of a global batch as global arrays sharded by ``sharding``."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value) for key, value in local.items()
    }


def is_primary() -> bool:
    """Whether this process writes the run's files: process 0 (or the only one)."""
    return jax.process_index() == 0
