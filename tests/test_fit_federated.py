"""Tests for kerasfed.federated.fit_federated, against plain Keras and numpy references.

Every fit_federated call traces a TFF process (seconds), so the digits training
is shared by several tests through a module-scoped fixture, and the other tests
use a tiny model.
"""

from __future__ import annotations

import csv
import glob
import os

import numpy as np
import pytest

from kerasfed._compat import keras
from kerasfed.federated.algorithms import ALGORITHM_NAMES
from kerasfed.federated.client_metrics import spread
from kerasfed.federated.clients import ClientData, sample_clients
from kerasfed.federated.fit import BATCHNORM_WARNING, fit_federated
from kerasfed.federated.partition import partition
from kerasfed.federated.progress import quiet_tensorflow

pytestmark = pytest.mark.federated

DIGITS_ROUNDS = 30
DIGITS_EVERY = 5
DIGITS_SEED = 3


def _tiny_model(lr: float = 0.1, seed: int = 0, batchnorm: bool = False) -> keras.Model:
    rng = np.random.default_rng(seed)
    layers = [keras.Input((4,)), keras.layers.Dense(6, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(3, activation="softmax"))
    model = keras.Sequential(layers)
    model.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype(np.float32) if w.trainable else w.numpy()
         for w in model.weights]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _tiny_clients(sizes=(3, 5, 8), seed=0, shift=0.0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        f"c{i}": (
            rng.normal(shift, 1.0, size=(n, 4)).astype(np.float32),
            rng.integers(0, 3, size=n).astype(np.int64),
        )
        for i, n in enumerate(sizes)
    }


def _keras_copy(model: keras.Model, weights) -> keras.Model:
    copy = keras.models.clone_model(model)
    copy.set_weights(weights)
    copy.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return copy


def _assert_weights_close(actual, expected, atol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=atol)


# -- Exact references --------------------------------------------------------------------


def test_one_client_one_round_equals_one_keras_step(capfd):
    model = _tiny_model()
    initial = model.get_weights()
    x, y = _tiny_clients(sizes=(11,))["c0"]
    reference = _keras_copy(model, initial)
    reference_loss = reference.train_on_batch(x, y)

    history = fit_federated(model, {"only": (x, y)}, rounds=1, batch_size=len(x), seed=0, verbose=0)

    _assert_weights_close(model.get_weights(), reference.get_weights())
    assert history.history["loss"] == [pytest.approx(reference_loss, rel=1e-5)]
    assert history.model is model
    assert capfd.readouterr().out == ""  # verbose=0 prints nothing


def test_round_is_example_weighted_mean_of_clients_trained_alone(capfd):
    model = _tiny_model()
    initial = model.get_weights()
    clients = _tiny_clients(sizes=(3, 5, 8))
    trained, sizes = [], []
    for x, y in clients.values():
        reference = _keras_copy(model, initial)
        reference.train_on_batch(x, y)  # batch_size >= every client: one full-batch step
        trained.append(reference.get_weights())
        sizes.append(len(x))
    expected = [
        np.average(np.stack(ws), axis=0, weights=np.array(sizes, np.float64))
        for ws in zip(*trained)
    ]

    history = fit_federated(model, clients, rounds=1, batch_size=8, seed=0, verbose=0)

    _assert_weights_close(model.get_weights(), expected)
    assert history.history["num_examples"] == [16]
    assert capfd.readouterr().out == ""


