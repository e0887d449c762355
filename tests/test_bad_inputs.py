"""Bad command lines, data and run directories: one line on stderr, the right exit status,
no traceback, and nothing already saved lost or changed.

Exit status 2 is a usage error (a flag, a --workdir or a dataset name to fix), 1 a runtime
failure (data that cannot be had here, a damaged checkpoint, a file system error).
"""

import gc
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxconv import cli, input_pipeline

HUGE = str(10**12)


def _flag_cases(command: str, flag: str, values: dict[str, str]) -> list:
    return [
        pytest.param(command, [flag, value], 2, flag, id=f"{command} {flag} {kind}")
        for kind, value in values.items()
    ]


INT_VALUES = {"negative": "-1", "nan": "nan", "float": "2.5", "word": "many", "empty": ""}
POSITIVE = {**INT_VALUES, "zero": "0"}

FLAG_CASES = [
    *_flag_cases("train", "--epochs", {**POSITIVE, "huge": HUGE}),
    *_flag_cases("train", "--batch-size", {**POSITIVE, "huge": HUGE}),
    *_flag_cases(
        "train",
        "--learning-rate",
        {"negative": "-1", "zero": "0", "nan": "nan", "inf": "inf", "word": "fast", "empty": ""},
    ),
    *_flag_cases("train", "--seed", {**INT_VALUES, "huge": str(2**32)}),
    *_flag_cases("train", "--embedding-dim", {**POSITIVE, "huge": HUGE}),
    *_flag_cases("train", "--checkpoint-every", POSITIVE),
    *_flag_cases("train", "--keep", POSITIVE),
    *_flag_cases("interpolate", "--steps", {**POSITIVE, "one": "1", "huge": HUGE}),
    *_flag_cases("embed", "--k", {**POSITIVE, "huge": HUGE}),
    *_flag_cases("generate", "--per-row", {**POSITIVE, "huge": HUGE}),
    *_flag_cases("generate", "--seed", {**INT_VALUES, "huge": str(2**32)}),
    *[
        pytest.param(command, [flag], 2, flag, id=f"{command} {flag} missing value")
        for command, flag in [
            ("train", "--epochs"),
            ("train", "--dataset"),
            ("train", "--workdir"),
            ("train", "--data-dir"),
            ("interpolate", "--indices"),
            ("interpolate", "--labels"),
            ("embed", "--workdir"),
        ]
    ],
    pytest.param("interpolate", ["--indices", "1"], 2, "--indices", id="indices one value"),
    pytest.param("interpolate", ["--indices", "-1", "0"], 2, "--indices", id="indices negative"),
    pytest.param("interpolate", ["--indices", HUGE, "0"], 2, "--indices", id="indices huge"),
    pytest.param("interpolate", ["--indices", "a", "b"], 2, "--indices", id="indices words"),
    pytest.param("interpolate", ["--labels", "99", "0"], 2, "--labels", id="labels absent"),
    pytest.param("interpolate", ["--labels", "-1", "0"], 2, "--labels", id="labels negative"),
    pytest.param(
        "interpolate",
        ["--indices", "0", "1", "--labels", "0", "1"],
        2,
        "--labels",
        id="indices and labels conflict",
    ),
    *_flag_cases("segment", "--epochs", POSITIVE),
    *_flag_cases("segment", "--batch-size", POSITIVE),
    *_flag_cases("segment", "--seed", {**INT_VALUES, "huge": str(2**32)}),
    *_flag_cases("segment", "--learning-rate", {"zero": "0", "nan": "nan", "inf": "inf"}),
    pytest.param("segment", ["--image-size", "8", "8"], 2, "--image-size", id="image size small"),
    pytest.param("segment", ["--image-size", "64"], 2, "--image-size", id="image size one value"),
    pytest.param("segment", ["--image-size", "a", "b"], 2, "--image-size", id="image size words"),
    pytest.param("segment", ["--num-scenes", "0", "5"], 2, "--num-scenes", id="num scenes zero"),
    pytest.param("segment", ["--num-scenes", "5"], 2, "--num-scenes", id="num scenes one value"),
    pytest.param("segment", ["--upsampling", "nearest"], 2, "--upsampling", id="upsampling"),
    pytest.param("train", ["--num-processes", "2"], 2, "all three or none", id="one of three"),
    pytest.param(
        "train",
        ["--coordinator-address", "h", "--num-processes", "2", "--process-id", "0"],
        2,
        "HOST:PORT",
        id="coordinator without port",
    ),
    pytest.param("train", ["--distributed", "manual"], 2, "--distributed", id="distributed"),
    pytest.param("train", ["--no-such-flag"], 2, "--no-such-flag", id="train unknown flag"),
    *[  # argparse would take each as the flag it begins
        pytest.param(
            command, flags, 2, f"unrecognized arguments: {flags[0]}", id=f"{command} {flags[0]}"
        )
        for command, flags in [
            ("train", ["--epoch", "3"]),
            ("train", ["--learning", "0.1"]),
            ("segment", ["--image", "32", "32"]),
            ("interpolate", ["--step", "3"]),
            ("generate", ["--per", "3"]),
            ("embed", ["--work", "x"]),
        ]
    ],
    pytest.param("embed", ["--k", "5", "6"], 2, "6", id="embed extra value"),
]


