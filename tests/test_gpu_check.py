"""experiments/gpu_check.py --quick on the CPU: every part runs within its budget, parity passes.

One run, one test: under pytest-xdist a shared fixture would run once per worker.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANG_S = 600  # a guard against a hang, not a speed claim: the parts keep their own budgets
PARTS = {"parity", "suite", "train_step", "cli"}


def test_quick_check_runs_every_part_and_passes_parity_on_the_cpu(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "experiments/gpu_check.py", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_S
    )
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert set(parts) == PARTS
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(PARTS, "done")
    parity = parts["parity"]
    assert parity["passed"] and parity["checked"] == parity["wanted"], parity["failures"]
    assert {name.rsplit(" ", 1)[0] for name in parity["worst"]} == {
        f"{dtype} {impl}" for dtype in ("float32", "bfloat16") for impl in ("reference", "fast")
    }
    assert {case["case"] for case in parts["suite"]["cases"]} >= {"jax#31662 3-D k3 s2 bfloat16"}
    assert all(
        case["images_per_s"]["jaxconv"]["median"] > 0 for case in parts["train_step"]["cases"]
    )
    train = parts["cli"]["train"]
    assert train["status"] == "ok" and math.isfinite(train["last_metrics"]["test_mse"]), train
    assert "parity: done" in (tmp_path / "gpu_check.log").read_text()
