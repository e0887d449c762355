"""The embedding space: jaxconv.embedding's functions, the figures, the commands and the sweep."""

import gc
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxconv import cli, embedding, input_pipeline, plots
from jaxconv.models import Autoencoder, reconstruct
from jaxconv.rundir import RunDir
from jaxconv.train import TrainConfig, TrainState, load_run

CONFIG = TrainConfig()  # finished_run's settings
SWEEP = Path(__file__).parent.parent / "experiments" / "embedding_sweep.py"


@pytest.fixture(scope="module")
def loaded_run(finished_run) -> tuple[TrainConfig, TrainState]:
    return load_run(finished_run)


@pytest.fixture(autouse=True)
def digits_in_the_cli(cli_dataset, run_digits) -> None:
    """The commands read ``finished_run``'s data (all 500 test images, 512 train images)
    without parsing the CSV file each time; a test that needs all of mnist5k says so."""
    cli_dataset(run_digits)


def _command(*argv: str, capsys) -> str:
    cli.main(list(argv))
    return capsys.readouterr().out


def _pixels(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))


def _picture(path: Path) -> np.ndarray:
    return _pixels(path, "L").astype(np.float64)


def _coloured_pixels(path: Path) -> int:
    """Pixels far from grey: the scatter's points and the plot's lines, not text, axes or grid."""
    rgb = _pixels(path, "RGB").astype(np.int64)
    return int(np.sum(rgb.max(axis=-1) - rgb.min(axis=-1) > 60))


# -- pure functions, on data with known answers ------------------------------------------------


def test_interpolate_is_the_straight_line_with_exact_endpoints():
    a, b = np.array([1.0, -2.0, 0.5], np.float32), np.array([3.0, 2.0, 0.5], np.float32)
    line = embedding.interpolate(a, b, 5)
    assert line.shape == (5, 3) and line.dtype == np.float32
    np.testing.assert_array_equal(line[0], a)
    np.testing.assert_array_equal(line[-1], b)
    np.testing.assert_allclose(line[2], (a + b) / 2)
    np.testing.assert_allclose(np.diff(line, axis=0), np.tile((b - a) / 4, (4, 1)), rtol=1e-6)
    images = embedding.interpolate(np.zeros((2, 2, 1)), np.ones((2, 2, 1)), 3)
    np.testing.assert_allclose(images[:, 0, 0, 0], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="steps"):
        embedding.interpolate(a, b, 1)


def test_pca_finds_the_axes_of_a_rotated_cross():
    # Four points at ±3 on one axis and ±1 on another, rotated and shifted: variances 18/3 and
    # 2/3 along the two axes, none along the third, so the ratios are exactly 0.9 and 0.1.
    cross = np.array([[3.0, 0, 0], [-3, 0, 0], [0, 1, 0], [0, -1, 0]])
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    result = embedding.pca(cross @ rotation.T + [5.0, -1.0, 2.0], 2)
    np.testing.assert_allclose(result.explained_variance_ratio, [0.9, 0.1], atol=1e-12)
    np.testing.assert_allclose(np.abs(result.projection), np.abs(cross[:, :2]), atol=1e-12)
    with pytest.raises(ValueError, match="n_components"):
        embedding.pca(cross, 4)


def test_pca_signs_do_not_depend_on_the_data_order():
    x = np.random.default_rng(1).normal(size=(50, 4)) * [4.0, 2.0, 1.0, 0.5]
    order = np.random.default_rng(2).permutation(50)
    np.testing.assert_allclose(
        embedding.pca(x[order]).projection, embedding.pca(x).projection[order], atol=1e-10
    )


def test_knn_votes_with_k_and_breaks_ties_to_the_smallest_label():
    train_x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    train_y = np.array([0, 0, 0, 1, 1])
    test_x = np.array([[1.5], [10.5]])
    np.testing.assert_array_equal(embedding.knn_predict(train_x, train_y, test_x, k=3), [0, 1])
    assert embedding.knn_accuracy(train_x, train_y, test_x, np.array([0, 1]), k=3) == 1.0
    assert embedding.knn_accuracy(train_x, train_y, test_x, np.array([0, 1]), k=5) == 0.5
    # equidistant neighbours of labels 1 and 0: a tie, which goes to label 0
    tie = embedding.knn_predict(np.array([[0.0], [2.0]]), np.array([1, 0]), np.array([[1.0]]), k=2)
    np.testing.assert_array_equal(tie, [0])
    with pytest.raises(ValueError, match="k must be"):
        embedding.knn_predict(train_x, train_y, test_x, k=6)


