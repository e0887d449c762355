"""jaxconv.train: the step, torch parity of training, devices, checkpoints and resume."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from conftest import FINISHED_RUN_EPOCHS

from jaxconv import distributed, interop, train
from jaxconv.models import Autoencoder, AutoencoderConfig, AutoencoderTask
from jaxconv.rundir import RunDir, RunDirError
from jaxconv.segmentation import SegmentationConfig
from jaxconv.torch_models import torch_autoencoder
from jaxconv.train import (
    TrainConfig,
    TrainState,
    create_train_state,
    load_run,
    train_and_evaluate,
    train_step,
)

CONFIG = TrainConfig()  # finished_run's settings


def test_train_step_lowers_the_loss(small_digits):
    state = create_train_state(CONFIG)
    batch = {"image": jnp.asarray(small_digits.train_images[:32])}
    losses = []
    for _ in range(30):
        state, loss = train_step(state, batch)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30


def test_a_batch_over_the_cpu_chunk_has_the_gradient_of_its_mean_loss(small_digits, monkeypatch):
    """Batch 12, chunks of at most 5 (``CPU_CHUNK``): 3 chunks of 4, added up in a loop."""
    monkeypatch.setattr(train, "CPU_CHUNK", 5)
    task = CONFIG.task
    params = task.init_params(0)
    batch = {"image": jnp.asarray(small_digits.train_images[:12])}
    chunked = jax.jit(lambda p, b: train.loss_and_grads(task, p, b))
    assert "scan" in str(jax.make_jaxpr(chunked)(params, batch))
    expected = jax.jit(jax.value_and_grad(task.loss))(params, batch)
    for got, want in zip(jax.tree.leaves(chunked(params, batch)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def _cpu_caches(root, *caches):
    """A fake ``/sys/devices/system/cpu/cpu0/cache``: one ``indexN`` per (level, size)."""
    for index, (level, size) in enumerate(caches):
        folder = root / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "size").write_text(f"{size}\n")
    return root


def test_the_last_level_cache_is_read_from_sysfs(tmp_path):
    root = _cpu_caches(tmp_path, (1, "32K"), (1, "32K"), (2, "1024K"), (3, "32768K"))
    assert train._last_level_cache_bytes(root) == 32 << 20


def test_an_unreadable_cache_size_is_none(tmp_path):
    assert train._last_level_cache_bytes(tmp_path / "missing") is None
    assert train._last_level_cache_bytes(_cpu_caches(tmp_path, (3, "many"))) is None


@pytest.mark.parametrize(
    "cache_bytes, chunk", [(None, 128), (16 << 20, 128), (32 << 20, 256), (256 << 20, 256)]
)
def test_the_cpu_chunk_doubles_with_32_mib_of_last_level_cache(cache_bytes, chunk):
    assert train._cpu_chunk(cache_bytes) == chunk


def test_a_loss_that_is_not_a_mean_over_examples_is_taken_whole(monkeypatch):
    """The segmenter's loss weights pixels over the whole batch: no chunks."""
    monkeypatch.setattr(train, "CPU_CHUNK", 1)
    task = SegmentationConfig(widths=(4, 8), depth=0, norm_groups=2).task()
    params = task.init_params(0)
    batch = {"image": jnp.zeros((4, 16, 16, 1)), "label": jnp.zeros((4, 16, 16), jnp.int32)}
    jaxpr = jax.make_jaxpr(lambda p, b: train.loss_and_grads(task, p, b))(params, batch)
    assert "scan" not in str(jaxpr)


def test_100_adam_steps_follow_torchs_loss_curve(small_digits):
    """Same initial weights (from a torch init), same batches: the same losses."""
    torch.manual_seed(0)
    torch_model = torch_autoencoder(CONFIG.model)
    images = small_digits.train_images[:64]
    model = Autoencoder(CONFIG.model)
    params = interop.params_from_state_dict(torch_model.state_dict(), model, jnp.asarray(images))
    state = create_train_state(CONFIG, params)
    optimizer = torch.optim.Adam(torch_model.parameters(), lr=CONFIG.learning_rate)

    torch_losses, jax_losses = [], []
    for step in range(100):
        batch = images[(step % 2) * 32 : (step % 2 + 1) * 32]
        optimizer.zero_grad()
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch, -1, 1)))
        loss = torch.nn.functional.mse_loss(torch_model(x), x)
        loss.backward()
        optimizer.step()
        torch_losses.append(loss.item())
        state, jax_loss = train_step(state, {"image": jnp.asarray(batch)})
        jax_losses.append(float(jax_loss))
    assert torch_losses[-1] < 0.7 * torch_losses[0]  # it trained
    # float32 rounding differs (summation order); Adam, dividing by sqrt(v), lets the
    # relative gap grow from ~1e-6 to ~1e-3 where the loss falls fastest, and no further.
    np.testing.assert_allclose(jax_losses[:20], torch_losses[:20], rtol=1e-5)
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=2e-3)