# -- Digits: accuracy, evaluation, history, callbacks --------------------------------------


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events, self.keys, self.models = [], [], set()
        self.last_weights = None

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("end", epoch))
        self.keys.append(set(logs))
        self.models.add(id(self.model))
        self.last_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        self.events.append("train_end")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from sklearn.datasets import load_digits  # noqa: PLC0415

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]
    clients = partition(x_train, y_train, 30, "dirichlet", seed=0, alpha=0.5)
    evaluation_clients = partition(x_test, y_test, 4, "iid", seed=0)

    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
         keras.layers.Dense(10, activation="softmax")]
    )
    rng = np.random.default_rng(0)  # Glorot-uniform, reproducibly
    shapes = [tuple(w.shape) for w in model.weights]
    model.set_weights([
        (rng.uniform(-1, 1, s) * np.sqrt(6 / sum(s))).astype(np.float32) if len(s) == 2
        else np.zeros(s, np.float32)
        for s in shapes
    ])
    model.compile(keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    out = tmp_path_factory.mktemp("digits")
    recorder = _Recorder()
    callbacks = [
        recorder,
        keras.callbacks.CSVLogger(str(out / "rounds.csv")),
        keras.callbacks.ModelCheckpoint(str(out / "weights_{epoch:02d}.h5"), save_weights_only=True),
        keras.callbacks.TensorBoard(log_dir=str(out / "tb")),
    ]
    history = fit_federated(
        model, clients, rounds=DIGITS_ROUNDS, clients_per_round=10, local_epochs=2,
        batch_size=16, validation_data=(x_test, y_test), evaluate_every=DIGITS_EVERY,
        evaluation_clients=evaluation_clients, callbacks=callbacks, seed=DIGITS_SEED,
        verbose=0,
    )
    return dict(
        history=history, model=model, clients=clients, x_test=x_test, y_test=y_test,
        recorder=recorder, out=out,
    )


def test_digits_reaches_90_percent(digits_run):
    model, history = digits_run["model"], digits_run["history"]
    loss, accuracy = model.evaluate(digits_run["x_test"], digits_run["y_test"], verbose=0)
    assert accuracy >= 0.90
    # The last round is always evaluated, with the weights the model ends with.
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history.history["val_loss"][-1] == pytest.approx(loss, rel=1e-5)


def test_history_has_one_value_per_round_and_evaluations_per_evaluate_every(digits_run):
    h = digits_run["history"].history
    per_round = ["loss", "accuracy", "num_examples", "round_seconds", "bytes_to_clients",
                 "bytes_from_clients"]
    evaluated = ["val_loss", "val_accuracy", "fed_eval_loss", "fed_eval_accuracy",
                 *spread("fed_eval_", {"any": {"loss": 0.0, "accuracy": 0.0}})]
    assert sorted(h) == sorted(per_round + evaluated)
    for key in per_round:
        assert len(h[key]) == DIGITS_ROUNDS, key
    for key in evaluated:
        assert len(h[key]) == DIGITS_ROUNDS // DIGITS_EVERY, key
    assert digits_run["history"].epoch == list(range(DIGITS_ROUNDS))
    assert digits_run["history"].params["seed"] == DIGITS_SEED
    # engine="auto" is the TFF engine where TFF is installed.
    assert digits_run["history"].params["engine"] == "tff"
    assert digits_run["history"].params["engine_form"].startswith("TFF engine")
    assert all(s > 0 for s in h["round_seconds"])


def test_num_examples_counts_sampled_clients_times_local_epochs(digits_run):
    clients: ClientData = digits_run["clients"]
    expected = [
        2 * sum(clients.num_examples(c) for c in sample_clients(clients.client_ids, 10, r, DIGITS_SEED))
        for r in range(DIGITS_ROUNDS)
    ]
    assert digits_run["history"].history["num_examples"] == expected


def test_federated_evaluation_equals_keras_evaluate_on_the_same_examples(digits_run):
    # The evaluation clients partition exactly the validation set, so TFF's
    # example-weighted federated metrics must equal Keras' central ones.
    h = digits_run["history"].history
    np.testing.assert_allclose(h["fed_eval_accuracy"], h["val_accuracy"], atol=1e-6)
    np.testing.assert_allclose(h["fed_eval_loss"], h["val_loss"], rtol=1e-4)


def test_each_evaluation_clients_values_make_up_the_pooled_ones(digits_run):
    # Each client's accuracy weighted by its examples is the pooled accuracy; the
    # spread keys are numpy.percentile over the clients; TFF has no training values.
    history, h = digits_run["history"], digits_run["history"].history
    sizes = {cid: len(x) for cid, (x, _) in
             partition(digits_run["x_test"], digits_run["y_test"], 4, "iid", seed=0).items()}
    evaluated = [r for r in history.client_metrics if r]
    assert len(history.client_metrics) == DIGITS_ROUNDS
    assert len(evaluated) == DIGITS_ROUNDS // DIGITS_EVERY
    for i, per_client in enumerate(evaluated):
        assert sorted(per_client) == sorted(sizes)
        pooled = sum(sizes[c] * v["accuracy"] for c, v in per_client.items()) / sum(sizes.values())
        assert pooled == pytest.approx(h["fed_eval_accuracy"][i], abs=1e-6)
        accuracies = [v["accuracy"] for v in per_client.values()]
        assert h["fed_eval_accuracy_p10"][i] == pytest.approx(np.percentile(accuracies, 10))
    assert history.client_train_metrics == [{}] * DIGITS_ROUNDS


def test_bytes_are_the_dense_model_payload_per_sampled_client(digits_run):
    h = digits_run["history"].history
    weights_bytes = 4 * digits_run["model"].count_params()  # float32
    clients = 10
    for sent, received in zip(h["bytes_to_clients"], h["bytes_from_clients"]):
        # The model, plus a few scalars (learning rate down; weight and metrics up).
        assert clients * weights_bytes <= sent <= clients * (weights_bytes + 64)
        assert clients * weights_bytes <= received <= clients * (weights_bytes + 128)


def test_callbacks_see_rounds_as_epochs_with_the_global_model(digits_run):
    recorder, model = digits_run["recorder"], digits_run["model"]
    expected = ["train_begin"]
    for r in range(DIGITS_ROUNDS):
        expected += [("begin", r), ("end", r)]
    assert recorder.events == expected + ["train_end"]
    assert recorder.models == {id(model)}
    _assert_weights_close(recorder.last_weights, model.get_weights(), atol=0)
    has_val = ["val_loss" in keys for keys in recorder.keys]
    assert has_val == [(r + 1) % DIGITS_EVERY == 0 for r in range(DIGITS_ROUNDS)]


def test_csv_logger_modelcheckpoint_and_tensorboard_write_their_files(digits_run):
    out = digits_run["out"]
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(DIGITS_ROUNDS))
    assert float(rows[-1]["loss"]) == pytest.approx(digits_run["history"].history["loss"][-1])
    assert os.path.exists(out / f"weights_{DIGITS_ROUNDS:02d}.h5")
    saved = keras.models.clone_model(digits_run["model"])
    saved.load_weights(str(out / f"weights_{DIGITS_ROUNDS:02d}.h5"))
    _assert_weights_close(saved.get_weights(), digits_run["model"].get_weights(), atol=0)
    assert glob.glob(str(out / "tb" / "train" / "events.out.tfevents.*"))


