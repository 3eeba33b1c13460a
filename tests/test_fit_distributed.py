"""fit_distributed in one process: default and one-device strategies here, MirroredStrategy
over two logical CPUs in a child process (tests/scripts/dist_mirrored.py), and every
argument error. Multi-worker runs are in test_multi_worker.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kerasfed._compat import KERAS_3, keras
from kerasfed._keras_model import ModelError, ModelTypeError
from kerasfed.distributed.arguments import FitArgumentError
from kerasfed.errors import ArgumentTypeError, CallbacksTypeError, SignatureError, VerboseError
from kerasfed.distributed.data import DataError, DataTypeError
from kerasfed.distributed.fit import fit_distributed
from kerasfed.distributed.strategies import StrategyError
from kerasfed.distributed.tf_config import TFConfigError

pytestmark = pytest.mark.distributed

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import dist_common  # noqa: E402

X, Y = dist_common.make_data(64)


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


def plain_fit(epochs: int = 2, **kwargs) -> keras.Model:
    model = dist_common.build_model()
    model.fit(X, Y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, **kwargs)
    return model


def assert_same_weights(actual: keras.Model, expected: keras.Model, atol: float = 1e-6) -> None:
    for a, e in zip(actual.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(a, e, rtol=0, atol=atol)


# --- training ---------------------------------------------------------------


def test_default_strategy_trains_the_given_model_as_fit_does():
    model = dist_common.build_model()
    history = fit_distributed(model, X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert history.model is model  # no distribution: nothing to rebuild
    assert_same_weights(model, plain_fit(), atol=0)
    assert sorted(history.history) == ["accuracy", "loss"]
    assert history.params["epochs"] == 2


def test_model_function_is_called_and_its_model_trained():
    history = fit_distributed(dist_common.build_model, X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert_same_weights(history.model, plain_fit(), atol=0)


def test_one_device_rebuilds_the_model_and_leaves_the_original_usable():
    original = dist_common.build_model()
    history = fit_distributed(
        original, X, Y, strategy="one_device", batch_size=16, epochs=2, shuffle=False, verbose=0
    )
    assert history.model is not original
    assert isinstance(history.model.distribute_strategy, tf.distribute.OneDeviceStrategy)
    assert_same_weights(history.model, plain_fit())
    for w, w0 in zip(original.get_weights(), dist_common.initial_weights()):
        np.testing.assert_array_equal(w, w0)
    assert np.isfinite(original.evaluate(X, Y, verbose=0)[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sample_weight=np.linspace(0.5, 2.0, 64).astype("float32"), validation_split=0.25, initial_epoch=1),
        dict(class_weight={0: 1.0, 1: 2.0, 2: 0.5}, validation_freq=2),  # Keras 3: not with sample_weight
    ],
    ids=["sample_weight-validation_split-initial_epoch", "class_weight-validation_freq"],
)
def test_keras_fit_keywords_pass_through(kwargs):
    history = fit_distributed(
        dist_common.build_model(), X, Y, batch_size=16, epochs=3, shuffle=False, verbose=0, **kwargs
    )
    model = dist_common.build_model()
    expected = model.fit(X, Y, batch_size=16, epochs=3, shuffle=False, verbose=0, **kwargs)
    assert_same_weights(history.model, model, atol=0)
    assert history.history.keys() == expected.history.keys()
    np.testing.assert_array_equal(history.history["val_loss"] if "val_loss" in history.history else [],
                                  expected.history.get("val_loss", []))


def test_dataset_and_dataset_fn_on_the_default_strategy():
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)
    history = fit_distributed(dist_common.build_model(), dataset, epochs=2, verbose=0, validation_data=dataset)
    assert_same_weights(history.model, plain_fit())
    assert len(history.history["val_loss"]) == 2

    def dataset_fn(context):
        return tf.data.Dataset.from_tensor_slices((X, Y)).batch(context.get_per_replica_batch_size(16))

    history = fit_distributed(
        dist_common.build_model(), dataset_fn, epochs=2, steps_per_epoch=4, verbose=0,
        validation_data=dataset_fn, validation_steps=4,
    )
    assert_same_weights(history.model, plain_fit())
    assert len(history.history["val_loss"]) == 2


def test_save_path_saves_the_trained_model(tmp_path):
    path = tmp_path / "sub" / "model.keras"
    history = fit_distributed(dist_common.build_model(), X, Y, batch_size=16, epochs=1, verbose=0, save_path=path)
    loaded = keras.models.load_model(path)
    assert_same_weights(loaded, history.model, atol=0)


@pytest.mark.skipif(KERAS_3, reason="Keras 3 saves whole models only as .keras")
def test_save_path_without_extension_is_a_savedmodel_in_keras_2(tmp_path):
    fit_distributed(dist_common.build_model(), X, Y, epochs=1, verbose=0, save_path=tmp_path / "saved")
    assert (tmp_path / "saved" / "saved_model.pb").exists()


class Crash(keras.callbacks.Callback):
    """Fails at the end of an epoch, like a worker dying there."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch
        self.begun: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("crash")


