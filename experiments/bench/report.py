"""The benchmark's verdicts and its printed report, from the cases' results.

:func:`suite_summary` (geometric means, worst cases, the criteria missed) and
:func:`aa_summary` (every A/A ratio of the run, and whether the run can resolve 5 %)
compute; the ``print_*`` functions format. Nothing here times or imports JAX.
"""

from __future__ import annotations

import statistics

from bench.cases import IMPLS, LOWERINGS, MODES
from bench.timing import AA_LIMITS, geomean

AUTO_TOLERANCE = 1.05  # auto's time over the fastest implementation's
KERNEL_GRAD_LIMIT = 1.3  # the kernel gradient's time over one matmul of its FLOPs


def suite_summary(cases: list[dict]) -> dict:
    """Geometric mean and worst of torch / jaxconv per implementation and mode, and the
    cases that miss the auto, forward and kernel-gradient criteria."""
    result: dict = {}
    for mode in MODES:
        torch_over = {}
        for impl in IMPLS:
            timed = [
                (case["case"], case[mode]["torch_over"][impl]["median"])
                for case in cases
                if impl in case[mode]["torch_over"]
            ]
            if timed:
                worst_case, worst = min(timed, key=lambda t: t[1])
                torch_over[impl] = {
                    "geomean": geomean([v for _, v in timed]),
                    "worst": worst,
                    "worst_case": worst_case,
                    "cases": len(timed),
                }
        auto_over_fastest = {case["case"]: _auto_over_fastest(case[mode]) for case in cases}
        result[mode] = {
            "torch_over": torch_over,
            "auto_over_fastest": auto_over_fastest,
            "auto_not_within_tolerance": [
                name for name, v in auto_over_fastest.items() if v > AUTO_TOLERANCE
            ],
        }
    result["auto_forward_slower_than_reference"] = [
        case["case"]
        for case in cases
        if "reference" in (over := case["forward"]["auto_over"]) and over["reference"]["median"] > 1
    ]
    result["reference_not_timed"] = [case["case"] for case in cases if case["not_timed"]]
    gradients = [
        (case["case"], case["kernel_gradient"]["over_matmul"]["median"])
        for case in cases
        if "kernel_gradient" in case
    ]
    if gradients:
        worst_case, worst = max(gradients, key=lambda t: t[1])
        result["kernel_gradient_over_matmul"] = {
            "geomean": geomean([v for _, v in gradients]),
            "worst": worst,
            "worst_case": worst_case,
            "over_limit": [name for name, v in gradients if v > KERNEL_GRAD_LIMIT],
        }
    return result


def _auto_over_fastest(figures: dict) -> float:
    """``auto``'s time over the fastest of the reference and ``fast``'s lowerings: the
    largest median of ``auto``'s per-round ratios to each (paired rounds, as the A/A
    ratio; a ratio of two medians, from rounds that need not be the same, moved with
    the run's noise)."""
    return max(ratio["median"] for ratio in figures["auto_over"].values())


def aa_checks(report: dict) -> dict[str, dict]:
    """The A/A check of every timing group in the report, by a label naming it."""
    checks = {}
    for part in ("ops", "suite"):
        for case in report.get(part, []):
            for mode in MODES:
                checks[f"{part}: {case['case']}, {mode}"] = case[mode]["aa"]
            if "kernel_gradient" in case:
                checks[f"{part}: {case['case']}, kernel gradient"] = case["kernel_gradient"]["aa"]
    for case in report.get("train", []):
        checks[f"train step, batch {case['batch']}"] = case["aa"]
    return checks


def aa_summary(report: dict) -> dict:
    """The run's A/A ratios: median, min, max, those outside ``AA_LIMITS``, the groups
    timed more than once (``retimed``: how many timings), and ``reliable`` (none
    outside: the run can resolve a 5 % difference)."""
    checks = aa_checks(report)
    pairs = {label: check["ratio"]["median"] for label, check in checks.items()}
    low, high = AA_LIMITS
    outside = {label: v for label, v in pairs.items() if not low <= v <= high}
    values = sorted(pairs.values())
    return {
        "limits": list(AA_LIMITS),
        "groups": len(values),
        "median": statistics.median(values) if values else None,
        "min": values[0] if values else None,
        "max": values[-1] if values else None,
        "outside": outside,
        "retimed": {
            label: check["timings"]
            for label, check in checks.items()
            if check.get("timings", 1) > 1
        },
        "reliable": bool(values) and not outside,
    }


