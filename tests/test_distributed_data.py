"""The data, paths and backup pieces of fit_distributed, in one process.

How the datasets built here split across real workers is checked in
test_multi_worker.py (test_every_example_goes_to_exactly_one_worker).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kerasfed._compat import KERAS_3, keras
from kerasfed.distributed import data, epoch_order
from kerasfed.distributed.backup import adapt_user_backup, backup_callback, resume_epoch, save_seed, saved_seed
from kerasfed.distributed.data import DataError
from kerasfed.distributed.paths import WorkerPaths

pytestmark = pytest.mark.distributed

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import dist_common  # noqa: E402

IDS = np.arange(10, dtype="int64").reshape(-1, 1)


def arrays(x=IDS, y=None, sample_weight=None, **fit_kwargs) -> data.Inputs:
    y = IDS[:, 0].copy() if y is None else y
    return data.check_training_data(x, y, sample_weight, None, fit_kwargs)


def batches(dataset, position=0) -> list[list[int]]:
    return [[int(v) for v in np.reshape(element[position], -1)] for element in dataset]


# --- forms -------------------------------------------------------------------


def test_forms_are_recognised():
    assert arrays().kind == data.ARRAYS and arrays().num_examples == 10
    dataset = tf.data.Dataset.from_tensor_slices((IDS, IDS)).batch(2)
    assert data.check_training_data(dataset, None, None, None, {}).kind == data.DATASET
    fn = data.check_training_data(lambda ctx: dataset, None, None, None, {"steps_per_epoch": 5})
    assert fn.kind == data.DATASET_FN and fn.num_examples is None
    multi = data.check_training_data({"a": IDS, "b": [IDS, IDS]}, IDS, None, None, {})
    assert multi.kind == data.ARRAYS and multi.num_examples == 10
    assert data.check_validation_data(None, {}) is None
    val = data.check_validation_data((IDS, IDS, np.ones(10)), {})
    assert val.kind == data.ARRAYS and val.sample_weight is not None


# --- in-memory arrays across workers ------------------------------------------------


def test_arrays_dataset_keeps_order_and_the_partial_last_batch():
    dataset = data.arrays_dataset(arrays(), batch_size=4)
    assert batches(dataset) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    policy = dataset.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_arrays_dataset_elements_and_multiple_inputs():
    sw = np.linspace(0, 1, 10).astype("float32")
    element = next(iter(data.arrays_dataset(arrays(sample_weight=sw), batch_size=10)))
    assert len(element) == 3
    np.testing.assert_array_equal(element[2].numpy(), sw)
    two_inputs = data.check_training_data([IDS, IDS * 10], IDS, None, None, {})
    x, _ = next(iter(data.arrays_dataset(two_inputs, batch_size=10)))
    assert isinstance(x, tuple) and len(x) == 2  # a list would have been stacked into one tensor
    np.testing.assert_array_equal(x[1].numpy(), IDS * 10)


def stream(inputs=None, *, epochs=3, **kwargs) -> list[list[list[int]]]:
    """The ids of ``epochs`` epochs of training_batches, epoch by epoch."""
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("seed", 7)
    dataset, steps = epoch_order.training_batches(inputs or arrays(), **kwargs)
    flat = batches(dataset.take(epochs * steps))
    return [flat[e * steps:(e + 1) * steps] for e in range(epochs)]


def test_training_batches_are_fixed_by_the_seed_and_new_every_epoch():
    a = stream()
    assert a == stream()  # the same seed on every worker gives the same global batches
    assert a[0] != a[1] != a[2]  # a new permutation every epoch
    for epoch in a:
        assert [len(b) for b in epoch] == [4, 4, 2]  # the partial batch ends each epoch
        assert sorted(i for batch in epoch for i in batch) == list(range(10))
    assert stream(seed=8) != a
    assert stream(shuffle=False) == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]] * 3

    for epoch in stream(shuffle="batch", epochs=6):  # whole batches move, the partial one stays last
        assert sorted(map(tuple, epoch[:2])) == [(0, 1, 2, 3), (4, 5, 6, 7)] and epoch[2] == [8, 9]
    assert len({tuple(map(tuple, e)) for e in stream(shuffle="batch", epochs=6)}) == 2


def test_training_batches_resume_with_the_order_of_an_uninterrupted_run():
    uninterrupted = stream(epochs=5)
    assert stream(first_epoch=3, epochs=2) == uninterrupted[3:]
    # With the user's steps_per_epoch, epochs cut passes over the data anywhere.
    flat = [b for e in stream(epochs=5, steps_per_epoch=2) for b in e]
    assert [b for e in stream(first_epoch=3, epochs=2, steps_per_epoch=2) for b in e] == flat[6:]
    assert flat[:3] == uninterrupted[0] and flat[3:6] == uninterrupted[1]


def test_training_batches_carry_sample_weights_and_several_inputs():
    sw = np.linspace(0, 1, 10).astype("float32")
    dataset, steps = epoch_order.training_batches(
        arrays(sample_weight=sw), batch_size=10, shuffle=False, seed=0
    )
    x, y, w = next(iter(dataset))
    assert steps == 1
    np.testing.assert_array_equal(w.numpy(), sw)
    np.testing.assert_array_equal(x.numpy(), IDS)
    two_inputs = data.check_training_data([IDS, IDS * 10], IDS, None, None, {})
    (a, b), _ = next(iter(epoch_order.training_batches(two_inputs, batch_size=10, shuffle=True, seed=1)[0]))
    np.testing.assert_array_equal(b.numpy(), a.numpy() * 10)  # one permutation for every array
    policy = dataset.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_shared_seed_follows_numpy_seeding():
    strategy = tf.distribute.get_strategy()
    np.random.seed(3)
    first = data.shared_seed(strategy)
    np.random.seed(3)
    assert data.shared_seed(strategy) == first
    assert 0 <= first < 2**24


def test_split_validation_takes_the_last_fraction_like_keras():
    train, val = data.split_validation(arrays(sample_weight=np.ones(10)), 0.3)
    np.testing.assert_array_equal(train.x[:, 0], np.arange(7))
    np.testing.assert_array_equal(val.x[:, 0], [7, 8, 9])
    np.testing.assert_array_equal(val.y, [7, 8, 9])
    assert val.sample_weight.shape == (3,)


@pytest.mark.parametrize("split", [0.95, 0.999])
def test_split_validation_refuses_an_empty_side(split):
    with pytest.raises(DataError, match=f"validation_split={split} leaves no training examples out of 10"):
        data.split_validation(arrays(), split)


def test_dataset_fn_is_repeated():
    def dataset_fn(context):
        return tf.data.Dataset.from_tensor_slices(IDS).batch(context.get_per_replica_batch_size(5))

    distributed = data.distributed_from_function(tf.distribute.get_strategy(), dataset_fn)
    iterator = iter(distributed)
    seen = [int(v) for _ in range(4) for v in np.reshape(next(iterator), -1)]
    assert seen == list(range(10)) * 2


# --- where each worker writes -------------------------------------------------------


def file_callbacks(folder: Path) -> list:
    return [
        keras.callbacks.ModelCheckpoint(str(folder / "ckpt.keras")),
        keras.callbacks.CSVLogger(str(folder / "log.csv")),
        keras.callbacks.TensorBoard(str(folder / "tb")),
        keras.callbacks.EarlyStopping(),
    ]


def test_chief_keeps_the_users_paths(tmp_path):
    callbacks = file_callbacks(tmp_path)
    with WorkerPaths(is_chief=True) as paths:
        paths.redirect(callbacks)
        assert paths.temp_dir is None
        assert paths.write_path(tmp_path / "model.keras") == str(tmp_path / "model.keras")
        assert callbacks[0].filepath == str(tmp_path / "ckpt.keras")


def test_other_workers_write_to_a_temp_dir_that_is_removed(tmp_path):
    callbacks = file_callbacks(tmp_path)
    with WorkerPaths(is_chief=False, rank=3) as paths:
        temp = Path(paths.temp_dir)
        assert temp.is_dir() and temp.name.startswith(f"kerasfed-worker3-{os.getpid()}-")
        paths.redirect(callbacks)
        redirected = [callbacks[0].filepath, callbacks[1].filename, callbacks[2].log_dir]
        assert [Path(p).name for p in redirected] == ["ckpt.keras", "log.csv", "tb"]
        assert all(Path(p).is_relative_to(temp) for p in redirected)
        assert len({Path(p).parent for p in redirected}) == 3  # same names could not collide
        save = paths.write_path(tmp_path / "model.keras")
        assert Path(save).is_relative_to(temp) and Path(save).name == "model.keras"
        Path(save).write_text("x")
    assert not temp.exists()
    assert callbacks[0].filepath == str(tmp_path / "ckpt.keras")
    assert callbacks[1].filename == str(tmp_path / "log.csv")
    assert callbacks[2].log_dir == str(tmp_path / "tb")


def test_paths_are_restored_and_removed_after_an_exception(tmp_path):
    callbacks = file_callbacks(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with WorkerPaths(is_chief=False) as paths:
            paths.redirect(callbacks)
            temp = Path(paths.temp_dir)
            raise RuntimeError("boom")
    assert not temp.exists()
    assert callbacks[0].filepath == str(tmp_path / "ckpt.keras")


def test_dirs_of_killed_workers_are_removed_by_the_next_worker(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)  # exited: like a worker killed with SIGKILL
    root = Path(tempfile.gettempdir())
    dead = root / f"kerasfed-worker1-{dead_pid}-test"
    living = root / f"kerasfed-worker1-{os.getpid()}-test"
    try:
        for folder in (dead, living):
            (folder / "1").mkdir(parents=True)
        with WorkerPaths(is_chief=False, rank=1):
            assert not dead.exists()
            assert living.exists()  # its process still runs
    finally:
        shutil.rmtree(dead, ignore_errors=True)
        shutil.rmtree(living, ignore_errors=True)


# --- backups ---------------------------------------------------------------------


def test_backup_callback_on_the_chief_is_keras_own(tmp_path):
    callback = backup_callback(tmp_path / "b", write_dir=None)
    assert type(callback) is keras.callbacks.BackupAndRestore
    user = keras.callbacks.BackupAndRestore(str(tmp_path / "b"))
    assert adapt_user_backup(user, write_dir=None) is user


@pytest.mark.skipif(KERAS_3, reason="Keras 2's BackupAndRestore lets only the chief write by itself")
def test_keras_2_backup_is_left_to_keras(tmp_path):
    user = keras.callbacks.BackupAndRestore(str(tmp_path / "b"))
    assert adapt_user_backup(user, write_dir=str(tmp_path / "w")) is user
    assert type(backup_callback(tmp_path / "b", write_dir=str(tmp_path / "w"))) is keras.callbacks.BackupAndRestore


class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("crash")


@pytest.mark.skipif(not KERAS_3, reason="only Keras 3's BackupAndRestore needs the worker variant")
def test_keras_3_worker_backup_reads_the_chiefs_and_writes_its_own(tmp_path):
    x, y = dist_common.make_data(32)
    backup, own = tmp_path / "backup", tmp_path / "own"
    own.mkdir()
    chief = backup_callback(backup, write_dir=None)
    with pytest.raises(RuntimeError, match="crash"):
        dist_common.build_model().fit(x, y, epochs=4, verbose=0, shuffle=False, callbacks=[chief, Crash()])
    chief_files = sorted(os.listdir(backup))
    assert "latest.weights.h5" in chief_files

    worker = adapt_user_backup(keras.callbacks.BackupAndRestore(str(backup)), write_dir=str(own))
    assert type(worker).__name__ == "_WorkerBackupAndRestore"
    begun = []
    recorder = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: begun.append(epoch))
    dist_common.build_model().fit(x, y, epochs=4, verbose=0, shuffle=False, callbacks=[worker, recorder])
    assert begun == [2, 3]  # restored from the chief's backup
    assert sorted(os.listdir(backup)) == chief_files  # neither written nor deleted
    assert "latest.weights.h5" in os.listdir(own)


@pytest.mark.parametrize("double_checkpoint", [False, True])
def test_resume_epoch_reads_the_epoch_keras_resumes_at(tmp_path, double_checkpoint):
    x, y = dist_common.make_data(32)
    backup = backup_callback(tmp_path / "b", write_dir=None)
    if KERAS_3:
        backup.double_checkpoint = double_checkpoint
    assert resume_epoch([backup]) is None  # nothing saved yet
    with pytest.raises(RuntimeError, match="crash"):
        dist_common.build_model().fit(x, y, epochs=4, verbose=0, callbacks=[backup, Crash()])
    assert resume_epoch([keras.callbacks.History(), backup]) == 2

    begun = []
    recorder = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: begun.append(epoch))
    dist_common.build_model().fit(x, y, epochs=3, verbose=0, callbacks=[backup_callback(tmp_path / "b", write_dir=None), recorder])
    assert begun == [2]  # Keras agrees
    assert resume_epoch([backup_callback(tmp_path / "b", write_dir=None)]) is None  # deleted after success


@pytest.mark.skipif(not KERAS_3, reason="Keras 3's double_checkpoint keeps a previous copy")
def test_resume_epoch_falls_back_to_keras_3s_previous_copy(tmp_path):
    backup = tmp_path / "b"
    backup.mkdir()
    (backup / "training_metadata.json").write_text("{not json")
    (backup / "training_metadata.json.bkp").write_text('{"epoch": 3, "batch": 0}')
    assert resume_epoch([keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True)]) == 3


def test_resume_epoch_ignores_batch_wise_backups(tmp_path):
    x, y = dist_common.make_data(32)
    every_batch = keras.callbacks.BackupAndRestore(str(tmp_path / "b"), save_freq=1)
    with pytest.raises(RuntimeError, match="crash"):
        dist_common.build_model().fit(x, y, epochs=4, verbose=0, callbacks=[every_batch, Crash()])
    assert resume_epoch([every_batch]) is None


def test_first_epoch_check_warns_when_keras_resumes_elsewhere():
    check = epoch_order.FirstEpochCheck(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check.on_epoch_begin(2)
        check.on_epoch_begin(3)
    other = epoch_order.FirstEpochCheck(2)
    with pytest.warns(UserWarning, match="prepared the training batches from epoch 2, but training resumed at epoch 1"):
        other.on_epoch_begin(1)


def test_the_shuffle_seed_is_kept_next_to_the_backup(tmp_path):
    callbacks = [keras.callbacks.History(), keras.callbacks.BackupAndRestore(str(tmp_path / "b"))]
    assert saved_seed(callbacks) is None
    save_seed(callbacks, 1234)
    assert saved_seed(callbacks) == 1234
    assert os.listdir(tmp_path / "b") == ["kerasfed_order.json"]  # no temporary file left
    (tmp_path / "b" / "kerasfed_order.json").write_text("{")
    assert saved_seed(callbacks) is None  # unreadable: a new seed is drawn
    save_seed([keras.callbacks.BackupAndRestore(str(tmp_path / "c"), save_freq=2)], 1)
    assert not (tmp_path / "c").exists()  # batch-wise backups are not resumed in order
