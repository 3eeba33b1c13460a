"""Personal layers (FedPer, FedBN) against a reference written with plain Keras ``fit``.

The reference simulates the rounds by hand: each client starts from the global
weights with its own values of the personal layers (the initial ones the first
time), trains one epoch with ``model.fit``, keeps its personal values, and the
shared weights are averaged by examples. The global values of the personal
layers must stay the initial ones (they never leave the client).
"""

from __future__ import annotations

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.errors import AlgorithmError, ArgumentError, ArgumentTypeError
from kerasfed.federated.engines.native import engine as native

pytestmark = pytest.mark.native

SIZES = (8, 12, 4)


def _clients(seed=0):
    rng = np.random.default_rng(seed)
    return {f"c{i}": (rng.normal(size=(n, 4)).astype("float32"),
                      rng.integers(0, 3, n).astype("int32")) for i, n in enumerate(SIZES)}


def _model(batchnorm=False):
    keras.utils.set_random_seed(1)
    layers = [keras.Input((4,)), keras.layers.Dense(6, activation="relu", name="body")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization(name="bn"))
    layers.append(keras.layers.Dense(3, activation="softmax", name="head"))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _personal_positions(model, names):
    ids = {id(w) for layer in model.layers if layer.name in names for w in layer.weights}
    return [i for i, w in enumerate(model.weights) if id(w) in ids]


def _reference(make_model, clients, names, rounds, batch_size):
    """(final global weights, each client's personal values) by hand with Keras."""
    model = make_model()
    personal = _personal_positions(model, names)
    global_w = model.get_weights()
    own = {cid: [global_w[i] for i in personal] for cid in clients}
    for _ in range(rounds):
        finals, sizes = {}, {}
        for cid, (x, y) in clients.items():
            start = list(global_w)
            for i, value in zip(personal, own[cid]):
                start[i] = value
            model.set_weights(start)
            model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
            finals[cid], sizes[cid] = model.get_weights(), len(x)
            own[cid] = [finals[cid][i] for i in personal]
        total = sum(sizes.values())
        global_w = [w if i in personal else
                    sum(sizes[c] * finals[c][i] for c in clients) / total
                    for i, w in enumerate(global_w)]
    return global_w, own


def _own_values(monkeypatch):
    """After the run: each client's personal values the engine kept, in model order."""
    kept = {}
    train_round = native.NativeEngine.train_round

    def spy(self, state, round_clients, round_num, **kwargs):
        state, result = train_round(self, state, round_clients, round_num, **kwargs)
        cids = sorted(c.cid for c in round_clients)
        trainable = self._client_table.read(cids) if self._client_table else []
        own_state = self._own_table.read(cids) if self._own_table else []
        kept.update(cids=cids, trainable=trainable, own_state=own_state,
                    models=self.personal_models(cids),
                    positions=self._algorithm.positions, state_positions=self._personal_state,
                    trainable_pos=self._trainable_pos, non_trainable_pos=self._non_trainable_pos)
        return state, result

    monkeypatch.setattr(native.NativeEngine, "train_round", spy)
    return kept


def _by_model_position(kept):
    """{cid: {model weight index: value}} from what the spy read."""
    out = {cid: {} for cid in kept["cids"]}
    for j, values in zip(kept["positions"], kept["trainable"]):
        for cid, v in zip(kept["cids"], values):
            out[cid][kept["trainable_pos"][j]] = v
    for j, values in zip(kept["state_positions"], kept["own_state"]):
        for cid, v in zip(kept["cids"], values):
            out[cid][kept["non_trainable_pos"][j]] = v
    return out


@pytest.mark.parametrize("batchnorm", [False, True], ids=["fedper-head", "fedbn"])
def test_personal_layers_equal_a_keras_reference_and_never_leave_the_client(batchnorm,
                                                                            monkeypatch):
    clients = _clients()
    names = ["bn"] if batchnorm else ["head"]
    kept = _own_values(monkeypatch)
    initial = _model(batchnorm).get_weights()
    history = kerasfed.fit_federated(
        _model(batchnorm), clients, rounds=2, batch_size=4, shuffle=False, engine="native",
        seed=0, verbose=0, personal_layers="batch_norm" if batchnorm else "head")
    expected_global, expected_own = _reference(lambda: _model(batchnorm), clients, names,
                                               rounds=2, batch_size=4)
    final = history.model.get_weights()
    personal = _personal_positions(history.model, names)
    for i, (got, want) in enumerate(zip(final, expected_global)):
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"weight {i}")
        if i in personal:  # the global values of personal layers never move
            np.testing.assert_array_equal(got, initial[i])
    own = _by_model_position(kept)
    for cid in clients:
        assert sorted(own[cid]) == personal
        for i, want in zip(personal, expected_own[cid]):
            np.testing.assert_allclose(own[cid][i], want, atol=1e-5, err_msg=f"{cid} {i}")