def _params(state: TrainState) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def _loaded_params(workdir) -> list[np.ndarray]:
    return _params(load_run(workdir)[1])


def test_a_stopped_and_restarted_run_ends_bitwise_equal(run_digits, finished_run, tmp_path, capsys):
    """Trained for 1 epoch, then restarted for 3: as ``finished_run``, 3 epochs straight."""
    train_and_evaluate(run_digits, tmp_path, CONFIG, 1, progress=False)
    capsys.readouterr()
    resumed, history = train_and_evaluate(run_digits, tmp_path, CONFIG, FINISHED_RUN_EPOCHS)
    assert "resumed from epoch 1" in capsys.readouterr().out  # it says so
    assert [m["epoch"] for m in history] == [1, 2, 3]
    for a, b in zip(_params(resumed), _loaded_params(finished_run)):
        np.testing.assert_array_equal(a, b)


def test_metrics_are_one_json_line_per_epoch(finished_run):
    lines = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    for m in lines:
        assert m.keys() >= {"epoch", "train_mse", "test_mse", "images_per_s"}
        assert 0 < m["test_mse"] < 1 and m["images_per_s"] > 0


def test_only_the_newest_checkpoints_are_kept(run_digits, run_copy):
    assert _checkpoint_names(run_copy) == ["1", "2", "3"]
    train_and_evaluate(run_digits, run_copy, CONFIG, 4, keep=2, progress=False)
    assert _checkpoint_names(run_copy) == ["3", "4"]


