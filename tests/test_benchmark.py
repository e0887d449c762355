"""experiments/benchmark.py's shape suite and its verdicts, without timing anything."""

import math
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import benchmark  # noqa: E402

SUITE_IDS = [layer.name for layer in benchmark.SUITE]


def test_suite_has_twenty_published_layers_of_every_kind_with_sources():
    assert len(SUITE_IDS) >= 20 and len(set(SUITE_IDS)) == len(SUITE_IDS)
    assert all(len(layer.source) > 30 for layer in benchmark.SUITE)
    assert {layer.ndim for layer in benchmark.SUITE} == {1, 2, 3}
    assert any(layer.groups == layer.input[-1] for layer in benchmark.SUITE)  # depthwise


@pytest.mark.parametrize("layer", benchmark.SUITE, ids=SUITE_IDS)
def test_suite_layer_is_valid_for_torch_with_the_output_shape_it_states(layer):
    torch_layer = layer.torch_module(device="meta")
    x = torch.empty(layer.input[0], layer.input[-1], *layer.input[1:-1], device="meta")
    assert tuple(torch_layer(x).shape[2:]) == layer.output_spatial()


@pytest.mark.parametrize("layer", benchmark.SUITE, ids=SUITE_IDS)
def test_suite_layer_is_sized_for_two_cpu_cores(layer):
    output_bytes = 4 * layer.input[0] * math.prod(layer.output_spatial()) * layer.out_channels
    assert layer.macs() <= 0.65e9 and output_bytes <= 40e6


def _case(name: str, auto: float, fast: float, reference: float, torch_ms: float) -> dict:
    """An op_case result with these forward and forward+backward medians (ms)."""
    times = {"auto": auto, "fast": fast, "reference": reference, "torch": torch_ms}
    figures = {
        "ms": {impl: {"median": ms} for impl, ms in times.items()},
        "torch_over": {impl: {"median": torch_ms / times[impl]} for impl in benchmark.IMPLS},
    }
    return {
        "case": name,
        "not_timed": {},
        "forward": figures,
        "forward+backward": figures,
        "kernel_gradient": {"over_matmul": {"median": auto / fast}},
    }


def test_suite_summary_takes_geometric_means_and_the_worst_case():
    summary = benchmark.suite_summary([_case("a", 1, 1, 4, 2), _case("b", 2, 2, 4, 1)])
    auto = summary["forward"]["torch_over"]["auto"]
    assert auto["geomean"] == pytest.approx(math.sqrt(2 * 0.5))
    assert (auto["worst"], auto["worst_case"], auto["cases"]) == (0.5, "b", 2)


def test_suite_summary_names_the_cases_that_miss_a_criterion():
    summary = benchmark.suite_summary([_case("good", 1, 1, 3, 2), _case("bad", 4, 2, 3, 2)])
    assert summary["forward"]["auto_not_within_tolerance"] == ["bad"]
    assert summary["auto_forward_slower_than_reference"] == ["bad"]
    assert summary["kernel_gradient_over_matmul"]["over_limit"] == ["bad"]


def test_machine_state_warns_of_each_sign_of_a_busy_machine():
    cores = os.cpu_count()
    busy = benchmark.machine_state(
        (cores, 0, 0), (3 * cores, 0, 0), (0.0, 0.0), (cores * 10.0, cores), 10.0, [10, 10], 330
    )
    assert len(busy["warnings"]) == 5 and busy["others_cpu_share"] == pytest.approx(0.9)


def test_machine_state_has_no_warning_for_a_quiet_machine():
    quiet = benchmark.machine_state(
        (0, 0, 0), (1, 0, 0), (0.0, 0.0), (5.0, 5.0), 10.0, [400, 400], 330
    )
    assert quiet["warnings"] == [] and quiet["others_cpu_share"] == 0
