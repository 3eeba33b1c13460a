"""Each client's own training metrics (native engine) against Keras ``fit`` on that client.

With one local epoch and no shuffling, a client's local training is ``model.fit``
on its examples from the round's global weights, so its training loss and
metrics equal that fit's epoch values (both are taken at each step's weights
before the step). Both forms, sample weights, weighted metrics, two outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import keras
from kerasfed.federated.engines.native import engine as native
from kerasfed.federated.engines.native.client_train_metrics import has_client_values

pytestmark = pytest.mark.native

SIZES = (7, 12, 5)


def _clients(weighted: bool):
    rng = np.random.default_rng(0)
    out = {}
    for i, n in enumerate(SIZES):
        x = rng.normal(size=(n, 4)).astype("float32")
        y = rng.integers(0, 3, n).astype("int32")
        out[f"c{i}"] = (x, y, rng.uniform(0.5, 2.0, n).astype("float32")) if weighted else (x, y)
    return out


def _model(weighted: bool):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], weighted_metrics=["accuracy"] if weighted else None)
    return model


def _two_output_model():
    keras.utils.set_random_seed(2)
    inp = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, {"cls": keras.layers.Dense(3, activation="softmax", name="cls")(hidden),
                              "reg": keras.layers.Dense(1, name="reg")(hidden)})
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5},
                  metrics={"cls": ["accuracy"], "reg": ["mae"]})
    return model


def _round_results(monkeypatch, form: str):
    """Captures the engine's RoundResults, with the engine in ``form``."""
    monkeypatch.setattr(native, "_choose_form", lambda model, requested: (form, "test"))
    results = []
    train_round = native.NativeEngine.train_round

    def spy(self, state, clients, round_num, **kwargs):
        state, result = train_round(self, state, clients, round_num, **kwargs)
        results.append(result)
        return state, result

    monkeypatch.setattr(native.NativeEngine, "train_round", spy)
    return results


def _keras_epoch(make_model, start, data, batch_size):
    model = make_model()
    model.set_weights(start)
    x, y, *w = data
    history = model.fit(x, y, sample_weight=w[0] if w else None, batch_size=batch_size,
                        epochs=1, shuffle=False, verbose=0)
    return {k: v[0] for k, v in history.history.items()}


@pytest.mark.parametrize("form", ["lockstep", "sequential"])
def test_each_clients_training_metrics_equal_keras_fit_on_that_client(form, monkeypatch):
    weighted = True  # sample weights: the loss and `weighted_accuracy` take them, `accuracy` not
    clients = _clients(weighted)
    results = _round_results(monkeypatch, form)
    start = _model(weighted).get_weights()
    kerasfed.fit_federated(_model(weighted), clients, rounds=1, batch_size=4, shuffle=False,
                           engine="native", seed=0, verbose=0)
    per_client = results[0].client_metrics
    assert sorted(per_client) == sorted(clients)
    for cid, data in clients.items():
        expected = _keras_epoch(lambda: _model(weighted), start, data, 4)
        assert sorted(per_client[cid]) == sorted(expected), cid
        for name, value in expected.items():
            assert per_client[cid][name] == pytest.approx(value, abs=1e-5), (cid, name)


@pytest.mark.parametrize("form", ["lockstep", "sequential"])
def test_two_outputs_each_client_equals_keras_fit(form, monkeypatch):
    # Whole batches only: Keras 3 averages each output's loss over batches without
    # weighing them by their sizes (a last, smaller batch counts as much as a full
    # one), where kerasfed's pooled and per-client values average over examples.
    rng = np.random.default_rng(3)
    clients = {f"c{i}": (rng.normal(size=(n, 4)).astype("float32"),
                         {"cls": rng.integers(0, 3, n).astype("int32"),
                          "reg": rng.normal(size=(n, 1)).astype("float32")})
               for i, n in enumerate((8, 12, 4))}
    results = _round_results(monkeypatch, form)
    start = _two_output_model().get_weights()
    kerasfed.fit_federated(_two_output_model(), clients, rounds=1, batch_size=4, shuffle=False,
                           engine="native", seed=0, verbose=0)
    for cid, data in clients.items():
        expected = _keras_epoch(_two_output_model, start, data, 4)
        got = results[0].client_metrics[cid]
        assert sorted(got) == sorted(expected), cid
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-5), (cid, name)


def test_binary_labels_given_as_integers(monkeypatch):
    rng = np.random.default_rng(4)
    clients = {f"c{i}": (rng.normal(size=(n, 4)).astype("float32"),
                         rng.integers(0, 2, n).astype("int32")) for i, n in enumerate(SIZES)}

    def make():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy",
                      metrics=["accuracy"])
        return model

    results = _round_results(monkeypatch, "lockstep")
    start = make().get_weights()
    kerasfed.fit_federated(make(), clients, rounds=1, batch_size=4, shuffle=False,
                           engine="native", seed=0, verbose=0)
    for cid, data in clients.items():
        expected = _keras_epoch(make, start, data, 4)
        for name, value in expected.items():
            assert results[0].client_metrics[cid][name] == pytest.approx(value, abs=1e-5)


def test_metric_objects_that_are_no_means_are_pooled_only_and_dropped_clients_have_none(
        monkeypatch):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    # The root of a mean is no mean of per-example values.
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse",
                  metrics=["mae", keras.metrics.RootMeanSquaredError(name="rmse")])
    rng = np.random.default_rng(0)
    clients = {f"c{i}": (rng.normal(size=(8, 4)).astype("float32"),
                         rng.normal(size=(8, 1)).astype("float32")) for i in range(3)}
    clients["c1"] = (clients["c1"][0], np.full((8, 1), 3e38, np.float32))  # its error overflows
    results = _round_results(monkeypatch, "lockstep")
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        history = kerasfed.fit_federated(model, clients, rounds=1, batch_size=4,
                                         engine="native", seed=0, verbose=0)
    assert "rmse" in history.history
    assert not has_client_values(keras.metrics.RootMeanSquaredError())
    assert sorted(results[0].client_metrics) == ["c0", "c2"] == results[0].participants
    assert all(sorted(m) == ["loss", "mae"] for m in results[0].client_metrics.values())