def run_warnings(result: dict) -> list[str]:
    """Warnings from the run's own figures: torch's and XLA's thread counts not equal,
    an A/A ratio outside ``AA_LIMITS`` (reads ``result["aa"]``, :func:`aa_summary`)."""
    warnings = []
    threads = result["meta"]["threads"]
    if threads["torch"] != threads["xla_intra_op"]:
        warnings.append(
            f"torch runs {threads['torch']} threads, XLA's intra-op pool "
            f"{threads['xla_intra_op']}: not equal"
        )
    aa = result["aa"]
    if not aa["reliable"]:
        low, high = aa["limits"]
        warnings.append(
            f"A/A ratio outside {low}-{high} in {len(aa['outside'])} of {aa['groups']} "
            "timing groups: this run cannot resolve 5 %"
        )
    return warnings


def _fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def print_op_table(title: str, cases: list[dict]) -> None:
    """ms per contender, torch / auto and auto's A/A ratio, for each case and mode; then
    ``fast``'s other lowerings where they were timed."""
    names = ["auto", "fast", "reference", "torch", "torch.compile"]
    names = [n for n in names if any(n in c[mode]["ms"] for c in cases for mode in MODES)]
    print(
        f"\n{title}, ms: median [min-max]; torch/auto = torch time / jaxconv auto time; "
        "A/A = auto / auto timed again"
    )
    widths = {name: 22 for name in names}
    header = " ".join(f"{name:>{widths[name]}s}" for name in names)
    print(f"{'case':30s} {'mode':16s} {header} {'torch/auto':>18s} {'A/A':>18s}")
    for case in cases:
        for mode in MODES:
            m = case[mode]["ms"]
            cells = " ".join(
                f"{_fmt(m[name]) if name in m else 'not timed':>{widths[name]}s}" for name in names
            )
            ratio = _fmt(case[mode]["torch_over"]["auto"])
            aa = _fmt(case[mode]["aa"]["ratio"], 3)
            print(f"{case['case'][:30]:30s} {mode:16s} {cells} {ratio:>18s} {aa:>18s}")
        if case.get("timed_as"):
            same = ", ".join(f"{impl} is {name}" for impl, name in case["timed_as"].items())
            print(f"{'':30s} (one compiled program, timed once: {same})")
        for mode in MODES:
            lowerings = [f"{name} {_fmt(case[mode]['ms'][name])}" for name in LOWERINGS
                         if name in case[mode]["ms"]]  # fmt: skip
            if lowerings:
                print(f"{'':30s} {mode:16s} {'; '.join(lowerings)}")
        if case.get("same_as_auto"):
            print(f"{'':30s} (auto's program: {', '.join(case['same_as_auto'])})")


def print_suite(cases: list[dict], result: dict) -> None:
    """The suite's layers with their sources, its table and its verdicts."""
    print("\nSuite: transposed convs of published models (GMAC: useful forward MACs)")
    for case in cases:
        print(f"  {case['case'][:30]:30s} {case['gmac']:6.3f}  {case['source']}")
    print_op_table("Suite", cases)
    if any("kernel_gradient" in case for case in cases):
        print(
            "\nKernel gradient alone (jaxconv auto) against one XLA matmul of its FLOPs, ms; "
            f"ratio over {KERNEL_GRAD_LIMIT} marked"
        )
        for case in cases:
            kg = case["kernel_gradient"]
            mark = "" if kg["over_matmul"]["median"] <= KERNEL_GRAD_LIMIT else "  <-- over"
            print(
                f"  {case['case'][:30]:30s} gradient {_fmt(kg['ms']['auto']):>22s}  matmul "
                f"{tuple(kg['matmul_shape'])!s:>24s} {_fmt(kg['ms']['matmul']):>22s}  "
                f"ratio {_fmt(kg['over_matmul'])}  A/A {_fmt(kg['aa']['ratio'], 3)}{mark}"
            )
    for mode in MODES:
        for impl, s in result[mode]["torch_over"].items():
            print(
                f"{mode:16s} torch/{impl:9s} geometric mean {s['geomean']:.2f}, worst "
                f"{s['worst']:.2f} ({s['worst_case']}), {s['cases']} cases"
            )
        missed = [
            f"{name} ({result[mode]['auto_over_fastest'][name]:.2f})"
            for name in result[mode]["auto_not_within_tolerance"]
        ]
        print(
            f"{mode:16s} auto within {AUTO_TOLERANCE - 1:.0%} of the fastest implementation "
            "(fast's lowerings, the reference; medians of per-round ratios): "
            + ("every case" if not missed else "not in " + ", ".join(missed))
        )
    slower = result["auto_forward_slower_than_reference"]
    print(
        "auto's forward slower than the reference's: "
        + (", ".join(slower) if slower else "in no case")
    )
    if result["reference_not_timed"]:
        print("reference not timed: " + ", ".join(result["reference_not_timed"]))
    if "kernel_gradient_over_matmul" in result:
        kg = result["kernel_gradient_over_matmul"]
        print(
            f"kernel gradient / matmul: geometric mean {kg['geomean']:.2f}, worst "
            f"{kg['worst']:.2f} ({kg['worst_case']}); over {KERNEL_GRAD_LIMIT}: "
            + (", ".join(kg["over_limit"]) if kg["over_limit"] else "none")
        )