# -- Callbacks controlling training --------------------------------------------------------


def test_early_stopping_stops_training():
    model = _tiny_model()
    # An improvement would have to be 1e9: stops after the second round.
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=1)
    history = fit_federated(model, _tiny_clients(), rounds=10, callbacks=[stop], seed=0, verbose=0)
    assert len(history.history["loss"]) == 2
    assert stop.stopped_epoch == 1


def test_callback_exception_propagates_and_the_worker_is_stopped():
    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom in round 2")

    with pytest.raises(RuntimeError, match="boom in round 2"):
        fit_federated(_tiny_model(), _tiny_clients(), rounds=4, callbacks=[Boom()], verbose=0)
    # The autouse fixture fails this test if TFF's worker process is still alive.


@pytest.mark.parametrize("verbose", [1, 2])
def test_verbose_output(capfd, verbose):
    fit_federated(_tiny_model(), _tiny_clients(), rounds=2, seed=0, verbose=verbose)
    out, err = capfd.readouterr()
    assert "tensorflow/core/grappler" not in err  # TF's native INFO logs are dropped
    # One line first says which engine runs the rounds (the default here: TFF).
    assert out.startswith("fit_federated: TFF engine")
    if verbose == 2:
        lines = out.strip().splitlines()[1:]
        assert [line.split(" - ")[0] for line in lines] == ["Round 1/2", "Round 2/2"]
        assert "loss: " in lines[0] and "accuracy: " in lines[0]
    else:
        assert "fit_federated" in out and "2/2" in out and "loss: " in out


# -- Repeated calls, the user's model, BatchNorm -------------------------------------------


def test_repeated_calls_leave_eager_keras_models_usable(tmp_path):
    """The NOTES scenario: an eager model made between two process builds still works."""
    model = _tiny_model()
    clients = _tiny_clients()
    x, y = clients["c2"]
    fit_federated(model, clients, rounds=1, seed=0, verbose=0)
    other = _tiny_model(seed=1)
    before = other.evaluate(x, y, verbose=0)
    for algorithm in ALGORITHM_NAMES:  # each call traces a new TFF process
        fit_federated(model, clients, rounds=1, algorithm=algorithm, seed=0, verbose=0)
        assert other.evaluate(x, y, verbose=0) == before
    other.fit(x, y, epochs=1, verbose=0)

    model.evaluate(x, y, verbose=0)
    predictions = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), predictions, rtol=1e-6)


def test_batchnorm_warns_and_its_moving_statistics_stay_as_they_were():
    model = _tiny_model(batchnorm=True)
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    gamma = bn.gamma.numpy()
    with pytest.warns(UserWarning, match="never updates their moving mean and variance"):
        fit_federated(model, _tiny_clients(shift=3.0), rounds=2, seed=0, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), var)
    assert not np.allclose(bn.gamma.numpy(), gamma)  # trainable parameters do train
    assert "BatchNormalization" in BATCHNORM_WARNING


def test_non_finite_updates_warn_and_keep_the_weights():
    model = _tiny_model(lr=1e38)  # diverges within a few local steps
    before = model.get_weights()
    with pytest.warns(RuntimeWarning, match="round 1: every client's update had NaN or infinite"):
        history = fit_federated(
            model, _tiny_clients(), rounds=1, local_epochs=3, batch_size=2, seed=0, verbose=0
        )
    _assert_weights_close(model.get_weights(), before, atol=0)
    assert np.isnan(history.history["loss"][0]) and history.history["num_examples"] == [0]


def test_quiet_tensorflow_drops_native_info_and_warning_lines_only(capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with quiet_tensorflow():
        os.write(2, b"2026-01-01 10:00:00.000001: I tensorflow/core/grappler/x.cc:66] info\n")
        os.write(2, b"2026-01-01 10:00:00.000002: W tensorflow/core/y.cc:1] warning\n")
        os.write(2, b"W0101 10:00:00.000003 1234 grpc.cc:9] absl warning\n")
        os.write(2, b"2026-01-01 10:00:00.000004: E tensorflow/core/z.cc:2] error\n")
        os.write(2, b"a user's own line\n")
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "2026-01-01 10:00:00.000004: E tensorflow/core/z.cc:2] error",
        "a user's own line",
    ]
