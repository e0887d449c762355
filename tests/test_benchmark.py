"""experiments/bench: the suite's layers, the timing harness and the verdicts, without
timing anything (a fake clock where the harness reads one)."""

import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from bench import cases, machine, report, suite, timing  # noqa: E402

SUITE_IDS = [layer.name for layer in suite.SUITE]


@pytest.mark.parametrize("layer", suite.SUITE, ids=SUITE_IDS)
def test_suite_layer_is_valid_for_torch_with_the_output_shape_it_states(layer):
    torch_layer = layer.torch_module(device="meta")
    x = torch.empty(layer.input[0], layer.input[-1], *layer.input[1:-1], device="meta")
    assert tuple(torch_layer(x).shape[2:]) == layer.output_spatial()


@pytest.mark.parametrize("layer", suite.SUITE, ids=SUITE_IDS)
def test_suite_layer_is_sized_for_two_cpu_cores(layer):
    output_bytes = 4 * layer.input[0] * math.prod(layer.output_spatial()) * layer.out_channels
    assert layer.macs() <= 0.65e9 and output_bytes <= 40e6


def test_quick_suite_names_suite_layers():
    assert set(suite.QUICK_SUITE) <= set(SUITE_IDS)


def test_cases_select_the_layers_whose_names_contain_a_part_in_any_case_in_suite_order():
    chosen = suite.select(suite.SUITE, "mask r-cnn, MelGAN")
    assert [layer.name for layer in chosen] == [
        "Mask R-CNN mask head",
        "MelGAN up 1 (x8)",
        "MelGAN up 3 (x2)",
    ]


def test_a_case_part_that_names_no_layer_is_refused_with_the_layer_names():
    with pytest.raises(ValueError, match="'melgam' is in no suite layer's name.*MelGAN up 1"):
        suite.select(suite.SUITE, "MelGAN,melgam")


class FakeClock:
    """A clock that moves only when a fake call spends time, and ``timed`` on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def timed(self, fn) -> float:
        start = self.now
        fn()
        return self.now - start

    def spend(self, seconds: float):
        def call():
            self.now += seconds
            return seconds

        return call


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "timed", fake.timed)
    return fake


def test_a_round_repeats_the_call_in_blocks_until_it_lasts_min_round_s(clock):
    contender = timing.repeated(clock.spend(0.003), timing.no_sync, min_round_s=0.1)
    assert contender.blocks == timing.BLOCKS
    assert contender.calls_per_round >= math.ceil(0.1 / 0.003)
    assert clock.timed(contender.block) * contender.blocks >= 0.1


def test_a_call_longer_than_a_round_runs_once_per_round(clock):
    contender = timing.repeated(clock.spend(0.5), timing.no_sync, min_round_s=0.1)
    assert (contender.calls, contender.blocks) == (1, 1)


def test_a_slow_first_call_does_not_make_a_round_one_call(clock):
    """A first call slowed once (fresh pages, a busy machine) is not the call's time: run
    L's jax#31662 kernel gradient, 1 call a round from a slow warm-up, read 12.4 ms
    against 6.4-6.8 at 9-20 calls."""
    seconds = iter([0.5] + [0.003] * 1000)

    def call():
        clock.now += next(seconds)

    contender = timing.repeated(call, timing.no_sync, min_round_s=0.1)
    assert contender.calls_per_round >= math.ceil(0.1 / 0.003)


def test_a_round_has_fewer_blocks_where_fewer_calls_fill_it(clock):
    contender = timing.repeated(clock.spend(0.04), timing.no_sync, min_round_s=0.1)
    assert (contender.calls, contender.blocks) == (1, 3)


def test_paired_rounds_call_every_contender_once_a_round_after_varying_neighbours():
    """In a plain rotation each contender always follows the same one (an A/A pair's
    first name followed its twin: warm caches, A/A ratios 0.89-0.96)."""
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abcd"}
    times = timing.paired_rounds(fns, rounds=15)
    rounds = [order[4 + 4 * r : 8 + 4 * r] for r in range(15)]  # after a warm-up call each
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert {r[0] for r in rounds} == set("abcd")
    for name in "abcd":
        after = {r[r.index(name) - 1] for r in rounds if r.index(name) > 0}
        assert len(after) == 3, (name, after)  # every other contender, at some round
    assert {name: len(ts) for name, ts in times.items()} == dict.fromkeys("abcd", 15)


def test_a_round_interleaves_the_contenders_blocks():
    """The speed of these VMs drifts over seconds: an A/A pair compared block by block,
    milliseconds apart, is steadier than in one run each a round."""
    order = []

    def contender(name: str, blocks: int) -> timing.Contender:
        return timing.Contender(lambda: order.append(name), calls=1, blocks=blocks)

    contenders = {"a": contender("a", 4), "b": contender("b", 4), "c": contender("c", 2)}
    times = timing.paired_rounds(contenders, rounds=2)
    timed_order = order[3:]  # after a warm-up block each
    cycles = [
        sorted(timed_order[i : i + n]) for i, n in zip((0, 3, 5, 8, 10, 13, 15, 18), (3, 2) * 4)
    ]
    assert cycles == [list("abc"), list("ab")] * 4  # c in every other cycle
    assert {name: len(ts) for name, ts in times.items()} == dict.fromkeys("abc", 2)


def test_a_contenders_round_time_is_its_fastest_blocks_time_per_call(clock):
    """What slows a block down only adds time: the fastest block of a round halved the
    A/A's spread of the sum of its blocks on the suite (2026-12-04)."""
    slow_every_third = iter([0.01, 0.01, 0.04] * 100)

    def two_calls():
        clock.now += next(slow_every_third) + next(slow_every_third)

    contenders = {
        "a": timing.Contender(two_calls, calls=2, blocks=3),
        "b": timing.Contender(clock.spend(0.03), calls=1, blocks=1),
    }
    times = timing.time_contenders(contenders, rounds=3)
    assert times["a"] == pytest.approx([0.01] * 3)
    assert times["b"] == pytest.approx([0.03] * 3)


