"""Personalization evaluation (``FineTune``) against plain Keras: ``clone_model``,
``fit`` on each client's fine-tuning part, ``evaluate`` on its test part.

Runs in both environments (TF 2.14 / Keras 2 and TF 2.21 / Keras 3).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import KERAS_3, keras, tff_available
from kerasfed.errors import ArgumentError, ArgumentTypeError, ClientOptimizerError
from kerasfed.federated.aggregators import resolve_chain
from kerasfed.federated.client_metrics import spread
from kerasfed.federated.engines.native import forward as fwd
from kerasfed.federated.engines.native.finetune import (
    ClientsEvaluation,
    FineTuneEvaluation,
    SplitClient,
)
from kerasfed.federated.engines.native.optimizers import client_rule
from kerasfed.federated.engines.tff import capabilities
from kerasfed.federated.personalization import (
    FineTune,
    check_personalization,
    round_logs,
    split_examples,
    split_seed,
)

pytestmark = pytest.mark.native

FEATURES, CLASSES = 5, 3
TOL = 1e-5


def _data(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"c{i}": (rng.normal(size=(n, FEATURES)).astype("float32"),
                  rng.integers(0, CLASSES, n).astype("int32"))
        for i, n in enumerate(sizes)
    }


def _optimizer(kind="sgd"):
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate=0.02)
    return keras.optimizers.SGD(learning_rate=0.2, momentum=0.5)


def _model(kind="sgd", batchnorm=False, seed=1):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(CLASSES, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(optimizer=_optimizer(kind), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _reference(model, weights, x, y, tune, test, *, epochs, batch_size, kind):
    """Plain Keras: a copy of the model at ``weights``, fitted on ``tune`` in that
    order, evaluated on ``test``; and the copy before fitting on ``test``."""
    copy = keras.models.clone_model(model)
    copy.set_weights(weights)
    copy.compile(optimizer=_optimizer(kind), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    base = copy.evaluate(x[test], y[test], batch_size=batch_size, verbose=0, return_dict=True)
    if len(tune):
        copy.fit(x[tune], y[tune], epochs=epochs, batch_size=batch_size, shuffle=False,
                 verbose=0)
    mine = copy.evaluate(x[test], y[test], batch_size=batch_size, verbose=0, return_dict=True)
    return ({f"personalized_{k}": float(v) for k, v in mine.items()}
            | {f"baseline_{k}": float(v) for k, v in base.items()})


def _split_clients(data, seed, round_num, fraction=0.5):
    out = []
    for cid, (x, y) in data.items():
        tune, test = split_examples(len(x), fraction, split_seed(seed, round_num, cid))
        out.append(SplitClient(cid=cid, x=x, y=y, w=None, tune=tune, test=test))
    return out


def _finetune(model, clients, *, form, epochs=2, batch_size=3, kind="sgd"):
    loss = _unreduced_loss()
    evaluation = FineTuneEvaluation(
        model, loss=loss, flatten=None,
        metrics=[lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        rule=client_rule(FineTune(optimizer=_optimizer(kind)).optimizer_spec()),
        batch_size=batch_size, epochs=epochs, form=form)
    trainable = [tf.convert_to_tensor(v) for v in fwd.variables(model.trainable_variables)]
    state = [tf.convert_to_tensor(v) for v in fwd.variables(model.non_trainable_variables)]
    return evaluation(trainable, state, clients)


def _unreduced_loss():
    return keras.losses.SparseCategoricalCrossentropy(reduction=None if KERAS_3 else "none")


def _close(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=TOL), key


# -- the split -------------------------------------------------------------------------------


def test_split_covers_every_example_once_and_is_deterministic():
    for n in (1, 2, 3, 10, 101):
        tune, test = split_examples(n, 0.3, split_seed(5, 2, "a"))
        assert sorted([*tune, *test]) == list(range(n))
        assert len(tune) == (0 if n == 1 else min(max(round(0.3 * n), 1), n - 1))
        again = split_examples(n, 0.3, split_seed(5, 2, "a"))
        np.testing.assert_array_equal(tune, again[0])
        np.testing.assert_array_equal(test, again[1])
    # Another round, client or seed draws another split.
    splits = {tuple(split_examples(50, 0.5, split_seed(*args))[0])
              for args in [(5, 2, "a"), (5, 3, "a"), (5, 2, "b"), (6, 2, "a")]}
    assert len(splits) == 4


def test_split_seed_is_its_own_stream():
    from kerasfed.federated.clients import client_shuffle_seed

    assert split_seed(7, 3, "a") == [7, 3, 3, 3904355907]
    assert split_seed(7, 3, "a") != client_shuffle_seed(7, 3, "a")


# -- fine-tuning against plain Keras ---------------------------------------------------------


def test_each_client_equals_keras_fit_then_evaluate_in_both_forms():
    # The model is compiled with SGD; FineTune's own optimizer (Adam) is the one used,
    # its state fresh for every client (the compiled one: the fit_federated test).
    model = _model("sgd")
    # A client of one example is only tested: its values are its baseline's.
    clients = _split_clients(_data((9, 4, 1)), seed=3, round_num=1, fraction=0.6)
    lockstep = _finetune(model, clients, form="lockstep", epochs=2, batch_size=3, kind="adam")
    sequential = _finetune(model, clients, form="sequential", epochs=2, batch_size=3,
                           kind="adam")
    weights = model.get_weights()
    for c in clients:
        want = _reference(model, weights, c.x, c.y, c.tune, c.test, epochs=2, batch_size=3,
                          kind="adam")
        _close(lockstep[c.cid], want)
        _close(sequential[c.cid], want)


def test_batchnorm_model_fine_tunes_its_statistics_too():
    model = _model("sgd", batchnorm=True)
    clients = _split_clients(_data((10, 6)), seed=2, round_num=0)
    got = _finetune(model, clients, form=None, epochs=2, batch_size=4)
    for c in clients:
        want = _reference(model, model.get_weights(), c.x, c.y, c.tune, c.test, epochs=2,
                          batch_size=4, kind="sgd")
        _close(got[c.cid], want)


@pytest.mark.parametrize("lockstep", [True, False])
def test_clients_evaluation_uses_each_clients_own_weights(lockstep):
    model = _model("sgd")
    loss = _unreduced_loss()
    forward = fwd.StatelessForward(model, loss)
    evaluation = ClientsEvaluation(
        forward, loss=loss, flatten=None,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], batch_size=4,
        lockstep=lockstep)
    data = list(_data((6, 11, 3)).values())
    rng = np.random.default_rng(0)
    base = model.get_weights()
    per_client = [[w + 0.3 * rng.normal(size=w.shape).astype("float32") for w in base]
                  for _ in data]
    stacked = [tf.constant(np.stack([ws[i] for ws in per_client])) for i in range(len(base))]
    got = evaluation(stacked, [], [(x, y, None) for x, y in data])
    for (x, y), weights, values in zip(data, per_client, got):
        model.set_weights(weights)
        want = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
        _close(values, {k: float(v) for k, v in want.items()})


# -- through fit_federated -------------------------------------------------------------------


def test_fit_federated_reports_means_spread_and_per_client_values():
    model = _model("sgd")
    train = _data((10, 12), seed=4)
    held_out = _data((8, 5), seed=5)
    finetune = kerasfed.FineTune(epochs=2, batch_size=3, fraction=0.5)
    history = kerasfed.fit_federated(
        model, train, rounds=1, batch_size=4, evaluation_clients=held_out, seed=9,
        engine="auto", verbose=0, personalization=finetune)
    assert history.params["engine"] == "native"  # auto: the TFF engine has no FineTune
    final = history.model.get_weights()
    clients = _split_clients(held_out, seed=9, round_num=0)
    per_client = {c.cid: _reference(model, final, c.x, c.y, c.tune, c.test, epochs=2,
                                    batch_size=3, kind="sgd") for c in clients}
    for cid, want in per_client.items():
        got = {k: v for k, v in history.client_metrics[-1][cid].items() if "_" in k}
        _close(got, want)
    for kind in ("personalized", "baseline"):
        for metric in ("loss", "accuracy"):
            values = [v[f"{kind}_{metric}"] for v in per_client.values()]
            assert history.history[f"fed_eval_{kind}_{metric}"][-1] == pytest.approx(
                np.mean(values), abs=TOL)
        quantiles = spread(f"fed_eval_{kind}_", {
            cid: {m: v[f"{kind}_{m}"] for m in ("loss", "accuracy")}
            for cid, v in per_client.items()})
        for key, value in quantiles.items():
            assert history.history[key][-1] == pytest.approx(value, abs=TOL)
    # Fine-tuning leaves the global model as it was: the same run without it ends alike.
    plain = kerasfed.fit_federated(_model("sgd"), train, rounds=1, batch_size=4,
                                   evaluation_clients=held_out, seed=9, engine="native",
                                   verbose=0)
    for a, b in zip(final, plain.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_round_logs_are_unweighted_means():
    per_client = {"a": {"personalized_loss": 1.0, "baseline_loss": 2.0},
                  "b": {"personalized_loss": 3.0, "baseline_loss": 6.0}}
    logs = round_logs(per_client)
    assert logs["fed_eval_personalized_loss"] == 2.0
    assert logs["fed_eval_baseline_loss"] == 4.0
    assert logs["fed_eval_baseline_loss_p50"] == 4.0
    assert logs["fed_eval_personalized_loss_max"] == 3.0


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 0}, ArgumentError, r"`epochs` to be an int >= 1\. Received: epochs=0"),
    ({"epochs": 1.5}, ArgumentTypeError, r"`epochs` to be an int >= 1.*type float"),
    ({"batch_size": 0}, ArgumentError, r"`batch_size` to be None or an int >= 1"),
    ({"batch_size": "8"}, ArgumentTypeError, r"`batch_size`.*type str"),
    ({"fraction": 0.0}, ArgumentError, r"`fraction` to be a float in \(0, 1\).*fraction=0\.0"),
    ({"fraction": 1}, ArgumentError, r"fraction=1\. Pass e\.g\. fraction=0\.5"),
    ({"fraction": float("nan")}, ArgumentError, r"fraction=nan"),
    ({"fraction": "half"}, ArgumentTypeError, r"`fraction`.*type str"),
    ({"seed": -1}, ArgumentError, r"`seed` to be None or an int >= 0"),
    ({"seed": True}, ArgumentTypeError, r"`seed`.*type bool"),
    ({"optimizer": 3}, ArgumentTypeError, r"`optimizer` to be None, a Keras optimizer"),
    ({"optimizer": "no_such_optimizer"}, ArgumentError, r"optimizer='no_such_optimizer'"),
])
def test_finetune_checks_its_fields(kwargs, error, match):
    with pytest.raises(error, match=f"FineTune: (expected )?.*{match}"):
        FineTune(**kwargs)


def test_finetune_refuses_an_optimizer_it_cannot_reproduce():
    with pytest.raises(ClientOptimizerError, match="FineTune"):
        FineTune(optimizer=keras.optimizers.SGD(learning_rate=0.1, clipnorm=1.0))


def test_fit_federated_needs_a_finetune_and_evaluation_clients():
    train = _data((6, 6))
    with pytest.raises(ArgumentTypeError, match=r"`personalization` to be None or a "
                                                r"kerasfed\.FineTune.*type dict"):
        kerasfed.fit_federated(_model(), train, rounds=1, engine="native", verbose=0,
                               evaluation_clients=train, personalization={"epochs": 1})
    with pytest.raises(ArgumentError, match=r"evaluation_clients=None.*Pass "
                                            r"evaluation_clients="):
        kerasfed.fit_federated(_model(), train, rounds=1, engine="native", verbose=0,
                               personalization=kerasfed.FineTune())


def test_the_tff_engine_refuses_finetune_naming_the_native_engine():
    model = _model()
    data = kerasfed.ClientData(_data((6, 6)))
    problem = capabilities.why_not(
        model=model, clients=data, evaluation_clients=data, validation_data=None,
        aggregator=resolve_chain("mean"),
        algorithm=kerasfed.FedAvg(), attack=None, personalization=FineTune())
    assert isinstance(problem, ArgumentError)
    assert "engine='native'" in str(problem)
    with pytest.raises(ArgumentError, match=r"native engine only.*engine='tff'.*"
                                            r"Pass engine='native'"):
        check_personalization(FineTune(), recipe=None, evaluation_clients=data, batch_size=4,
                              engine="tff")


@pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
def test_fit_federated_with_engine_tff_refuses_finetune():
    train = _data((6, 6))
    with pytest.raises(ArgumentError, match=r"personalization=FineTune.*TFF engine cannot.*"
                                            r"Use engine='native'"):
        kerasfed.fit_federated(_model(), train, rounds=1, engine="tff", verbose=0,
                               evaluation_clients=train, personalization=kerasfed.FineTune())