def _checkpoint_names(workdir) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def _epochs_in_metrics_file(workdir) -> list[int]:
    return [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").open()]


def test_metrics_after_the_last_checkpoint_are_dropped_on_resume(run_digits, run_copy):
    (run_copy / "checkpoints" / "3").rename(run_copy / "lost")  # as if it crashed before saving
    assert _epochs_in_metrics_file(run_copy) == [1, 2, 3]
    # nothing left to train: the file is rewritten from the checkpoint all the same
    _, history = train_and_evaluate(run_digits, run_copy, CONFIG, 2, progress=False)
    assert [m["epoch"] for m in history] == [1, 2]
    assert _epochs_in_metrics_file(run_copy) == [1, 2]
    _, history = train_and_evaluate(run_digits, run_copy, CONFIG, 3, progress=False)
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert _epochs_in_metrics_file(run_copy) == [1, 2, 3]


def test_a_workdir_of_another_run_is_refused_naming_the_settings_that_differ(run_digits, tmp_path):
    RunDir(tmp_path).claim(CONFIG)
    model = AutoencoderConfig(embedding_dim=8)
    other = TrainConfig(batch_size=CONFIG.batch_size, learning_rate=3e-4, model=model)
    with pytest.raises(ValueError, match="another --workdir") as info:
        train_and_evaluate(run_digits, tmp_path, other, 2, progress=False)
    message = str(info.value)
    assert "learning_rate 0.001 (asked: 0.0003)" in message
    assert "model.embedding_dim 64 (asked: 8)" in message
    assert "batch_size" not in message and "TrainConfig" not in message


def test_the_losses_are_fetched_once_each_whatever_the_progress_bar(
    small_digits, tmp_path, monkeypatch
):
    """Every device-to-host copy goes through ``jax.device_get`` (implicit ones are refused
    here); a loss is fetched once, in a few transfers, with or without the progress bar."""
    fetches = []
    real_device_get = jax.device_get

    def counting_device_get(tree):
        fetches.append(len(jax.tree.leaves(tree)))
        return real_device_get(tree)

    monkeypatch.setattr(jax, "device_get", counting_device_get)
    config = TrainConfig(batch_size=8)  # 32 steps an epoch, 8 test batches
    counts = {}
    for progress in (False, True):
        fetches.clear()
        with jax.transfer_guard_device_to_host("disallow"):
            train_and_evaluate(small_digits, tmp_path / str(progress), config, 1, progress=progress)
        counts[progress] = list(fetches)
    assert counts[False] == counts[True]
    checks = -(-32 // train.CHECK_EVERY)
    # the losses' fetches, then one fetch per test batch (its sums)
    assert counts[False][:checks] == [10, 10, 10, 2]
    assert len(counts[False]) <= checks + 8


MULTI_DEVICE_SCRIPT = """
import json, sys
import jax
import numpy as np
from jaxconv.input_pipeline import Dataset
from jaxconv.train import TrainConfig, train_and_evaluate
with np.load(sys.argv[1]) as d:
    digits = Dataset("mnist5k", *(d[k] for k in ("train_x", "train_y", "test_x", "test_y")))
_, history = train_and_evaluate(digits, sys.argv[2], TrainConfig(), 1, progress=False)
print(json.dumps({"devices": jax.local_device_count(), "history": history}))
"""


def test_four_devices_give_the_losses_of_one(
    finished_run, run_digits_file, same_numerics_env, tmp_path
):
    """``finished_run`` (this process: one device) against the first epoch of the same run
    on 4 (8 steps of 16 images a device)."""
    env = {  # CPU devices whatever the default backend is
        **same_numerics_env,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{same_numerics_env['XLA_FLAGS']} --xla_force_host_platform_device_count=4",
    }
    out = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT, str(run_digits_file), str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    four = json.loads(out.splitlines()[-1])
    assert jax.local_device_count() == 1 and four["devices"] == 4
    one = RunDir(finished_run).metrics()[:1]
    for key in ("train_mse", "test_mse"):
        np.testing.assert_allclose(
            [m[key] for m in four["history"]], [m[key] for m in one], rtol=1e-5
        )


def test_load_run_gives_the_trained_state(finished_run, finished_run_params):
    config, state = load_run(finished_run)
    assert config == CONFIG
    for a, b in zip(finished_run_params, _params(state)):
        np.testing.assert_array_equal(a, b)


def test_load_run_builds_the_optimizer_of_the_run(finished_run, monkeypatch):
    """A task's optimizer may count its schedule in epochs: load_run's state continues
    the run with the optimizer of its ``steps_per_epoch`` (512 images / 64 = 8)."""
    made = {}

    def optimizer(self, learning_rate, steps_per_epoch):
        made[steps_per_epoch] = optax.adam(learning_rate)
        return made[steps_per_epoch]

    monkeypatch.setattr(AutoencoderTask, "optimizer", optimizer)
    # optimizers are made once per settings in a process: this test's, uncached
    monkeypatch.setattr(train, "_optimizer", train._optimizer.__wrapped__)
    _, state = load_run(finished_run)
    assert state.tx is made[8]


def test_nothing_left_to_train_compiles_no_train_step(run_digits, run_copy, monkeypatch):
    class NotToCompile:
        def lower(self, *args):
            raise AssertionError("the train step was compiled with nothing left to train")

    monkeypatch.setattr(train, "train_step", NotToCompile())
    _, history = train_and_evaluate(run_digits, run_copy, CONFIG, 3, progress=False)
    assert [m["epoch"] for m in history] == [1, 2, 3]


def test_load_run_refuses_a_missing_or_unfinished_run(tmp_path):
    with pytest.raises(RunDirError, match="no run.json"):
        load_run(tmp_path / "missing")
    RunDir(tmp_path).claim(CONFIG)
    with pytest.raises(RunDirError, match="no finished checkpoint"):
        load_run(tmp_path)


def test_load_run_refuses_a_checkpoint_of_another_model(run_copy):
    settings = json.loads((run_copy / "run.json").read_text())
    settings["model"]["embedding_dim"] = 8
    (run_copy / "run.json").write_text(json.dumps(settings))
    with pytest.raises(RunDirError, match="does not fit.*params/encoder/Conv_2/bias: saved"):
        load_run(run_copy)


def _train_step_compiles(state: TrainState, batch: dict) -> int:
    """How many programs ``train_step`` holds after a step of ``state``, placed as ``fit``
    places the state and the batch."""
    batch_sharding, replicated = distributed.shardings()
    train_step(jax.device_put(state, replicated), distributed.global_batch(batch, batch_sharding))
    return train_step._cache_size()


def test_train_states_of_equal_settings_share_the_compiled_train_step(run_digits):
    batch = {"image": run_digits.train_images[:64]}
    compiled = _train_step_compiles(create_train_state(CONFIG), batch)
    assert _train_step_compiles(create_train_state(CONFIG), batch) == compiled


def test_a_restored_state_shares_the_compiled_train_step_of_a_fresh_one(finished_run, run_digits):
    batch = {"image": run_digits.train_images[:64]}
    compiled = _train_step_compiles(create_train_state(CONFIG, steps_per_epoch=8), batch)
    _, restored = load_run(finished_run)
    assert _train_step_compiles(restored, batch) == compiled
