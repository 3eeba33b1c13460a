"""Metrics per client: ``History.client_metrics``, ``client_train_metrics`` and the
``fed_eval_<metric>_{min,p10,p50,p90,max}`` spread keys.

Each client's values are checked against plain Keras ``evaluate`` on that client
with the round's global weights, the spread against ``numpy.percentile``, the
TFF engine's values against the native engine's, and every list across a
checkpoint resume.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.federated import fit as fit_module
from kerasfed.federated.client_metrics import QUANTILES, spread
from kerasfed.federated.clients import sample_clients
from kerasfed.federated.engines.base import ClientRound
from kerasfed.federated.engines.native.evaluation import FederatedEvaluation
from kerasfed.federated.replicas import Replicas

needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
BATCH = 4
EVAL_SIZES = (7, 10, 5, 13, 9)


def _classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _data(sizes, *, prefix: str, seed: int, weights: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        y = rng.integers(0, 3, n)
        out[f"{prefix}{i}"] = (x, y, rng.uniform(0.2, 2.0, n).astype(np.float32)) if weights \
            else (x, y)
    return out


class _WeightsPerRound(keras.callbacks.Callback):
    """The global weights after each round (``fit_federated`` sets them before callbacks)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def _keras_values(model, weights, data: dict) -> dict:
    """Plain Keras ``evaluate`` of each client with ``weights``: the reference."""
    model.set_weights(weights)
    out = {}
    for cid, (x, y, *w) in data.items():
        out[cid] = model.evaluate(x, y, sample_weight=w[0] if w else None, batch_size=BATCH,
                                  verbose=0, return_dict=True)
    return out


def _assert_close(got: dict, expected: dict, names, rel=1e-5, abs_=1e-6):
    assert set(got) == set(expected)
    for cid in expected:
        for name in names:
            assert got[cid][name] == pytest.approx(expected[cid][name], rel=rel, abs=abs_), \
                (cid, name)


@pytest.mark.native
def test_each_clients_values_equal_keras_evaluate_with_sample_weights():
    evaluation = _data(EVAL_SIZES, prefix="e", seed=1, weights=True)
    weights = _WeightsPerRound()
    model = _classifier()
    history = kerasfed.fit_federated(
        model, _data((12, 8, 10), prefix="c", seed=0), rounds=2, batch_size=BATCH, seed=3,
        evaluation_clients=evaluation, callbacks=[weights], engine="native", verbose=0)
    reference = _classifier()
    assert len(history.client_metrics) == 2
    for round_num in range(2):
        expected = _keras_values(reference, weights.weights[round_num], evaluation)
        got = history.client_metrics[round_num]
        assert list(next(iter(got.values()))) == ["loss", "accuracy"]  # loss first, as pooled
        _assert_close(got, expected, ["loss", "accuracy"])
        # The spread keys: numpy.percentile over the Keras values, each client once.
        for name in ("loss", "accuracy"):
            values = [expected[cid][name] for cid in evaluation]
            for suffix, q in QUANTILES:
                assert history.history[f"fed_eval_{name}_{suffix}"][round_num] == pytest.approx(
                    np.percentile(values, q), rel=1e-5)
    # The pooled value is unchanged: all examples together, not a mean over clients.
    x, y, w = (np.concatenate(parts) for parts in zip(*evaluation.values()))
    reference.set_weights(weights.weights[-1])
    pooled = reference.evaluate(x, y, sample_weight=w, batch_size=BATCH, verbose=0,
                                return_dict=True)
    assert history.history["fed_eval_accuracy"][-1] == pytest.approx(pooled["accuracy"], rel=1e-5)


def _two_outputs() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="relu")(inputs)
    a = keras.layers.Dense(1, name="a")(hidden)
    b = keras.layers.Dense(3, activation="softmax", name="b")(hidden)
    model = keras.Model(inputs, [a, b])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss={"a": "mse", "b": "sparse_categorical_crossentropy"},
                  loss_weights={"a": 0.5, "b": 1.0},
                  metrics={"a": ["mae"], "b": ["accuracy"]})
    return model


