"""The ``jaxconv train`` command: outputs in the workdir, argparse errors, offline data."""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxconv import cli, input_pipeline


def _train(*flags: str) -> None:
    cli.main(["train", *flags])


def test_train_writes_metrics_checkpoints_and_figures(run_digits, cli_dataset, tmp_path, capsys):
    cli_dataset(run_digits)  # 512 of mnist5k's train images: 8 steps
    _train("--epochs", "1", "--workdir", str(tmp_path))
    out = capsys.readouterr().out
    (metrics,) = [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics["epoch"] == 1 and 0 < metrics["test_mse"] < 0.2
    assert (tmp_path / "checkpoints" / "1").is_dir()
    for name in ("reconstructions.png", "loss.png", "metrics.jsonl", "checkpoints"):
        assert str(tmp_path / name) in out
    with Image.open(tmp_path / "reconstructions.png") as image:
        picture = np.asarray(image.convert("L"))
    assert picture.std() > 10  # digits drawn, not a blank canvas


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "many"], "--batch-size"),
        (["--learning-rate", "-1"], "--learning-rate"),
        (["--batch-size", "8192"], "--batch-size must be in [1, 4500]"),
        (["--dataset", "no_such_dataset"], "Unknown dataset"),
    ],
)
def test_bad_flags_get_argparse_errors(flags, message, mnist5k, cli_dataset, capsys, tmp_path):
    cli_dataset(mnist5k)  # its 4,500 train images bound --batch-size
    with pytest.raises(SystemExit) as exit_info:
        _train(*flags, "--workdir", str(tmp_path))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unprepared_tfds_dataset_stops_fast_naming_the_offline_default(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(input_pipeline, "_network_available", lambda: False)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        _train(
            "--dataset", "mnist", "--data-dir", str(tmp_path / "tfds"), "--workdir", str(tmp_path)
        )
    assert time.monotonic() - start < 10
    assert exit_info.value.code == 1
    assert "--dataset mnist5k" in capsys.readouterr().err


def test_train_runs_on_a_tfds_dataset(tmp_path, monkeypatch):
    # the mock replaces download and preparation; the checks in front of them must pass
    monkeypatch.setattr(input_pipeline, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(input_pipeline, "_network_available", lambda: True)
    with tfds.testing.mock_data(num_examples=64):
        _train(
            "--dataset", "mnist", "--epochs", "1", "--batch-size", "32", "--workdir", str(tmp_path)
        )
    (metrics,) = [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics["epoch"] == 1
    assert (tmp_path / "reconstructions.png").exists()


# ---------------------------------------------------------------- start-up and messages

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow_datasets", "torch", "matplotlib")


def test_the_parser_and_help_import_no_jax():
    # a fresh interpreter: this one imported jax long ago
    code = (
        "import contextlib, io, sys\n"
        "from jaxconv import cli\n"
        "cli.build_parser()\n"
        "for argv in (['--help'], ['segment', '--help'], ['train', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        cli.main(argv)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# 2**15 + 1 rows: jax issue 39103's product-then-sum, exact in float32 (the last row's
# 32768**2 = 2**30), which jaxlib 0.10.2's XLA:CPU YNN fusion gets wrong.
_PROBE = """
import os, sys
from jaxconv import cli
from jaxconv.cli import analysis_commands

def probe(args):
    import jax, jax.numpy as jnp
    rows = jnp.arange(2**15 + 1, dtype=jnp.float32)
    x = jnp.stack([rows, jnp.zeros_like(rows), jnp.zeros_like(rows)], axis=1)
    f = jax.jit(jax.vmap(lambda row: jnp.sum((jnp.eye(3) @ row) ** 2)))
    print(repr(os.environ.get("XLA_FLAGS")), float(f(x)[-1]) == 2.0**30)

analysis_commands.run_embed = probe
cli.main(["embed"])
"""


def _probe(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_commands_run_with_the_ynn_fusion_off_unless_the_user_set_xla_flags():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    assert _probe(env) == f"{cli.XLA_FLAGS_DEFAULT!r} True"
    assert cli.XLA_FLAGS_DEFAULT == "--xla_cpu_experimental_ynn_fusion_type="


def test_xla_flags_the_user_set_are_left_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    cli.default_xla_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    monkeypatch.delenv("XLA_FLAGS")
    cli.default_xla_flags()
    assert os.environ["XLA_FLAGS"] == cli.XLA_FLAGS_DEFAULT


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_segment_help_names_its_optimizer_and_shows_plain_defaults(capsys):
    text = _help("segment", capsys=capsys)
    assert "Adam's" not in text
    assert "AdamW" in text and "warm-up" in text and "cosine" in text
    assert "(10000, 1000)" not in text and "(default: 10000 1000)" in text
    assert "Adam's" in _help("train", capsys=capsys)  # train's rate is plain Adam's


def test_no_parser_takes_an_abbreviated_flag():
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert not parser.allow_abbrev
    assert {name: p.allow_abbrev for name, p in subparsers.choices.items()} == dict.fromkeys(
        subparsers.choices, False
    )


def test_every_default_is_the_one_in_configs():
    import inspect

    from jaxconv import configs, embedding, scenes
    from jaxconv.models import AutoencoderConfig
    from jaxconv.segmentation import SegmentationConfig

    parser = cli.build_parser()
    for command, defaults in (("train", configs.AUTOENCODER), ("segment", configs.SEGMENTATION)):
        args = parser.parse_args([command])
        for name in ("epochs", "batch_size", "learning_rate", "seed", "checkpoint_every", "keep"):
            assert getattr(args, name) == getattr(defaults, name), (command, name)
    assert parser.parse_args(["train"]).embedding_dim == configs.EMBEDDING_DIM
    segment = parser.parse_args(["segment"])
    assert tuple(segment.image_size) == configs.IMAGE_SIZE
    assert tuple(segment.num_scenes) == configs.NUM_SCENES
    assert segment.upsampling == configs.UPSAMPLING
    assert parser.parse_args(["interpolate"]).steps == configs.INTERPOLATION_STEPS
    assert parser.parse_args(["embed"]).k == configs.KNN_K
    generate = parser.parse_args(["generate"])
    assert (generate.per_row, generate.seed) == (configs.GENERATE_PER_ROW, configs.GENERATE_SEED)

    assert AutoencoderConfig().embedding_dim == configs.EMBEDDING_DIM
    model = SegmentationConfig()
    assert (model.image_size, model.num_scenes, model.epochs, model.upsampling) == (
        configs.IMAGE_SIZE,
        configs.NUM_SCENES,
        configs.SEGMENTATION.epochs,
        configs.UPSAMPLING,
    )
    loader = inspect.signature(scenes.load_segmentation_dataset).parameters
    assert loader["image_size"].default == configs.IMAGE_SIZE
    assert loader["num_scenes"].default == configs.NUM_SCENES
    assert inspect.signature(embedding.knn_accuracy).parameters["k"].default == configs.KNN_K
    pairs = inspect.signature(embedding.default_pairs).parameters["count"]
    assert pairs.default == configs.INTERPOLATION_PAIRS

    from jaxconv.rundir import RunDir
    from jaxconv.train import TrainConfig, fit

    run = TrainConfig()
    assert (run.batch_size, run.learning_rate, run.seed) == (
        configs.AUTOENCODER.batch_size,
        configs.AUTOENCODER.learning_rate,
        configs.AUTOENCODER.seed,
    )
    fit_defaults = inspect.signature(fit).parameters
    assert fit_defaults["checkpoint_every"].default == configs.CHECKPOINT_EVERY
    assert fit_defaults["keep"].default == RunDir(".").keep == configs.KEEP


def test_python_m_jaxconv_launch_is_jaxconv_launch():
    # launch's own entry point runs `python -m jaxconv launch` (no import of the CLI)
    result = subprocess.run(
        [sys.executable, "-m", "jaxconv.launch", "-n", "0", "--", "train"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("jaxconv launch: error: --num-processes must be >= 1")