def test_personal_weights_are_not_counted_in_the_bytes():
    clients = _clients()
    plain = kerasfed.fit_federated(_model(), clients, rounds=1, batch_size=4, engine="native",
                                   seed=0, verbose=0)
    fedper = kerasfed.fit_federated(_model(), clients, rounds=1, batch_size=4, engine="native",
                                    seed=0, verbose=0, personal_layers=["head"])
    head = (6 * 3 + 3) * 4 * len(clients)  # float32 kernel and bias, each client
    assert plain.history["bytes_to_clients"][0] - fedper.history["bytes_to_clients"][0] == head
    assert plain.history["bytes_from_clients"][0] - fedper.history["bytes_from_clients"][0] == head


def test_a_predicate_picks_layers():
    clients = _clients()
    initial = _model().get_weights()
    history = kerasfed.fit_federated(
        _model(), clients, rounds=1, batch_size=4, engine="native", seed=0, verbose=0,
        personal_layers=lambda layer: layer.name.startswith("he"))
    final = history.model.get_weights()
    np.testing.assert_array_equal(final[2], initial[2])  # head kernel
    assert not np.array_equal(final[0], initial[0])  # body kernel trained


@pytest.mark.parametrize("spec, error, match", [
    ("tail", ArgumentError, r"names \['tail'\], which the model has no layer of"),
    ([3], ArgumentTypeError, r"layer names \(strings\). Received 3 of type int"),
    (3.5, ArgumentTypeError, r"expected `personal_layers` to be a layer name"),
    (lambda layer: False, ArgumentError, "picks no weight of the model"),
    (["body", "head"], ArgumentError, "makes every trainable weight personal"),
])
def test_bad_personal_layers_fail_before_training(spec, error, match):
    with pytest.raises(error, match=match):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="native", verbose=0,
                               personal_layers=spec)


def test_algorithms_that_do_not_train_locally_are_refused():
    with pytest.raises(AlgorithmError, match="personal layers would never train"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="native", verbose=0,
                               algorithm="fedsgd", personal_layers="head")


@pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
def test_the_tff_engine_refuses_and_auto_picks_native():
    with pytest.raises(AlgorithmError, match="personal_layers keeps weights on each client"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="tff", verbose=0,
                               personal_layers="head")
    history = kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="auto", verbose=0,
                                     personal_layers="head")
    assert history.params["engine"] == "native"


def test_evaluation_clients_that_are_training_clients_use_their_personal_layers():
    clients = _clients()
    held_out = _clients(seed=1)  # the same ids, other examples
    history = kerasfed.fit_federated(
        _model(), clients, rounds=2, batch_size=4, shuffle=False, engine="native", seed=0,
        verbose=0, personal_layers="head", evaluation_clients=held_out)
    expected_global, expected_own = _reference(_model, clients, ["head"], rounds=2,
                                               batch_size=4)
    model = _model()
    personal = _personal_positions(model, ["head"])
    per_client = history.client_metrics[-1]
    means = {"personalized_accuracy": [], "baseline_accuracy": []}
    for cid, (x, y) in held_out.items():
        own = list(expected_global)
        for i, value in zip(personal, expected_own[cid]):
            own[i] = value
        for kind, weights in (("personalized", own), ("baseline", expected_global)):
            model.set_weights(weights)
            want = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
            for name, value in want.items():
                assert per_client[cid][f"{kind}_{name}"] == pytest.approx(value, abs=1e-5)
            means[f"{kind}_accuracy"].append(want["accuracy"])
    for key, values in means.items():
        assert history.history[f"fed_eval_{key}"][-1] == pytest.approx(np.mean(values),
                                                                        abs=1e-6)
        assert history.history[f"fed_eval_{key}_p10"][-1] == pytest.approx(
            np.percentile(values, 10), abs=1e-6)


def test_fine_tuning_and_personal_layers_are_one_or_the_other():
    with pytest.raises(ArgumentError, match="Pass one or the other"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="native", verbose=0,
                               personal_layers="head", evaluation_clients=_clients(seed=1),
                               personalization=kerasfed.FineTune())


def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    # FedBN's layers (algorithm state and moving statistics per client) and Ditto's
    # personal models: every per-client table goes through the checkpoint.
    kept = _own_values(monkeypatch)
    clients = _clients()
    args = dict(batch_size=4, engine="native", seed=3, verbose=0, clients_per_round=2,
                personal_layers="batch_norm", algorithm=kerasfed.Ditto(lam=0.5))
    whole = kerasfed.fit_federated(_model(True), clients, rounds=3, **args)
    whole_own = dict(kept)
    kerasfed.fit_federated(_model(True), clients, rounds=2, checkpoint_dir=tmp_path, **args)
    resumed = kerasfed.fit_federated(_model(True), clients, rounds=3, checkpoint_dir=tmp_path,
                                     **args)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert kept["cids"] == whole_own["cids"]
    for group in ("trainable", "own_state"):
        for a, b in zip(whole_own[group], kept[group]):
            np.testing.assert_array_equal(a, b)
    assert sorted(kept["models"]) == kept["cids"]
    for cid in kept["cids"]:
        for a, b in zip(whole_own["models"][cid], kept["models"][cid]):
            np.testing.assert_array_equal(a, b)
    assert resumed.participants == whole.participants