def _snapshot(directory: Path) -> dict[str, object]:
    """Every file under ``directory``: a hash of the bytes of a small one (run.json, metrics,
    metadata), the size and modification time of a big one (checkpoint data, never rewritten)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            stat = path.stat()
            small = stat.st_size < 65536
            files[str(path.relative_to(directory))] = (
                hashlib.sha256(path.read_bytes()).hexdigest()
                if small
                else (stat.st_size, stat.st_mtime_ns)
            )
    return files


def _fails(argv: list[str], status: int, fragment: str, capsys) -> str:
    """Runs ``jaxconv ARGV``; checks it exits ``status`` with one error line naming ``fragment``."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == status, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("jaxconv") and ": error: " in line
    assert fragment in line, line
    return line


@pytest.fixture(autouse=True)
def digits_in_the_cli(cli_dataset, run_digits) -> None:
    """``--dataset mnist5k`` is ``finished_run``'s data: the CSV file is not parsed each time."""
    cli_dataset(run_digits)


@pytest.mark.parametrize("command, flags, status, fragment", FLAG_CASES)
def test_a_bad_flag_is_one_usage_line_naming_it(
    command, flags, status, fragment, finished_run, capsys
):
    # refused before anything is written: the shared run itself, not a copy
    before = _snapshot(finished_run)
    _fails([command, "--workdir", str(finished_run), *flags], status, fragment, capsys)
    assert _snapshot(finished_run) == before


def test_no_command_is_a_usage_error(capsys):
    _fails([], 2, "command", capsys)


# -- run directories ---------------------------------------------------------------------------


def _settings(workdir: Path) -> dict:
    return json.loads((workdir / "run.json").read_text())


def _write_settings(workdir: Path, settings) -> None:
    (workdir / "run.json").write_text(json.dumps(settings))


def _missing_key(workdir: Path) -> None:
    settings = _settings(workdir)
    del settings["batch_size"]
    _write_settings(workdir, settings)


def _wrong_type(workdir: Path) -> None:
    _write_settings(workdir, {**_settings(workdir), "batch_size": "five hundred"})


def _bad_model(workdir: Path) -> None:
    settings = _settings(workdir)
    settings["model"]["channels"] = "wide"
    _write_settings(workdir, settings)


def _not_json(workdir: Path) -> None:
    (workdir / "run.json").write_text('{"dataset": "mnist5k", ')


def _a_list(workdir: Path) -> None:
    _write_settings(workdir, [1, 2, 3])


def _a_directory(workdir: Path) -> None:
    (workdir / "run.json").unlink()
    (workdir / "run.json").mkdir()


def _other_task(workdir: Path) -> None:
    _write_settings(workdir, {**_settings(workdir), "task": "segmentation"})


def _latest_checkpoint(workdir: Path) -> Path:
    return max((workdir / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))