@pytest.mark.native
def test_a_two_output_models_clients_equal_keras_evaluate():
    def data(sizes, prefix, seed):
        rng = np.random.default_rng(seed)
        return {f"{prefix}{i}": (rng.normal(size=(n, 4)).astype(np.float32),
                                 (rng.normal(size=(n, 1)).astype(np.float32),
                                  rng.integers(0, 3, n)))
                for i, n in enumerate(sizes)}

    evaluation = data(EVAL_SIZES[:3], "e", 1)
    model = _two_outputs()
    history = kerasfed.fit_federated(model, data((9, 6), "c", 0), rounds=1, batch_size=BATCH,
                                     seed=0, evaluation_clients=evaluation, engine="native",
                                     verbose=0)
    pooled_names = [k[len("fed_eval_"):] for k in history.history
                    if k.startswith("fed_eval_") and not k.endswith(
                        tuple(f"_{s}" for s, _ in QUANTILES))]
    got = history.client_metrics[0]
    assert all(sorted(values) == sorted(pooled_names) for values in got.values())  # same names
    assert all(list(values)[0] == "loss" for values in got.values())
    expected = {cid: model.evaluate(x, list(y), batch_size=BATCH, verbose=0, return_dict=True)
                for cid, (x, y) in evaluation.items()}
    # Keras 3 reports each output's loss (`a_loss`) as the plain mean of its batch
    # means; kerasfed's, like Keras 2's, is the mean over examples: one batch each.
    whole = {cid: model.evaluate(x, list(y), batch_size=len(x), verbose=0, return_dict=True)
             for cid, (x, y) in evaluation.items()}
    outputs = [n for n in pooled_names if n.endswith("_loss")]
    assert sorted(outputs) == ["a_loss", "b_loss"]
    _assert_close(got, whole, outputs)
    common = [n for n in pooled_names if n in next(iter(expected.values())) and n not in outputs]
    assert sorted(common) == ["a_mae", "b_accuracy", "loss"], (pooled_names, expected)
    _assert_close(got, expected, common)


@pytest.mark.native
def test_only_the_rounds_sampled_evaluation_clients_appear():
    evaluation = _data(EVAL_SIZES, prefix="e", seed=1)
    history = kerasfed.fit_federated(
        _classifier(), _data((12, 8), prefix="c", seed=0), rounds=3, batch_size=BATCH, seed=5,
        evaluation_clients=evaluation, evaluation_clients_per_round=2, engine="native",
        verbose=0)
    for round_num, per_client in enumerate(history.client_metrics):
        assert sorted(per_client) == sorted(
            sample_clients(list(evaluation), 2, round_num, 5, stream=2))
        loss = [v["loss"] for v in per_client.values()]
        assert history.history["fed_eval_loss_min"][round_num] == pytest.approx(min(loss))
        assert history.history["fed_eval_loss_max"][round_num] == pytest.approx(max(loss))


@pytest.mark.native
def test_rounds_without_evaluation_have_empty_dicts():
    history = kerasfed.fit_federated(
        _classifier(), _data((12, 8), prefix="c", seed=0), rounds=3, batch_size=BATCH, seed=0,
        evaluation_clients=_data(EVAL_SIZES, prefix="e", seed=1), evaluate_every=2,
        engine="native", verbose=0)
    assert [len(r) for r in history.client_metrics] == [0, len(EVAL_SIZES), len(EVAL_SIZES)]
    assert len(history.history["fed_eval_loss_p50"]) == 2  # rounds 2 and 3 (the last)
    assert "client_metrics" not in history.history  # Keras callbacks expect numbers there


def _with_train_metrics(monkeypatch):
    """Makes the engine report known per-client training metrics: the fit.py plumbing
    is checked here whatever the engine computes (its values are tested with it)."""
    real = fit_module.make_engine

    def make_engine(name, setup):
        engine = real(name, setup)
        train_round = engine.train_round

        def reporting(state, clients, round_num, **kwargs):
            state, result = train_round(state, clients, round_num, **kwargs)
            made_up = {c.cid: {"loss": round_num + i / 10, "accuracy": np.float32(0.5)}
                       for i, c in enumerate(clients)}
            return state, dataclasses.replace(result, client_metrics=made_up)

        engine.train_round = reporting
        return engine

    monkeypatch.setattr(fit_module, "make_engine", make_engine)


@pytest.mark.native
def test_client_train_metrics_are_the_engines_per_round(monkeypatch):
    _with_train_metrics(monkeypatch)
    train = _data((12, 8, 10), prefix="c", seed=0)
    history = kerasfed.fit_federated(_classifier(), train, rounds=2, clients_per_round=2,
                                     batch_size=BATCH, seed=4, engine="native", verbose=0)
    for round_num, per_client in enumerate(history.client_train_metrics):
        cids = sample_clients(list(train), 2, round_num, 4)
        assert per_client == {cid: {"loss": round_num + i / 10, "accuracy": 0.5}
                              for i, cid in enumerate(cids)}
    assert history.client_metrics == [{}, {}]  # no evaluation clients