def test_backup_dir_resumes_after_the_last_completed_epoch(tmp_path):
    backup = tmp_path / "backup"
    first = Crash(epoch=1)
    with pytest.raises(RuntimeError, match="crash"):
        fit_distributed(
            dist_common.build_model(), X, Y, batch_size=16, epochs=4, shuffle=False, verbose=0,
            backup_dir=backup, callbacks=[first],
        )
    second = Crash(epoch=-1)
    history = fit_distributed(
        dist_common.build_model(), X, Y, batch_size=16, epochs=4, shuffle=False, verbose=0,
        backup_dir=backup, callbacks=[second],
    )
    assert first.begun == [0, 1] and second.begun == [2, 3]
    assert_same_weights(history.model, plain_fit(epochs=4))


@pytest.mark.parametrize("steps_per_epoch", [None, 3])
def test_a_resumed_shuffled_run_equals_an_uninterrupted_one(tmp_path, steps_per_epoch):
    # Keras draws epoch e's shuffle from a generator that restarts with the process,
    # so a plain resumed run would repeat epoch 0's order; fit_distributed's order
    # depends on (seed, epoch) only. steps_per_epoch=3 cuts passes over the 4 batches.
    kwargs = dict(batch_size=16, epochs=4, shuffle=True, verbose=0, steps_per_epoch=steps_per_epoch)

    def run(backup, callbacks):
        keras.utils.set_random_seed(5)  # as a user script does, before and after the restart
        return fit_distributed(dist_common.build_model(), X, Y, backup_dir=backup, callbacks=callbacks, **kwargs)

    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "resumed", [Crash(epoch=1)])
    second = Crash(epoch=-1)
    resumed = run(tmp_path / "resumed", [second]).model
    assert second.begun == [2, 3]
    uninterrupted = run(tmp_path / "uninterrupted", []).model
    assert_same_weights(resumed, uninterrupted)

    # Unseeded, the restarted script draws another seed: the backup's is used.
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "unseeded", [Crash(epoch=1)])
    np.random.seed(None)
    resumed = fit_distributed(dist_common.build_model(), X, Y, backup_dir=tmp_path / "unseeded", **kwargs).model
    assert_same_weights(resumed, uninterrupted)
    if steps_per_epoch is None:  # and the examples were shuffled
        assert not np.allclose(resumed.get_weights()[0], plain_fit(epochs=4).get_weights()[0], atol=1e-4)


def test_mirrored_over_two_logical_cpus_matches_fit_on_one_device(tmp_path):
    out = tmp_path / "mirrored.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "dist_mirrored.py"), str(out)],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["replicas"] == 2 and [d[-5:] for d in r["devices"]] == ["CPU:0", "CPU:1"]
    tolerance = 1e-6
    for key in ("outside_diff", "outside_loss_diff", "function_diff", "inside_diff", "dataset_diff",
                "dataset_val_loss_diff", "dataset_fn_diff", "sample_weight_diff", "sample_weight_val_loss_diff"):
        assert r[key] < tolerance, (key, r[key])
    assert r["outside_is_rebuilt"] and r["outside_trained_strategy_is_mirrored"]
    assert r["original_unchanged"] and r["original_usable_loss"] == pytest.approx(r["fresh_loss"])
    assert r["inside_is_same"]
    assert r["small_batch_warning"]


