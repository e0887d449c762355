"""experiments/bench_ports.py: a --quick run's table (times not checked: a smoke run)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import bench_ports  # noqa: E402

COLUMNS = ["network", "input", "mode", "jaxconv ms", "torch ms", "torch/jaxconv", "A/A", "diff"]


def test_a_quick_run_prints_a_row_per_mode_with_its_times_and_a_small_parity(capsys):
    args = bench_ports.parse_args(["--quick", "--networks", "dcgan-discriminator"])
    bench_ports.run(args)  # JAX is running already: the CPUs are not pinned
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| dcgan-discriminator ")
    ]
    found = [dict(zip(COLUMNS, cells)) for cells in rows]
    assert [(row["input"], row["mode"]) for row in found] == [
        ("2x3x16x16", "forward"),
        ("2x3x16x16", "forward+backward"),
    ]
    for row in found:
        for who in ("jaxconv ms", "torch ms"):  # "median (min-max)"
            median, low, high = row[who].replace("(", "").replace(")", "").replace("-", " ").split()
            assert 0 < float(low) <= float(median) <= float(high)
        assert float(row["torch/jaxconv"]) > 0 and float(row["A/A"]) > 0
        assert float(row["diff"]) < 1e-5


def test_an_unknown_network_is_a_usage_error_naming_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_ports.parse_args(["--networks", "unet-2d-instance,resnet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--networks" in err and "dcgan-generator" in err
