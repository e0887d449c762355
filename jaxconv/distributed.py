"""Processes and devices: the one place that knows about several processes.

A run is one JAX process or several joined by ``jax.distributed`` (one per host):

* :class:`Cluster` / :func:`initialize`: which processes, from flags, from the
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` environment
  variables, or detected by JAX itself (``auto``: SLURM, TPU pods, Open MPI, Kubernetes).

Every device of every process holds a slice of each global batch (parameters are
replicated), so the results do not depend on how the devices are split into processes:

* :func:`shardings`: ``(batch split over all devices, replicated)`` on a 1-D mesh;
* :func:`process_rows`: which rows of a global batch this process loads;
* :func:`global_batch`: this process's rows as one global, sharded array per key;
* :func:`is_primary`: whether this process writes the run's files (process 0);
* :func:`any_process`: whether a flag is set in any process (a collective);
* :func:`primary_first`: an action of process 0 that the others wait for.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# A process that stops answering fails the others after this long (JAX's coordination
# service checks heartbeats); starting waits this long for every process to join.
HEARTBEAT_TIMEOUT_S = 30
INITIALIZATION_TIMEOUT_S = 120
# How long the other processes wait for process 0 in primary_first (a dataset download)
PRIMARY_FIRST_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes of a run: explicit (all three fields) or detected by JAX (``auto``)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    def __post_init__(self) -> None:
        if self.auto:
            return
        if not re.fullmatch(r"[^\s:]+:\d{1,5}", self.coordinator_address or "") or not (
            0 < int(self.coordinator_address.rsplit(":", 1)[1]) < 65536
        ):
            raise ValueError(
                f"coordinator_address must be HOST:PORT (port 1-65535), "
                f"got {self.coordinator_address!r}"
            )
        if not isinstance(self.num_processes, int) or self.num_processes < 1:
            raise ValueError(
                f"num_processes must be a positive integer, got {self.num_processes!r}"
            )
        if not isinstance(self.process_id, int) or not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id must be in [0, {self.num_processes - 1}] (num_processes "
                f"{self.num_processes}), got {self.process_id!r}"
            )


def cluster(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> Cluster | None:
    """The run's processes: from the arguments (all three or none), else from ``environ``'s
    ``JAX_*`` variables (all three or none), else ``auto``; ``None`` for one process.

    Raises ``ValueError`` naming what is missing or wrong.
    """
    given = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in given):
        if auto:
            raise ValueError("distributed='auto' and explicit coordinator arguments conflict")
        if any(v is None for v in given):
            raise ValueError(
                "coordinator_address, num_processes and process_id go together: all three or none"
            )
        return Cluster(*given)
    present = [name for name in ENVIRONMENT if environ.get(name)]
    if present:
        if len(present) < len(ENVIRONMENT):
            missing = sorted(set(ENVIRONMENT) - set(present))
            raise ValueError(f"{', '.join(present)} set without {', '.join(missing)}")
        address, count, index = (environ[name] for name in ENVIRONMENT)
        try:
            return Cluster(address, int(count), int(index))
        except ValueError as e:
            raise ValueError(f"from the environment ({', '.join(ENVIRONMENT)}): {e}") from e
    return Cluster(auto=True) if auto else None


_joined = False  # whether this process joined others with jax.distributed


def initialize(processes: Cluster | None) -> None:
    """Joins ``processes`` with ``jax.distributed`` (before any JAX computation); a no-op
    for ``None``, one process."""
    global _joined
    if processes is None:
        return
    timeouts = dict(
        initialization_timeout=INITIALIZATION_TIMEOUT_S,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
    )
    if processes.auto:
        jax.distributed.initialize(**timeouts)
    else:
        jax.distributed.initialize(
            processes.coordinator_address,
            processes.num_processes,
            processes.process_id,
            **timeouts,
        )
    _joined = True


def exit_now(status: int) -> None:
    """Ends a process that joined others at once, with ``status``; returns otherwise.

    A normal exit waits at ``jax.distributed``'s shutdown barrier for the other
    processes, which may be waiting for this one in a collective: both would hang until
    a timeout. Gone at once, the others fail at their next collective (gloo, NCCL) or
    within ``HEARTBEAT_TIMEOUT_S``.
    """
    if _joined:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def log_prefix() -> str:
    """``"[process i/n] "`` when there are several processes, else nothing."""
    if jax.process_count() == 1:
        return ""
    return f"[process {jax.process_index()}/{jax.process_count()}] "


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


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is True in any process: the same answer in all of them.

    With several processes this is a collective: every process must call it at the
    same point of the run.
    """
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.process_allgather(np.array([flag], np.int32)).any())


class PrimaryFailed(RuntimeError):
    """Process 0 failed at, or did not finish, what the others waited for."""


_waits = itertools.count()  # primary_first's calls, numbered alike in every process


def primary_first(action: Callable[[], None], timeout_s: float = PRIMARY_FIRST_TIMEOUT_S) -> bool:
    """Runs ``action()`` in process 0 while the others wait for it to end (at most
    ``timeout_s``); returns whether it ran in this process. With one process it just
    runs it, without starting JAX's backend. Every process calls it, in the same order.

    Raises what ``action`` raised in process 0, and ``PrimaryFailed`` naming it in the
    others (or when ``timeout_s`` passed).
    """
    if not jax.distributed.is_initialized():
        action()
        return True
    # the coordination service's key-value store (orbax waits on it the same way): no
    # device is involved, so the wait can be as long as a download
    from jax._src.distributed import global_state

    client = global_state.client
    key = f"jaxconv/primary_first/{next(_waits)}"
    if is_primary():
        outcome = "failed: process 0 stopped"
        try:
            action()
            outcome = "done"
        except Exception as e:
            outcome = f"failed: {type(e).__name__}: {e}"
            raise
        finally:
            client.key_value_set(key, outcome)
        return True
    try:
        outcome = client.blocking_key_value_get(key, int(timeout_s * 1000))
    except Exception as e:  # jax raises its runtime error on the deadline
        raise PrimaryFailed(f"process 0 did not finish within {timeout_s:g} s ({e})") from e
    if outcome != "done":
        raise PrimaryFailed(f"process 0 {outcome}")
    return False