def test_nearest_neighbours_in_batches_match_brute_force():
    rng = np.random.default_rng(3)
    references, queries = rng.normal(size=(200, 3, 4)), rng.normal(size=(37, 3, 4))
    distances, indices = embedding.nearest_neighbours(queries, references, k=4, batch_size=8)
    full = np.linalg.norm(queries.reshape(37, 1, -1) - references.reshape(1, 200, -1), axis=-1)
    np.testing.assert_array_equal(indices, np.argsort(full, axis=1)[:, :4])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :4], rtol=1e-4)
    rms = embedding.nearest_rms_distance(queries, references, batch_size=8)
    np.testing.assert_allclose(rms, full.min(axis=1) / np.sqrt(12), rtol=1e-4)
    np.testing.assert_allclose(
        embedding.nearest_rms_distance(references[:3], references), 0, atol=1e-3
    )


def test_chance_is_the_frequency_of_the_most_common_train_label():
    assert embedding.chance_accuracy(np.array([0, 0, 1, 2])) == 0.5


def test_fit_gaussian_is_the_sample_mean_and_unbiased_covariance():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])
    gaussian = embedding.fit_gaussian(x)
    np.testing.assert_allclose(gaussian.mean, [2.0, 2.0])
    np.testing.assert_allclose(gaussian.covariance, np.cov(x, rowvar=False))
    with pytest.raises(ValueError, match="x must have at least 2 row"):
        embedding.fit_gaussian(x[:1])


def test_samples_follow_the_gaussian_and_the_seed():
    true = embedding.Gaussian(
        np.array([1.0, -2.0, 0.5]), np.array([[2.0, 0.6, 0], [0.6, 1.0, 0], [0, 0, 0.25]])
    )
    samples = embedding.sample_gaussian(true, 20_000, np.random.default_rng(0))
    assert samples.shape == (20_000, 3) and samples.dtype == np.float32
    fitted = embedding.fit_gaussian(samples)
    np.testing.assert_allclose(fitted.mean, true.mean, atol=0.05)
    np.testing.assert_allclose(fitted.covariance, true.covariance, atol=0.06)
    again = embedding.sample_gaussian(true, 20_000, np.random.default_rng(0))
    np.testing.assert_array_equal(samples, again)


def test_a_singular_gaussian_samples_on_its_line():
    direction = np.array([0.6, 0.8])
    line = embedding.Gaussian(np.zeros(2), np.outer(direction, direction))  # rank 1
    samples = embedding.sample_gaussian(line, 100, np.random.default_rng(0))
    np.testing.assert_allclose(samples @ np.array([-0.8, 0.6]), 0.0, atol=1e-5)


def test_default_pairs_join_the_first_images_of_consecutive_labels():
    labels = np.array([3, 1, 0, 2, 1, 4, 5, 6, 7, 0, 8, 9])
    assert embedding.default_pairs(labels) == [(2, 1), (3, 0), (5, 6), (7, 8)]
    assert embedding.default_pairs(np.zeros(5, np.int64)) == [(0, 1), (2, 3)]


# -- on a trained run --------------------------------------------------------------------------


def test_encode_and_decode_in_batches_equal_the_model(loaded_run, mnist5k):
    config, state = loaded_run
    images = mnist5k.test_images[:5]
    z = embedding.encode(config.model, state.params, images, batch_size=2)
    model = Autoencoder(config.model)
    expected = model.apply({"params": state.params}, images, method=Autoencoder.encode)
    assert z.shape == (5, config.model.embedding_dim)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    decoded = embedding.decode(config.model, state.params, z, batch_size=2)
    assert decoded.shape == images.shape
    reconstructions = reconstruct(config.model, state.params, images)
    np.testing.assert_allclose(decoded, reconstructions, rtol=1e-5, atol=1e-5)