def test_a_block_after_a_spinning_contender_starts_after_a_settling_pause(monkeypatch):
    """Torch's OpenMP threads spin for milliseconds after its work: a jaxconv round
    right after a torch round ran 6-10 % slower (2026-12-03)."""
    events = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append(("sleep", s)))

    def contender(name: str, spins: bool) -> timing.Contender:
        return timing.Contender(lambda: events.append(name), calls=1, blocks=3, spins=spins)

    timing.paired_rounds({"jax": contender("jax", False), "torch": contender("torch", True)}, 4)
    blocks, previous, pause = [], None, None  # (the block before, the pause before)
    for event in events[2:]:  # after one warm-up block each
        if isinstance(event, tuple):
            pause = event
        else:
            blocks.append((previous, pause))
            previous, pause = event, None
    assert len(blocks) == 2 * 3 * 4
    assert {before for before, _ in blocks} == {None, "jax", "torch"}
    for before, pause in blocks:
        assert pause == (("sleep", timing.SETTLE_S) if before == "torch" else None)


def test_the_aa_pair_is_one_contender_timed_under_two_names_in_the_same_rounds(clock):
    contenders = {
        "auto": timing.repeated(clock.spend(0.01), timing.no_sync, 0.05),
        "torch": timing.repeated(clock.spend(0.02), timing.no_sync, 0.05),
    }
    times = timing.time_contenders(contenders, rounds=4, aa="auto")
    assert set(times) == {"auto", "torch", "auto (A/A)"}
    assert times["auto (A/A)"] == pytest.approx(times["auto"]) == [0.01] * 4
    check = timing.aa_check(times, "auto")
    assert check["within"] and check["ratio"]["median"] == pytest.approx(1.0)


def _scripted_timings(monkeypatch, aa_ratios: list[float]) -> list[int]:
    """time_contenders returning, timing after timing, auto's times at these ratios to
    its A/A twin; the list it returns counts the timings."""
    calls = []

    def time_contenders(contenders, rounds, aa=None, seed=0):
        ratio = aa_ratios[len(calls)]
        calls.append(seed)
        return {"auto": [ratio] * rounds, "auto (A/A)": [1.0] * rounds}

    monkeypatch.setattr(timing, "time_contenders", time_contenders)
    return calls


def test_a_group_whose_aa_is_outside_the_limits_is_timed_again_and_its_last_timing_kept(
    monkeypatch,
):
    calls = _scripted_timings(monkeypatch, [1.08, 1.01, 1.0])
    times, check = timing.time_checked({}, rounds=3, aa="auto")
    assert calls == [0, 1] and times["auto"] == [1.01] * 3  # the second in another order
    assert check["within"] and check["timings"] == 2


def test_a_group_stays_outside_the_limits_after_its_last_timing(monkeypatch):
    calls = _scripted_timings(monkeypatch, [1.08] * timing.AA_TIMINGS + [1.0])
    _, check = timing.time_checked({}, rounds=3, aa="auto")
    assert len(calls) == timing.AA_TIMINGS
    assert not check["within"] and check["timings"] == timing.AA_TIMINGS