@pytest.mark.native
def test_a_resumed_run_reports_every_rounds_client_metrics(tmp_path, monkeypatch):
    _with_train_metrics(monkeypatch)

    def run(rounds, directory=None):
        return kerasfed.fit_federated(
            _classifier(), _data((12, 8, 10), prefix="c", seed=0), rounds=rounds,
            clients_per_round=2, batch_size=BATCH, seed=3, engine="native", verbose=0,
            evaluation_clients=_data(EVAL_SIZES, prefix="e", seed=1),
            evaluation_clients_per_round=3, evaluate_every=2, checkpoint_dir=directory)

    whole = run(3)  # evaluates rounds 2 and 3 (the last)
    run(2, tmp_path)
    resumed = run(3, tmp_path)
    for attribute in ("client_metrics", "client_train_metrics"):
        got, expected = getattr(resumed, attribute), getattr(whole, attribute)
        assert len(got) == 3
        assert [sorted(r) for r in got] == [sorted(r) for r in expected]
        for got_round, expected_round in zip(got, expected):
            _assert_close(got_round, expected_round, ["loss", "accuracy"])
    assert [len(r) for r in resumed.client_metrics] == [0, 3, 3]  # restored, restored, run
    assert resumed.history["fed_eval_loss_p90"] == pytest.approx(
        whole.history["fed_eval_loss_p90"], rel=1e-5)
    again = run(3, tmp_path)  # nothing left to run: every round read back
    assert again.client_metrics == resumed.client_metrics


@pytest.mark.federated
@needs_tff
def test_the_tff_engines_clients_equal_the_native_engines():
    evaluation = _data(EVAL_SIZES, prefix="e", seed=1)

    def run(engine):
        return kerasfed.fit_federated(
            _classifier(), _data((12, 8), prefix="c", seed=0), rounds=1, batch_size=BATCH,
            seed=2, evaluation_clients=evaluation, engine=engine, verbose=0)

    tff_history, native = run("tff"), run("native")
    _assert_close(tff_history.client_metrics[0], native.client_metrics[0], ["loss", "accuracy"],
                  rel=1e-5, abs_=1e-5)
    assert tff_history.client_train_metrics == [{}]  # TFF cannot tell its clients apart
    for key in spread("fed_eval_", native.client_metrics[0]):
        assert tff_history.history[key] == pytest.approx(native.history[key], rel=1e-5, abs=1e-5)


class _FakeWorker(Replicas):
    """Worker ``rank`` of two, one replica each; ``all_reduce`` adds the other
    worker's recorded contribution (``other``), as the collective would."""

    def __init__(self, rank: int, other=None):
        super().__init__()
        self.num_replicas, self.workers, self.rank, self.first = 2, 2, rank, rank
        self.other, self.sent = other, None

    def all_reduce(self, local):
        self.sent = local[0]
        other = self.other if self.other is not None else tf.nest.map_structure(
            tf.zeros_like, local[0])
        return tf.nest.map_structure(lambda a, b: a + b, local[0], other)


@pytest.mark.native
def test_two_workers_join_every_clients_values():
    model = _classifier()

    def loss(y, p, sample_weight=None):
        return keras.losses.sparse_categorical_crossentropy(y, p)

    clients = [ClientRound(cid=cid, x=x, y=y, order=np.arange(len(x))[None])
               for cid, (x, y) in _data(EVAL_SIZES, prefix="e", seed=1).items()]

    def evaluation(replicas):
        def accuracy():
            return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        return FederatedEvaluation(model, loss, lambda p: p, [accuracy()], BATCH, replicas,
                                   client_metrics=[accuracy()])

    weights = model.get_weights()
    alone = evaluation(Replicas())(weights, clients)
    second = _FakeWorker(1)
    evaluation(second)(weights, clients)
    first = evaluation(_FakeWorker(0, other=second.sent))(weights, clients)
    assert first.pooled == pytest.approx(alone.pooled, rel=1e-6)
    assert set(first.per_client) == {c.cid for c in clients}
    _assert_close(first.per_client, alone.per_client, ["loss", "accuracy"], rel=1e-6)