def print_train(report: dict) -> None:
    """images/s, GFLOP/s and their share of the matmul peak, per batch."""
    flops = report["model"]["train_flops"]
    peak = report["peak"]
    print(
        f"\nTrain step (forward + MSE + backward + Adam), images/s: median [min-max]; "
        f"{flops / 1e6:.2f} MFLOP per trained image; ratio = jaxconv / torch eager"
    )
    for case in report["train"]:
        ips = case["images_per_s"]
        line = f"batch {case['batch']:5d}: " + "  ".join(
            f"{name} {_fmt(s, 0)}" for name, s in ips.items()
        )
        line += f"  ratio {_fmt(case['jaxconv_over_torch_eager'])}"
        if "jaxconv_over_torch_compile" in case:
            line += f" (vs torch.compile {_fmt(case['jaxconv_over_torch_compile'])})"
        print(line + f"  A/A {_fmt(case['aa']['ratio'], 3)}")
        gf = "  ".join(
            f"{name} {s['median'] * flops / 1e9:.1f} GFLOP/s "
            f"({100 * s['median'] * flops / 1e9 / peak['peak_gflops']:.0f}% of peak)"
            for name, s in ips.items()
        )
        compile_s = ", ".join(f"{k} {v:.2f} s" for k, v in case["compile_s"].items())
        print(f"             {gf}; compile: {compile_s}")
        if "torch.compile error" in case:
            print(f"             torch.compile: {case['torch.compile error']}")


def print_aa(aa: dict) -> None:
    """The run's A/A verdict."""
    low, high = aa["limits"]
    if not aa["groups"]:
        return
    print(
        f"\nA/A check (one compiled program timed under two names in the same rounds): "
        f"median ratio {aa['median']:.3f}, range {aa['min']:.3f}-{aa['max']:.3f} over "
        f"{aa['groups']} timing groups; limits {low}-{high}"
    )
    for label, ratio in aa["outside"].items():
        print(f"  outside: {label}: {ratio:.3f}")
    if aa.get("retimed"):
        print(
            f"timed again, as their first A/A was outside the limits: {len(aa['retimed'])} groups"
        )
        for label, timings in aa["retimed"].items():
            print(f"  {label}: {timings} timings")
    if aa["reliable"]:
        print("A/A within limits in every group: this run can resolve a 5 % difference")


def print_profile(title: str, profile: dict) -> None:
    """The top XLA ops of one profile."""
    print(f"\nProfile, jaxconv {title}: {profile['traced_ms']:.1f} ms of traced XLA ops per call")
    for op in profile["top"]:
        print(
            f"  {op['ms']:8.2f} ms {100 * op['share']:4.0f}%  {op['shape']:28s} {op['from'][:90]}"
        )


def print_report(report: dict) -> None:
    """The whole report: the run's conditions, each part, the A/A verdict, warnings."""
    meta, machine = report["meta"], report["meta"]["machine"]
    others = machine["others_cpu_share"]
    threads = meta["threads"]
    print(
        f"\njax {meta['jax']}, torch {meta['torch']}, {meta['cpu_count']} cores, "
        f"load average {machine['load_average_start']} -> {machine['load_average_end']}, "
        + (f"other processes {others:.0%} of the CPU time, " if others is not None else "")
        + f"{meta['seconds']:.0f} s"
    )
    print(
        f"threads: torch {threads['torch']}, XLA intra-op pool {threads['xla_intra_op']} "
        f"(its threads counted by name); the process pinned to CPUs {threads['cpus']}"
    )
    settings = meta.get("environment", {})
    print(
        "environment: "
        + (", ".join(f"{k}={v}" for k, v in settings.items()) or "no XLA_FLAGS, allocator defaults")
    )
    for when in ("peak", "peak_end"):
        peak = report[when]
        print(
            f"matmul {'peak' if when == 'peak' else 'at the end'} ({peak['n']}^3 float32): "
            + ", ".join(f"{k} {v:.0f}" for k, v in peak["gflops_best_round"].items())
            + f" GFLOP/s (expected {machine['expected_peak_gflops']:.0f})"
        )
    if "ops" in report:
        print_op_table("Op level", report["ops"])
    if "suite" in report:
        print_suite(report["suite"], report["suite_summary"])
    if "train" in report:
        print_train(report)
    for title, key in (("op level, forward+backward", "ops"), ("train step", "train")):
        for case in report.get(key, []):
            if "profile" in case:
                label = case.get("case") or f"batch {case['batch']}"
                print_profile(f"{title}, {label}", case["profile"])
    print_aa(report["aa"])
    for warning in machine["warnings"]:
        print(f"WARNING: {warning}; this run's figures are unreliable")
    if meta["quick"]:
        print("--quick: a smoke run, not a measurement")