@pytest.mark.parametrize(
    "ratio, within", [(1.0, True), (1.029, True), (0.96, False), (1.05, False)]
)
def test_aa_check_accepts_only_ratios_within_the_limits(ratio, within):
    times = {"auto": [ratio] * 3, "auto (A/A)": [1.0] * 3}
    assert timing.aa_check(times, "auto")["within"] is within


def _case(name: str, auto: float, fast: float, reference: float, torch_ms: float) -> dict:
    """An op_case result with these forward and forward+backward medians (ms)."""
    times = {"auto": auto, "fast": fast, "reference": reference, "torch": torch_ms}
    figures = {
        "ms": {impl: {"median": ms} for impl, ms in times.items()},
        "torch_over": {impl: {"median": torch_ms / times[impl]} for impl in cases.IMPLS},
        "auto_over": {impl: {"median": auto / times[impl]} for impl in ("fast", "reference")},
        "aa": {"ratio": {"median": 1.0}},
    }
    return {
        "case": name,
        "not_timed": {},
        "forward": figures,
        "forward+backward": figures,
        "kernel_gradient": {
            "over_matmul": {"median": auto / fast},
            "aa": {"ratio": {"median": 1.0}},
        },
    }


def test_suite_summary_takes_geometric_means_and_the_worst_case():
    summary = report.suite_summary([_case("a", 1, 1, 4, 2), _case("b", 2, 2, 4, 1)])
    auto = summary["forward"]["torch_over"]["auto"]
    assert auto["geomean"] == pytest.approx(math.sqrt(2 * 0.5))
    assert (auto["worst"], auto["worst_case"], auto["cases"]) == (0.5, "b", 2)


def test_suite_summary_names_the_cases_that_miss_a_criterion():
    summary = report.suite_summary([_case("good", 1, 1, 3, 2), _case("bad", 4, 2, 3, 2)])
    assert summary["forward"]["auto_not_within_tolerance"] == ["bad"]
    assert summary["auto_forward_slower_than_reference"] == ["bad"]
    assert summary["kernel_gradient_over_matmul"]["over_limit"] == ["bad"]


def test_auto_is_checked_against_fasts_other_lowerings():
    case = _case("a", 1, 1, 3, 2)
    over = {**case["forward"]["auto_over"], "fast: phases": {"median": 1 / 0.9}}
    case["forward"] = {**case["forward"], "auto_over": over}
    summary = report.suite_summary([case])
    assert summary["forward"]["auto_not_within_tolerance"] == ["a"]
    assert summary["forward"]["auto_over_fastest"]["a"] == pytest.approx(1 / 0.9)
    assert summary["forward+backward"]["auto_not_within_tolerance"] == []


def test_auto_within_tolerance_is_judged_on_its_per_round_ratios_not_on_two_medians():
    """Medians of different rounds: auto 1.1x phases; the same rounds paired: 1.01x."""
    case = _case("a", 1.1, 1.1, 3, 2)
    case["forward"] = {**case["forward"], "ms": {**case["forward"]["ms"]}}
    case["forward"]["ms"]["fast: phases"] = {"median": 1.0}
    case["forward"]["auto_over"] = {
        "fast": {"median": 1.0},
        "reference": {"median": 0.4},
        "fast: phases": {"median": 1.01},
    }
    summary = report.suite_summary([case])
    assert summary["forward"]["auto_over_fastest"]["a"] == pytest.approx(1.01)
    assert summary["forward"]["auto_not_within_tolerance"] == []


def test_auto_slower_than_the_reference_is_judged_on_its_per_round_ratio():
    """Medians of different rounds: auto 1.1x the reference; the same rounds paired: 0.99x."""
    case = _case("a", 1.1, 1.1, 1.0, 2)
    case["forward"] = {**case["forward"], "auto_over": {"reference": {"median": 0.99}}}
    assert report.suite_summary([case])["auto_forward_slower_than_reference"] == []


def _run(aa_ratios: dict[str, float], torch_threads: int = 2, xla_threads: int = 2) -> dict:
    """A report with one suite case whose forward+backward A/A ratio is as given."""
    case = _case("c", 1, 1, 1, 1)
    case["forward+backward"] = {**case["forward"], "aa": {"ratio": {"median": aa_ratios["c"]}}}
    result = {
        "meta": {"threads": {"torch": torch_threads, "xla_intra_op": xla_threads}},
        "suite": [case],
        "train": [{"batch": 64, "aa": {"ratio": {"median": aa_ratios["train"]}}}],
    }
    result["aa"] = report.aa_summary(result)
    return result


