"""SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II) against a numpy reference.

A linear model with mean squared error, so that every local step can be written
in numpy: several rounds, a different sample of clients each round, clients of
different sizes (their own numbers of local steps K), the server and client
control variates carried between rounds. Both forms of the native engine, both
TensorFlow versions.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.federated.engines import ClientRound, EngineSetup
from kerasfed.federated.engines.native.engine import NativeEngine

pytestmark = pytest.mark.native
needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")

FEATURES, OUTPUTS, BATCH = 3, 2, 4
SIZES = (5, 9, 12, 7)  # K = 2, 3, 3, 2 steps per local epoch
CLIENT_LR = 0.05
# The clients each round trains (several rounds, a client sampled again later).
ROUNDS = (("c0", "c1"), ("c2", "c3"), ("c1", "c2"), ("c0", "c3", "c1"))


def _data():
    rng = np.random.default_rng(3)
    out = {}
    for i, n in enumerate(SIZES):
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        # Clients with different optima: the drift SCAFFOLD corrects.
        w = rng.normal(size=(FEATURES, OUTPUTS)) * (1 + i)
        out[f"c{i}"] = (x, (x @ w + i).astype(np.float32))
    return out


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(OUTPUTS)])
    model.compile(optimizer=keras.optimizers.SGD(CLIENT_LR), loss="mse")
    return model


def _engine(model, algorithm, form, *, server_lr=1.0):
    from kerasfed._keras_model import ModelRecipe
    from kerasfed.federated.client_optimizers import client_optimizer_from_keras
    from kerasfed.federated.compiled_parts import CompiledParts

    recipe = ModelRecipe.from_model(model, caller="test", rebuild=False)
    spec = (tf.TensorSpec((None, FEATURES), tf.float32),
            tf.TensorSpec((None, OUTPUTS), tf.float32))
    setup = EngineSetup(
        model=model, recipe=recipe, parts=CompiledParts.of(recipe, spec[1], model.output_shape),
        algorithm=algorithm, client_optimizer=client_optimizer_from_keras(recipe.optimizer_config()),
        server_optimizer=kerasfed.ServerSGD(), server_learning_rate=server_lr, batch_size=BATCH,
        element_spec=spec, federated_evaluation=False, largest_client=max(SIZES),
        local_epochs=2, num_clients=len(SIZES),
    )
    return NativeEngine(setup, form=form)


def _mse_grads(w, b, x, y):
    """Gradient of Keras' mean squared error (mean over outputs, then over the batch)."""
    err = x @ w + b - y
    g = 2.0 * err / err.size
    return x.T @ g, g.sum(axis=0)


def _numpy_scaffold(start, data, rounds, *, epochs, server_lr, weighted):
    w, b = (np.asarray(a, np.float64) for a in start)
    c = [np.zeros_like(w), np.zeros_like(b)]
    ci = {cid: [np.zeros_like(w), np.zeros_like(b)] for cid in data}
    for sampled in rounds:
        dys, dcs, sizes = [], [], []
        for cid in sampled:
            x, y = data[cid]
            yw, yb = w.copy(), b.copy()
            steps = 0
            for _ in range(epochs):
                for s in range(0, len(x), BATCH):
                    gw, gb = _mse_grads(yw, yb, x[s:s + BATCH], y[s:s + BATCH])
                    yw -= CLIENT_LR * (gw - ci[cid][0] + c[0])
                    yb -= CLIENT_LR * (gb - ci[cid][1] + c[1])
                    steps += 1
            new = [ci[cid][0] - c[0] + (w - yw) / (steps * CLIENT_LR),
                   ci[cid][1] - c[1] + (b - yb) / (steps * CLIENT_LR)]
            dys.append([yw - w, yb - b])
            dcs.append([n - o for n, o in zip(new, ci[cid])])
            ci[cid] = new
            sizes.append(epochs * len(x))
        p = np.asarray(sizes, np.float64) if weighted else np.ones(len(sampled))
        p = p / p.sum()
        mean_dy = [sum(pi * d[k] for pi, d in zip(p, dys)) for k in range(2)]
        mean_dc = [sum(pi * d[k] for pi, d in zip(p, dcs)) for k in range(2)]
        w, b = w + server_lr * mean_dy[0], b + server_lr * mean_dy[1]
        c = [c[k] + len(sampled) / len(data) * mean_dc[k] for k in range(2)]
    return [w, b], c, ci


def _run_engine(engine, model, data, rounds):
    state = engine.initial_state(model.get_weights())
    for r, sampled in enumerate(rounds):
        clients = [ClientRound(cid, *data[cid], np.tile(np.arange(len(data[cid][0])), (2, 1)))
                   for cid in sampled]
        state, result = engine.train_round(state, clients, r)
        assert result.participants == list(sampled)
    return state