def test_the_ends_of_the_decoded_line_are_the_reconstructions(loaded_run, mnist5k):
    config, state = loaded_run
    a, b = mnist5k.test_images[0], mnist5k.test_images[1]
    line = embedding.decoded_line(config.model, state.params, a, b, 6)
    assert line.shape == (6, 28, 28, 1)
    ends = reconstruct(config.model, state.params, np.stack([a, b]))
    np.testing.assert_allclose(line[[0, -1]], ends, atol=1e-5)
    assert np.abs(ends[0] - ends[1]).max() > 1e-2  # so a swapped or repeated end would show


def test_interpolate_writes_its_figure_and_numbers(run_copy, capsys):
    out = _command("interpolate", "--workdir", str(run_copy), capsys=capsys)
    figure, numbers = run_copy / "interpolation.png", run_copy / "interpolation.json"
    assert str(figure) in out and str(numbers) in out
    record = json.loads(numbers.read_text())
    assert len(record["pairs"]) == 4 and record["steps"] == 10
    assert [p["labels"] for p in record["pairs"]] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    for pair in record["pairs"]:
        for row in ("embedding", "pixels"):
            assert pair[row]["mse_to_first"][0] == 0 and pair[row]["mse_to_last"][-1] == 0
    assert _picture(figure).std() > 50  # digits on black squares on white


def test_interpolate_by_labels_and_by_indices(run_copy, capsys, mnist5k):
    interpolate = ["interpolate", "--workdir", str(run_copy)]
    _command(*interpolate, "--labels", "3", "8", "--steps", "5", capsys=capsys)
    (pair,) = json.loads((run_copy / "interpolation.json").read_text())["pairs"]
    first = [int(np.flatnonzero(mnist5k.test_labels == c)[0]) for c in (3, 8)]
    assert pair["labels"] == [3, 8] and pair["indices"] == first
    assert len(pair["embedding"]["mse_to_first"]) == 5
    _command(*interpolate, "--indices", "7", "9", capsys=capsys)
    (pair,) = json.loads((run_copy / "interpolation.json").read_text())["pairs"]
    assert pair["indices"] == [7, 9]


def test_embed_measures_knn_far_above_chance(run_copy, cli_dataset, mnist5k, capsys):
    """A random-init encoder already scores ~0.85 here (random projections keep pixel
    distances), so this checks the measurement, not what three short epochs learned."""
    cli_dataset(mnist5k)
    out = _command("embed", "--workdir", str(run_copy), capsys=capsys)
    figure, numbers = run_copy / "embedding.png", run_copy / "embedding.json"
    assert str(figure) in out and str(numbers) in out
    record = json.loads(numbers.read_text())
    accuracy = record["knn_accuracy"]
    assert accuracy["chance"] == pytest.approx(0.1)  # mnist5k: 450 train images per label
    assert accuracy["embedding"] > 3 * accuracy["chance"]
    assert accuracy["pixels"] > 3 * accuracy["chance"]
    assert record["k"] == 5 and record["test_size"] == 500
    ratio = record["pca_explained_variance_ratio"]
    assert len(ratio) == 2 and 0 < ratio[1] <= ratio[0] and sum(ratio) <= 1
    # 500 points: ~6,000 coloured pixels; the legend alone has ~700
    assert _coloured_pixels(figure) > 3000


def test_generate_writes_a_row_per_class_and_one_for_all(run_copy, capsys):
    out = _command("generate", "--workdir", str(run_copy), "--per-row", "6", capsys=capsys)
    figure, numbers = run_copy / "generated.png", run_copy / "generated.json"
    assert str(figure) in out and str(numbers) in out
    record = json.loads(numbers.read_text())
    names = [g["name"] for g in record["gaussians"]]
    assert names == [f"class {c}" for c in range(10)] + ["all classes"]
    assert record["nearest_train_rms"]["reconstructions_each"] == 66
    assert all(v > 0 for v in record["nearest_train_rms"].values())
    assert _picture(figure).std() > 50


# -- errors and help -----------------------------------------------------------------------------

COMMANDS = ("interpolate", "embed", "generate")


def _missing(tmp_path: Path, request) -> Path:
    return tmp_path / "missing"


def _unfinished(tmp_path: Path, request) -> Path:
    RunDir(tmp_path / "unfinished").claim(CONFIG)
    return tmp_path / "unfinished"