def test_a_run_with_every_aa_ratio_within_limits_is_reliable(capsys):
    result = _run({"c": 1.01, "train": 0.99})
    assert result["aa"]["reliable"] and result["aa"]["groups"] == 4
    assert report.run_warnings(result) == []
    report.print_aa(result["aa"])
    assert "median ratio 1.000, range 0.990-1.010 over 4 timing groups" in capsys.readouterr().out


def test_a_run_with_an_aa_ratio_outside_the_limits_says_it_is_unreliable(capsys):
    result = _run({"c": 1.08, "train": 1.0})
    assert result["aa"]["outside"] == {"suite: c, forward+backward": 1.08}
    (warning,) = report.run_warnings(result)
    assert "cannot resolve 5 %" in warning and "1 of 4" in warning
    report.print_aa(result["aa"])
    assert "outside: suite: c, forward+backward: 1.080" in capsys.readouterr().out


def test_the_report_names_the_groups_timed_again(capsys):
    result = _run({"c": 1.01, "train": 1.0})
    result["train"][0]["aa"]["timings"] = 2
    result["aa"] = report.aa_summary(result)
    assert result["aa"]["retimed"] == {"train step, batch 64": 2} and result["aa"]["reliable"]
    report.print_aa(result["aa"])
    assert "train step, batch 64: 2 timings" in capsys.readouterr().out


def test_unequal_thread_counts_are_a_warning():
    (warning,) = report.run_warnings(_run({"c": 1.0, "train": 1.0}, xla_threads=16))
    assert "torch runs 2 threads, XLA's intra-op pool 16" in warning


def test_xla_intra_op_threads_counts_the_pool_of_this_process():
    with jax.default_device(jax.devices("cpu")[0]):  # the CPU client's pool
        (jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()
    assert machine.xla_intra_op_threads() == len(os.sched_getaffinity(0))


def test_the_settings_that_change_allocation_and_compilation_are_recorded(monkeypatch):
    """glibc's malloc tunables, a preloaded allocator and XLA_FLAGS change the figures
    (buffers over 32 MB are fresh pages on every call under glibc's defaults)."""
    settings = {"MALLOC_MMAP_MAX_": "0", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    monkeypatch.setattr(os, "environ", {**settings, "PATH": "/usr/bin", "HOME": "/root"})
    assert machine.environment() == settings


def test_pin_cpus_refuses_once_jax_has_started():
    with pytest.raises(RuntimeError, match="before jax is imported"):
        machine.pin_cpus(1)


def test_machine_state_warns_of_each_sign_of_a_busy_machine():
    cores = os.cpu_count()
    busy = machine.machine_state(
        (cores, 0, 0), (3 * cores, 0, 0), (0.0, 0.0), (cores * 10.0, cores), 10.0, [10, 10], 330
    )
    assert len(busy["warnings"]) == 5 and busy["others_cpu_share"] == pytest.approx(0.9)


def test_machine_state_has_no_warning_for_a_quiet_machine():
    quiet = machine.machine_state(
        (0, 0, 0), (1, 0, 0), (0.0, 0.0), (5.0, 5.0), 10.0, [400, 400], 330
    )
    assert quiet["warnings"] == [] and quiet["others_cpu_share"] == 0


def test_a_lowering_is_timed_only_where_it_compiles_to_another_program_than_autos():
    """A 1x1 input is one matmul whatever the bounds: every forced lowering is auto's
    program but XLA's conv for the input gradient (im2col of one window otherwise). A
    4x4 input goes by overlap-add: forced to phases, it is another program."""
    one_pixel = suite.Layer("one pixel", (1, 1, 1, 4), 3, 2, 1)
    four = suite.Layer("four", (1, 4, 4, 4), 3, 3, 2)
    runs = {
        layer.name: cases.op_case(layer, rounds=1, min_round_s=1e-4, lowerings=True)
        for layer in (one_pixel, four)
    }
    every = {f"{name} {mode}" for name in cases.LOWERINGS for mode in cases.MODES}
    assert set(runs["one pixel"]["same_as_auto"]) == every - {"fast: XLA convs forward+backward"}
    assert "fast: phases forward" not in runs["four"]["same_as_auto"]
    assert "fast: phases" in runs["four"]["forward"]["ms"]


def test_a_case_records_autos_per_round_ratio_to_each_other_implementation_timed():
    layer = suite.Layer("four", (1, 4, 4, 4), 3, 3, 2)
    run = cases.op_case(layer, rounds=2, min_round_s=1e-4, lowerings=True)
    for mode in cases.MODES:
        timed = {"fast", "reference", *cases.LOWERINGS} & set(run[mode]["ms"])
        assert set(run[mode]["auto_over"]) == timed
        assert all(ratio["rounds"] == 2 for ratio in run[mode]["auto_over"].values())