def _truncated(workdir: Path) -> None:
    files = [p for p in _latest_checkpoint(workdir).rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def _emptied(workdir: Path) -> None:
    for path in _latest_checkpoint(workdir).rglob("*"):
        if path.is_file():
            path.write_bytes(b"")


BROKEN_RUN_JSON = {
    "missing key": (_missing_key, "batch_size"),
    "wrong type": (_wrong_type, "batch_size"),
    "bad model": (_bad_model, "model"),
    "not json": (_not_json, "run.json"),
    "a list": (_a_list, "run.json"),
    "a directory": (_a_directory, "run.json"),
    "another task": (_other_task, "holds a segmentation run, not an autoencoder run"),
}
DAMAGED_CHECKPOINTS = {"truncated": _truncated, "emptied": _emptied}
READERS = ("train", "interpolate", "embed", "generate")


def _argv(command: str, workdir: Path, epochs: int = 4) -> list[str]:
    """``command`` on ``workdir``; train with finished_run's settings, to ``epochs``."""
    extra = ["--epochs", str(epochs)] if command == "train" else []
    return [command, *extra, "--workdir", str(workdir)]


@pytest.mark.parametrize("command", READERS)
@pytest.mark.parametrize("damage", BROKEN_RUN_JSON, ids=str)
def test_a_broken_run_json_is_one_line_naming_it(command, damage, run_copy, capsys):
    break_it, fragment = BROKEN_RUN_JSON[damage]
    break_it(run_copy)
    before = _snapshot(run_copy)
    line = _fails(_argv(command, run_copy), 2, fragment, capsys)
    assert "run.json" in line or "settings" in line
    assert _snapshot(run_copy) == before


# A restore that fails inside orbax leaves its reads behind as coroutines that complain when
# collected: a warning about orbax's clean-up, not about the outcome tested here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("command", READERS)
@pytest.mark.parametrize("damage", DAMAGED_CHECKPOINTS)
def test_a_damaged_checkpoint_is_one_line_naming_it_and_the_fix(command, damage, run_copy, capsys):
    DAMAGED_CHECKPOINTS[damage](run_copy)
    before = _snapshot(run_copy)
    line = _fails(_argv(command, run_copy), 1, str(_latest_checkpoint(run_copy)), capsys)
    assert "move it out" in line
    assert _snapshot(run_copy) == before
    gc.collect()  # orbax's abandoned reads end here, under this test's warning filter


@pytest.mark.parametrize("command", ("interpolate", "embed", "generate"))  # train starts one
def test_a_missing_workdir_is_a_usage_error_for_commands_that_read_a_run(command, tmp_path, capsys):
    _fails([command, "--workdir", str(tmp_path / "nothing")], 2, "no run.json", capsys)


@pytest.mark.parametrize("command", READERS)
def test_a_workdir_that_is_a_file_is_a_usage_error(command, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a run")
    _fails(_argv(command, path), 2, str(path), capsys)
    assert path.read_text() == "not a run"


@pytest.mark.parametrize("command", ("interpolate", "embed", "generate"))
def test_a_workdir_that_is_a_file_suggests_no_command_that_would_fail(command, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a run")
    line = _fails([command, "--workdir", str(path)], 2, f"{path} is a file", capsys)
    assert "jaxconv train" not in line


def test_a_workdir_below_a_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a run")
    _fails(_argv("train", path / "run"), 2, "is a file", capsys)


def test_an_unwritable_workdir_is_a_runtime_error(capsys):
    _fails(_argv("train", Path("/proc/jaxconv-run")), 1, "/proc/jaxconv-run", capsys)


def test_another_models_workdir_is_refused(run_copy, capsys):
    before = _snapshot(run_copy)
    argv = [*_argv("train", run_copy), "--embedding-dim", "8"]
    _fails(argv, 2, "another --workdir", capsys)
    assert _snapshot(run_copy) == before


def test_epochs_below_the_checkpoint_are_refused(run_copy, capsys):
    before = _snapshot(run_copy)
    _fails(_argv("train", run_copy, epochs=2), 2, "--epochs 3 or more", capsys)
    assert _snapshot(run_copy) == before


def test_a_deleted_latest_checkpoint_resumes_from_the_one_before(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints" / "3")
    cli.main(_argv("train", run_copy, epochs=3))
    assert "resumed from epoch 2" in capsys.readouterr().out
    metrics = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3]


def test_leftover_temporary_checkpoint_directories_are_ignored_and_cleaned(run_copy, capsys):
    leftover = run_copy / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    leftover.mkdir()
    (leftover / "partial").write_bytes(b"\0" * 100)
    cli.main(["embed", "--workdir", str(run_copy)])  # reads epoch 3
    cli.main(_argv("train", run_copy, epochs=4))  # saves epoch 4 for real
    assert not leftover.exists()
    assert _latest_checkpoint(run_copy).name == "4"


# -- data ------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(input_pipeline, "_network_available", lambda: False)


def test_an_unknown_dataset_is_a_usage_error(tmp_path, capsys):
    _fails(
        ["train", "--dataset", "no_such_set", "--workdir", str(tmp_path)], 2, "--dataset", capsys
    )


def test_a_dataset_without_images_is_a_usage_error(tmp_path, capsys):
    _fails(["train", "--dataset", "imdb_reviews", "--workdir", str(tmp_path)], 2, "image", capsys)


def test_an_unprepared_dataset_offline_is_a_runtime_error(offline, tmp_path, capsys, caplog):
    argv = ["train", "--dataset", "kmnist", "--data-dir", str(tmp_path), "--workdir", str(tmp_path)]
    line = _fails(argv, 1, "kmnist", capsys)
    assert "--dataset mnist5k" in line
    # TFDS' own warning about the empty directory would print before the line
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


class JaxconvTrainOnly(tfds.core.GeneratorBasedBuilder):
    """Images (as uint8 tensors, so no TensorFlow is needed) in a 'train' split only."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            yield i, {"image": [[[i]] * 8] * 8}


class JaxconvMixedSizes(tfds.core.GeneratorBasedBuilder):
    """Images of two sizes (as uint8 tensors) in 'train' and 'test'."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(None, None, 1), dtype=np.uint8, encoding="zlib"
                    )
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        for i, size in enumerate((8, 8, 9)):
            yield i, {"image": [[[i]] * size] * size}


@pytest.mark.parametrize(
    "builder, fragment",
    [(JaxconvTrainOnly, "no 'test' split"), (JaxconvMixedSizes, "different shapes")],
)
def test_a_dataset_that_cannot_be_trained_on_is_a_usage_error(builder, fragment, tmp_path, capsys):
    builder(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
    capsys.readouterr()  # TFDS's progress output while preparing
    argv = ["train", "--dataset", builder.name, "--data-dir", str(tmp_path)]
    _fails([*argv, "--workdir", str(tmp_path / "run")], 2, fragment, capsys)