# --- argument errors: all raised before any strategy or training ------------------


def not_compiled() -> keras.Model:
    return keras.Sequential([keras.Input((dist_common.FEATURES,)), keras.layers.Dense(1)])


DATASET = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)


def dataset_fn(context):
    return DATASET


MODEL_ERRORS = [
    ("not a model", {}, ModelTypeError, "expected `model` to be a compiled keras.Model"),
    (not_compiled(), {}, ModelError, "is not compiled"),
    (lambda: "nope", {}, ModelTypeError, "must return a compiled keras.Model"),
]


@pytest.mark.parametrize("model, kwargs, error, match", MODEL_ERRORS)
def test_model_errors(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_distributed(model, X, Y, verbose=0, **kwargs)


ARGUMENT_ERRORS = [
    ({"strategy": "hogwild"}, StrategyError, r"Unknown strategy: 'hogwild'. It needs to be one of \['auto', 'default'"),
    ({"strategy": 3}, StrategyError, "Expected `strategy` to be one of"),
    ({"strategy": "multi_worker"}, StrategyError, "needs TF_CONFIG.*kerasfed launch --workers"),
    ({"epochs": 0}, FitArgumentError, "Expected `epochs` to be an int of at least 1. Received: epochs=0"),
    ({"epochs": "3"}, ArgumentTypeError, "epochs='3' of type str"),
    ({"batch_size": 0}, FitArgumentError, "Expected `batch_size` .* Received: batch_size=0"),
    ({"batch_size": 2.5}, ArgumentTypeError, "batch_size=2.5 of type float"),
    ({"batch_size": True}, ArgumentTypeError, "Received: batch_size=True"),
    ({"verbose": 3}, VerboseError, r"^fit_distributed: expected `verbose` to be one of \['auto', 0, 1, 2\]"),
    ({"learning_rate": 0.1}, SignatureError, r"unexpected keyword argument\(s\) \['learning_rate'\]"),
    ({"validation_split": 1.5}, FitArgumentError, r"`validation_split` to be a float in \[0, 1\)"),
    ({"shuffle": "yes"}, FitArgumentError, 'Expected `shuffle` to be True, False or "batch"'),
    ({"callbacks": keras.callbacks.History()}, CallbacksTypeError, "Wrap a single callback in a list"),
    ({"callbacks": ["cb"]}, CallbacksTypeError, r"callbacks\[0\] is 'cb' of type str"),
    (
        {"callbacks": [keras.callbacks.BackupAndRestore("/tmp/x")], "backup_dir": "/tmp/y"},
        FitArgumentError, "already holds one",
    ),
    ({"backup_dir": 7}, FitArgumentError, "Expected `backup_dir` to be a path"),
    ({"save_path": ""}, FitArgumentError, "Expected `save_path` to be a path"),
    ({"y": Y[:10]}, DataError, "different numbers of examples: x has 64 rows, y has 10 rows"),
    ({"sample_weight": np.ones(3)}, DataError, "sample_weight has 3 rows"),
    ({"x": None}, DataError, "needs training data"),
    ({"x": [1, 2, 3]}, DataTypeError, r"Expected `x` to be NumPy arrays.*np.asarray"),
    ({"x": (i for i in range(3))}, DataTypeError, "Expected `x` to be NumPy arrays.*generator"),
    ({"x": np.array(1.0)}, DataError, "`x` holds a scalar"),
    ({"x": X[:0], "y": Y[:0]}, DataError, r"`x` has no examples \(0 rows\)"),
    ({"y": None, "sample_weight": np.ones(64)}, DataError, "`sample_weight` needs targets"),
    ({"y": [1, 2]}, DataTypeError, "Expected `y` to be NumPy arrays"),
    ({"x": DATASET, "y": Y}, DataError, "`y` must be None when `x` is a tf.data.Dataset"),
    ({"x": DATASET, "y": None, "sample_weight": np.ones(64)}, DataError, "`sample_weight` must be None"),
    ({"x": DATASET, "y": None, "batch_size": 16}, DataError, r"`batch_size` must be None when `x` is a tf.data.Dataset: batch the dataset"),
    ({"x": DATASET, "y": None, "validation_split": 0.2}, DataError, "`validation_split` only works with in-memory arrays"),
    ({"x": dataset_fn, "y": None, "steps_per_epoch": 4, "batch_size": 16}, DataError, "get_per_replica_batch_size"),
    ({"x": dataset_fn, "y": None}, DataError, "`steps_per_epoch` is required when `x` is a dataset_fn"),
    ({"validation_data": (X, Y, X, Y)}, DataError, "Received a tuple of length 4"),
    ({"validation_data": (X, Y[:3])}, DataError, r"validation_data\[0\] \(x_val\) has 64 rows, validation_data\[1\] \(y_val\) has 3"),
    ({"validation_data": (DATASET, None)}, DataTypeError, r"Expected `validation_data\[0\]` to be NumPy arrays"),
    ({"validation_data": "val.csv"}, DataTypeError, "Expected `validation_data` to be a tf.data.Dataset or a dataset_fn"),
    ({"validation_data": dataset_fn}, DataError, "`validation_steps` is required"),
]


@pytest.mark.parametrize("kwargs, error, match", ARGUMENT_ERRORS, ids=[repr(k)[:60] for k, _, _ in ARGUMENT_ERRORS])
def test_argument_errors(kwargs, error, match):
    kwargs = {"x": X, "y": Y, "verbose": 0, **kwargs}
    model = dist_common.build_model()
    with pytest.raises(error, match=match):
        fit_distributed(model, **kwargs)
    for w, w0 in zip(model.get_weights(), dist_common.initial_weights()):
        np.testing.assert_array_equal(w, w0)  # nothing trained


class Subclassed(keras.Model):
    """A subclassed model whose constructor arguments have no config."""

    def __init__(self, units, activation_fn):
        super().__init__()
        self.dense = keras.layers.Dense(units)
        self.activation_fn = activation_fn

    def call(self, inputs):
        return self.activation_fn(self.dense(inputs))


def test_a_model_that_cannot_be_rebuilt_in_the_scope():
    model = Subclassed(3, lambda t: 2 * t)
    model(X[:1])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ModelError, match="(?s)cannot rebuild the model .subclassed.*pass a zero-argument function"):
        fit_distributed(model, X, np.zeros((64, 3), "float32"), strategy="one_device", verbose=0)


def test_invalid_tf_config_is_reported(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 5}}')
    with pytest.raises(TFConfigError, match=r'TF_CONFIG\["task"\]\["index"\] = 5 is outside'):
        fit_distributed(dist_common.build_model(), X, Y, verbose=0)


@pytest.mark.skipif(not KERAS_3, reason="Keras 2 also saves SavedModel directories")
def test_keras_3_save_path_needs_keras_extension():
    with pytest.raises(FitArgumentError, match="must end in .keras"):
        fit_distributed(dist_common.build_model(), X, Y, verbose=0, save_path="/tmp/model")


def test_distributed_dataset_is_refused():
    distributed = tf.distribute.MirroredStrategy(["/cpu:0"]).experimental_distribute_dataset(DATASET)
    with pytest.raises(DataTypeError, match="already a distributed dataset"):
        fit_distributed(dist_common.build_model(), distributed, verbose=0)


def test_dataset_fn_must_return_a_dataset():
    with pytest.raises(DataTypeError, match="dataset_fn must return a tf.data.Dataset.*It returned ndarray"):
        fit_distributed(dist_common.build_model(), lambda context: X, steps_per_epoch=2, verbose=0)