def _incompatible(tmp_path: Path, request) -> Path:
    workdir = Path(shutil.copytree(request.getfixturevalue("finished_run"), tmp_path / "other"))
    settings = json.loads((workdir / "run.json").read_text())
    settings["model"]["embedding_dim"] = 8
    (workdir / "run.json").write_text(json.dumps(settings))
    return workdir


@pytest.mark.parametrize(
    "command, make_workdir, message",
    [
        *[pytest.param(c, _missing, "no run.json", id=f"{c}-missing") for c in COMMANDS],
        *[
            pytest.param(c, _unfinished, "no finished checkpoint", id=f"{c}-unfinished")
            for c in COMMANDS
        ],
        # one command will do: all three read the run with the same function, and this case
        # initialises a model to try the checkpoint on. Orbax leaves the reads of the failed
        # restore as coroutines that complain when collected: collected here, and ignored.
        pytest.param(
            "embed",
            _incompatible,
            "does not fit",
            id="embed-incompatible",
            marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
        ),
    ],
)
def test_a_bad_run_dir_is_an_argparse_error(
    command, make_workdir, message, tmp_path, request, capsys
):
    workdir = make_workdir(tmp_path, request)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--workdir", str(workdir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"jaxconv {command}: error:" in err and message in err
    gc.collect()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "1"], "--steps"),
        (["--labels", "3", "42"], "label 42"),
        (["--indices", "0", "1", "--labels", "0", "1"], "not allowed with"),
    ],
)
def test_bad_interpolate_flags_are_argparse_errors(flags, message, run_copy, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["interpolate", "--workdir", str(run_copy), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--workdir" in out and "runs/mnist5k" in out


# -- the figures by themselves, and the sweep ------------------------------------------------------


def test_sweep_plot_draws_its_lines(tmp_path):
    path = plots.sweep(
        [2, 4, 8], [0.05, 0.03, 0.02], [0.045, 0.025, 0.015], tmp_path / "s.png", "t"
    )
    assert _coloured_pixels(path) > 1000  # two lines with markers


def test_embedding_sweep_writes_its_table_and_figures(small_digits, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("embedding_sweep", SWEEP)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    monkeypatch.setattr(input_pipeline, "load_dataset", lambda *args, **kwargs: small_digits)
    sweep.main(["--epochs", "1", "--sizes", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record["epochs"] == 1
    assert [r["embedding_dim"] for r in record["rows"]] == [2]
    assert all(0 < r["test_mse"] < 1 and 0 <= r["knn_accuracy"] <= 1 for r in record["rows"])
    for name in ("sweep.png", "embedding_2d.png", "sweep.json"):
        assert str(tmp_path / name) in out
    assert _coloured_pixels(tmp_path / "embedding_2d.png") > 1000  # 64 points and the legend
    assert (tmp_path / "embedding_2" / "checkpoints").is_dir()


def test_label_pair_takes_the_first_image_of_each_label_and_names_a_missing_one():
    from jaxconv import analysis

    labels = np.array([3, 1, 3, 1, 2])
    assert analysis.label_pair(labels, 1, 3) == (1, 0)
    assert analysis.label_pair(labels, 3, 3) == (0, 2)
    with pytest.raises(ValueError, match="1 images of label 2"):
        analysis.label_pair(labels, 2, 2)


def test_the_interpolation_record_is_computed_by_the_library(loaded_run, mnist5k):
    from jaxconv import analysis

    config, state = loaded_run
    result = analysis.interpolation(config.model, state.params, mnist5k, [(0, 1)], steps=3)
    (pair,) = result.record["pairs"]
    assert pair["indices"] == [0, 1] and result.record["steps"] == 3
    line, blend = result.rows[0]
    assert line.shape == blend.shape == (3, *config.model.image_shape)
    assert pair["pixels"]["mse_to_first"][0] == 0 and pair["pixels"]["mse_to_last"][-1] == 0
    images = mnist5k.test_images
    expected = np.mean((images[0] - images[1]) ** 2)  # between the blend's two ends
    np.testing.assert_allclose(pair["pixels"]["mse_to_last"][0], expected, rtol=1e-5)
    assert result.middle["pixels"] == pair["pixels"]["nearest_train_rms"][1]
