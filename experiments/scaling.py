"""Data-parallel scaling of the lecture autoencoder's train step over processes and devices.

    python experiments/scaling.py [--batch-size 256] [--steps 30] [--out runs/scaling.json]

For each split of the work (processes x devices per process: 1x1, 1x2, 2x1, 1x4, 2x2, 4x1),
starts that many local processes joined by ``jax.distributed`` over loopback (CPU devices,
gloo collectives) and measures, at the same global batch:

* the train step (``jaxconv.train.train_step``: forward, MSE, backward, the gradient
  all-reduce, Adam): median seconds per step over ``--steps`` steps, and images/s;
* the all-reduce alone: a sum over the devices of one gradient-sized float32 buffer, as
  the step does it (median seconds), and its share of the step.

On this 2-core machine every extra process or device shares the same two cores, so the
figures show the overhead of the distributed path, not a speed-up. From the measured
gradient size, the script also prints an estimate of the efficiency of 8 GPU hosts (one GPU
each) over a stated network: a ring all-reduce moves ``2 (n - 1) / n`` times the gradient
per host, at ``bandwidth``, plus ``2 (n - 1)`` latencies, against a stated per-step compute
time on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPLITS = ((1, 1), (1, 2), (2, 1), (1, 4), (2, 2), (4, 1))
NETWORK_GBIT_S = 100.0  # per host, e.g. 100 Gb/s Ethernet or one InfiniBand EDR link
LATENCY_S = 10e-6  # per message of the ring
GPU_STEP_S = 2e-3  # assumed compute time of one step at batch 256 on one GPU (not measured)


def worker(batch_size: int, steps: int) -> None:
    """One process of a split: joins the others, times the step and the all-reduce."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxconv import distributed, input_pipeline
    from jaxconv.train import TrainConfig, create_train_state, train_step

    distributed.initialize(distributed.cluster())
    batch_sharding, replicated = distributed.shardings()
    config = TrainConfig(batch_size=batch_size)
    state = jax.device_put(create_train_state(config), replicated)
    images = input_pipeline.load_dataset().train_images[:batch_size]
    local = {"image": images[distributed.process_rows(batch_size)]}
    batch = distributed.global_batch(local, batch_sharding)

    def timed(fn, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    step = train_step.lower(state, batch).compile()
    state, _ = step(state, batch)  # warm-up

    def one_step():
        nonlocal state
        state, loss = step(state, batch)
        return loss

    step_s = timed(one_step, steps)

    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    devices = jax.device_count()
    rows = np.ones((jax.local_device_count(), num_params), np.float32)
    stacked = jax.make_array_from_process_local_data(batch_sharding, rows)
    all_reduce = jax.jit(lambda x: jnp.sum(x, axis=0), out_shardings=replicated)
    all_reduce(stacked).block_until_ready()
    reduce_s = timed(lambda: all_reduce(stacked), steps)
    if distributed.is_primary():
        print(
            "RESULT "
            + json.dumps(
                {
                    "processes": jax.process_count(),
                    "devices": devices,
                    "step_s": step_s,
                    "images_per_s": batch_size / step_s,
                    "all_reduce_s": reduce_s,
                    "communication_share": reduce_s / step_s,
                    "gradient_bytes": 4 * num_params,
                }
            ),
            flush=True,
        )


def run_split(processes: int, devices: int, batch_size: int, steps: int) -> dict:
    from jaxconv.launch import free_port

    address = f"127.0.0.1:{free_port()}"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--batch-size",
                str(batch_size),
                "--steps",
                str(steps),
            ],
            env={
                **os.environ,
                "JAX_PLATFORMS": "cpu",
                "JAX_NUM_CPU_DEVICES": str(devices),
                **(
                    {
                        "JAX_COORDINATOR_ADDRESS": address,
                        "JAX_NUM_PROCESSES": str(processes),
                        "JAX_PROCESS_ID": str(index),
                    }
                    if processes > 1
                    else {}
                ),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]
    outputs = [child.communicate(timeout=600) for child in children]
    for child, (_, err) in zip(children, outputs):
        if child.returncode:
            raise RuntimeError(f"{processes}x{devices} failed:\n{err[-2000:]}")
    line = next(line for line in outputs[0][0].splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def ring_estimate(gradient_bytes: int, hosts: int = 8) -> dict:
    """Efficiency of ``hosts`` data-parallel GPUs: compute / (compute + ring all-reduce)."""
    transfer_s = 2 * (hosts - 1) / hosts * gradient_bytes / (NETWORK_GBIT_S * 1e9 / 8)
    reduce_s = transfer_s + 2 * (hosts - 1) * LATENCY_S
    return {
        "hosts": hosts,
        "network_gbit_s": NETWORK_GBIT_S,
        "latency_s": LATENCY_S,
        "assumed_gpu_step_s": GPU_STEP_S,
        "all_reduce_s": reduce_s,
        "efficiency": GPU_STEP_S / (GPU_STEP_S + reduce_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256, help="global (default: 256)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default: 30)")
    parser.add_argument("--out", type=Path, default=Path("runs/scaling.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.batch_size, args.steps)
        return

    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} (2 cores: figures are unreliable above ~1)")
    rows = []
    print(f"{'split':>6}  {'img/s':>7}  {'step ms':>8}  {'all-reduce ms':>13}  {'share':>6}")
    for processes, devices in SPLITS:
        row = run_split(processes, devices, args.batch_size, args.steps)
        row["split"] = f"{processes}x{devices}"
        rows.append(row)
        print(
            f"{row['split']:>6}  {row['images_per_s']:>7.0f}  {1e3 * row['step_s']:>8.2f}  "
            f"{1e3 * row['all_reduce_s']:>13.3f}  {row['communication_share']:>6.1%}"
        )
    estimate = ring_estimate(rows[0]["gradient_bytes"])
    print(
        f"\ngradient: {rows[0]['gradient_bytes'] / 1e6:.2f} MB per step. Estimate for 8 GPU "
        f"hosts at {NETWORK_GBIT_S:g} Gb/s, {LATENCY_S * 1e6:g} us per ring message and an "
        f"assumed {GPU_STEP_S * 1e3:g} ms GPU step: all-reduce "
        f"{estimate['all_reduce_s'] * 1e3:.3f} ms, efficiency {estimate['efficiency']:.0%}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "batch_size": args.batch_size,
                "steps": args.steps,
                "load_before": load,
                "load_after": os.getloadavg()[0],
                "splits": rows,
                "estimate_8_gpu_hosts": estimate,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
