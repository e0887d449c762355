"""experiments/gpu_check.py --quick on the CPU: every part runs, each part's status and
each command's are asserted, parity passes, and every process compiled with the quick
run's XLA flags, added to each process's own.

One run, one test: under pytest-xdist a shared fixture would run once per worker.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxconv.cli import XLA_FLAGS_DEFAULT

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
    # the check and each command with XLA's cheapest compiles for its work (JAX_PLATFORMS=cpu)
    xla_flags = report["meta"]["xla_flags"]
    assert xla_flags.keys() == {"check", "train", "segment"}, xla_flags
    assert all("--xla_backend_optimization_level=" in flags for flags in xla_flags.values())
    parts = report["parts"]
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(PARTS, "done")
    parity = parts["parity"]
    assert parity["passed"] and parity["checked"] == parity["wanted"], parity["failures"]
    assert {name.rsplit(" ", 1)[0] for name in parity["worst"]} == {
        f"{dtype} {impl}" for dtype in ("float32", "bfloat16") for impl in ("reference", "fast")
    }
    suite = parts["suite"]
    assert {case["case"] for case in suite["cases"]} >= {"jax#31662 3-D k3 s2 bfloat16"}
    modes = ("forward", "forward+backward")
    assert all(case[m]["aa"]["ratio"]["median"] > 0 for case in suite["cases"] for m in modes)
    assert "summary" in suite
    assert all(
        case["images_per_s"]["jaxconv"]["median"] > 0 for case in parts["train_step"]["cases"]
    )
    cli = parts["cli"]
    for name in ("train", "segment"):
        run = cli[name]
        assert run["status"] == "ok" and run["epochs_done"] == 1, run
    assert math.isfinite(cli["train"]["last_metrics"]["test_mse"]), cli["train"]
    assert 0 <= cli["segment"]["last_metrics"]["test_miou"] <= 1, cli["segment"]
    log = (tmp_path / "gpu_check.log").read_text()
    assert all(f"{name}: done" in log for name in PARTS)


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "experiments/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_quick_cpu_flags_keep_each_command_s_default_where_xla_flags_is_unset(
    gpu_check, monkeypatch
):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    quick = gpu_check.QUICK_CPU_XLA_FLAGS
    assert gpu_check.quick_cpu_xla_flags() == {
        "check": quick["check"],
        "train": f"{XLA_FLAGS_DEFAULT} {quick['train']}",
        "segment": f"{XLA_FLAGS_DEFAULT} {quick['segment']}",
    }


def test_quick_cpu_flags_follow_the_environment_s_xla_flags(gpu_check, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    flags = gpu_check.quick_cpu_xla_flags()
    assert flags == {
        name: f"--xla_cpu_enable_fast_math=false {gpu_check.QUICK_CPU_XLA_FLAGS[name]}"
        for name in ("check", "train", "segment")
    }