@pytest.mark.parametrize("form", ["lockstep", "sequential"])
@pytest.mark.parametrize("weighted,server_lr", [(False, 1.0), (True, 0.7)])
def test_scaffold_equals_numpy_over_sampled_rounds(form, weighted, server_lr):
    data, model = _data(), _model()
    engine = _engine(model, kerasfed.Scaffold(weighted=weighted), form, server_lr=server_lr)
    state = _run_engine(engine, model, data, ROUNDS)
    weights, control, client_controls = _numpy_scaffold(
        model.get_weights(), data, ROUNDS, epochs=2, server_lr=server_lr, weighted=weighted)
    for got, want in zip(engine.get_weights(state), weights):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    for got, want in zip(state["algorithm"]["control"], control):
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=2e-6)
    table = engine._client_table  # noqa: SLF001
    assert sorted(table) == sorted(data)
    for cid, want in client_controls.items():
        for got, expected in zip(table.read([cid]), want):
            np.testing.assert_allclose(got[0], expected, rtol=2e-5, atol=2e-6)


def test_scaffold_through_fit_federated_equals_numpy_and_reports_participants():
    data = _data()
    model = _model()
    start = model.get_weights()
    history = kerasfed.fit_federated(
        model, data, rounds=3, local_epochs=2, batch_size=BATCH, shuffle=False,
        clients_per_round=2, algorithm="scaffold", engine="native", seed=5, verbose=0)
    rounds = [tuple(p) for p in history.participants]
    assert len(rounds) == 3 and all(len(p) == 2 for p in rounds)
    weights, _, _ = _numpy_scaffold(start, data, rounds, epochs=2, server_lr=1.0,
                                    weighted=False)
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@needs_tff
def test_scaffold_is_refused_by_the_tff_engine_with_the_way_out():
    with pytest.raises(kerasfed.KerasfedError, match=r"algorithm=Scaffold\(weighted=False\) runs on engine=.native."):
        kerasfed.fit_federated(_model(), _data(), rounds=1, algorithm="scaffold", engine="tff",
                               verbose=0)


def test_scaffold_checks_its_settings():
    with pytest.raises(kerasfed.AlgorithmTypeError, match="weighted"):
        kerasfed.Scaffold(weighted="yes")
    assert kerasfed.Scaffold().name == "scaffold"


def test_scaffold_resumed_from_a_checkpoint_ends_bit_identical(tmp_path):
    # The server control variate travels in the checkpoint's algorithm state, the
    # clients' ones in its client-state store; a resumed run lists every round's
    # participants.
    kwargs = dict(local_epochs=2, batch_size=BATCH, shuffle=True, clients_per_round=2,
                  algorithm="scaffold", engine="native", seed=11, verbose=0)
    whole_model = _model()
    whole = kerasfed.fit_federated(whole_model, _data(), rounds=4, **kwargs)
    kerasfed.fit_federated(_model(), _data(), rounds=2, checkpoint_dir=tmp_path, **kwargs)
    resumed_model = _model()  # as a restarted program would
    resumed = kerasfed.fit_federated(resumed_model, _data(), rounds=4, checkpoint_dir=tmp_path,
                                     **kwargs)
    for a, b in zip(resumed_model.get_weights(), whole_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.participants == whole.participants
    assert resumed.history["loss"] == whole.history["loss"]


def test_client_state_under_several_workers_is_refused_before_training():
    # The store lives in one process: a client drawn by another worker next round
    # would find no state. (A stand-in for a 2-worker strategy's Replicas.)
    class TwoWorkers:
        devices, workers, distributed = [None], 2, True

    from kerasfed._keras_model import ModelRecipe
    from kerasfed.federated.client_optimizers import client_optimizer_from_keras
    from kerasfed.federated.compiled_parts import CompiledParts

    model = _model()
    recipe = ModelRecipe.from_model(model, caller="test", rebuild=False)
    spec = (tf.TensorSpec((None, FEATURES), tf.float32),
            tf.TensorSpec((None, OUTPUTS), tf.float32))
    setup = EngineSetup(
        model=model, recipe=recipe, parts=CompiledParts.of(recipe, spec[1], model.output_shape),
        algorithm=kerasfed.Scaffold(), server_optimizer=kerasfed.ServerSGD(),
        client_optimizer=client_optimizer_from_keras(recipe.optimizer_config()),
        server_learning_rate=1.0, batch_size=BATCH, element_spec=spec,
        federated_evaluation=False, replicas=TwoWorkers())
    with pytest.raises(kerasfed.AlgorithmError, match=r"keeps a state per client.*2 workers"):
        NativeEngine(setup)
