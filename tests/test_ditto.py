"""Ditto (Li et al. 2021) against a numpy reference on a softmax regression.

The reference writes the algorithm out: every client runs FedAvg's local SGD
from the global model, and on the same batches SGD on its personal model with
the gradient of ``loss + lam/2 * ||v - w_t||**2``; the server averages the
global models by examples; each client keeps its personal model.
"""

from __future__ import annotations

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.errors import AlgorithmError, AlgorithmTypeError
from kerasfed.federated.engines.native import engine as native

pytestmark = pytest.mark.native

SIZES = (8, 12, 4)
LR, LAM, BATCH = 0.5, 0.3, 4


def _clients():
    rng = np.random.default_rng(0)
    return {f"c{i}": (rng.normal(size=(n, 4)).astype("float32"),
                      rng.integers(0, 3, n).astype("int32")) for i, n in enumerate(SIZES)}


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="sparse_categorical_crossentropy")
    return model


def _grads(kernel, bias, x, y):
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y), p.mean(axis=0)


def _numpy_ditto(start, clients, rounds):
    global_w = [w.astype(np.float64) for w in start]
    personal = {cid: [w.copy() for w in global_w] for cid in clients}
    for _ in range(rounds):
        finals, sizes = [], []
        for cid, (x, y) in clients.items():
            w, v = [t.copy() for t in global_w], personal[cid]
            for lo in range(0, len(x), BATCH):
                xb, yb = x[lo:lo + BATCH].astype(np.float64), y[lo:lo + BATCH]
                gv = _grads(*v, xb, yb)
                v = [vi - LR * (g + LAM * (vi - wi)) for vi, g, wi in zip(v, gv, global_w)]
                gw = _grads(*w, xb, yb)
                w = [wi - LR * g for wi, g in zip(w, gw)]
            personal[cid] = v
            finals.append(w)
            sizes.append(len(x))
        total = sum(sizes)
        global_w = [sum(n * f[i] for n, f in zip(sizes, finals)) / total
                    for i in range(len(global_w))]
    return global_w, personal


@pytest.mark.parametrize("form", ["lockstep", "sequential"])
def test_ditto_equals_numpy(form, monkeypatch):
    monkeypatch.setattr(native, "_choose_form", lambda model, requested: (form, "test"))
    kept = {}
    train_round = native.NativeEngine.train_round

    def spy(self, state, round_clients, round_num, **kwargs):
        state, result = train_round(self, state, round_clients, round_num, **kwargs)
        kept.update(self.personal_models([c.cid for c in round_clients]))
        return state, result

    monkeypatch.setattr(native.NativeEngine, "train_round", spy)
    clients = _clients()
    start = _model().get_weights()
    history = kerasfed.fit_federated(_model(), clients, rounds=2, batch_size=BATCH,
                                     shuffle=False, algorithm=kerasfed.Ditto(lam=LAM),
                                     engine="native", seed=0, verbose=0)
    want_global, want_personal = _numpy_ditto(start, clients, rounds=2)
    for got, want in zip(history.model.get_weights(), want_global):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert sorted(kept) == sorted(clients)
    for cid in clients:
        for got, want in zip(kept[cid], want_personal[cid]):
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=cid)


def _cross_entropy(weights, x, y):
    logits = x.astype(np.float64) @ weights[0] + weights[1]
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def test_evaluation_clients_that_trained_are_evaluated_with_their_personal_model():
    clients = _clients()
    rng = np.random.default_rng(5)
    held_out = {cid: (rng.normal(size=(6, 4)).astype("float32"),
                      rng.integers(0, 3, 6).astype("int32")) for cid in clients}
    held_out["newcomer"] = held_out["c0"]  # no training client: global model only
    start = _model().get_weights()
    history = kerasfed.fit_federated(_model(), clients, rounds=2, batch_size=BATCH,
                                     shuffle=False, algorithm=kerasfed.Ditto(lam=LAM),
                                     engine="native", seed=0, verbose=0,
                                     evaluation_clients=held_out)
    want_global, want_personal = _numpy_ditto(start, clients, rounds=2)
    per_client = history.client_metrics[-1]
    personalized = []
    for cid in clients:
        x, y = held_out[cid]
        personalized.append(_cross_entropy(want_personal[cid], x, y))
        assert per_client[cid]["personalized_loss"] == pytest.approx(personalized[-1], abs=1e-5)
        assert per_client[cid]["baseline_loss"] == pytest.approx(
            _cross_entropy(want_global, x, y), abs=1e-5)
    assert "personalized_loss" not in per_client["newcomer"]
    assert history.history["fed_eval_personalized_loss"][-1] == pytest.approx(
        np.mean(personalized), abs=1e-5)


def test_ditto_lam_is_checked():
    with pytest.raises(AlgorithmError, match=r"`lam` of Ditto to be a finite float >= 0"):
        kerasfed.Ditto(lam=-1.0)
    with pytest.raises(AlgorithmTypeError, match=r"`lam` of Ditto to be a float >= 0"):
        kerasfed.Ditto(lam="0.1")


@pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
def test_the_tff_engine_refuses_ditto_and_auto_picks_native():
    with pytest.raises(AlgorithmError, match="engine='native'"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="tff", verbose=0,
                               algorithm=kerasfed.Ditto())
    history = kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="auto", verbose=0,
                                     algorithm=kerasfed.Ditto())
    assert history.params["engine"] == "native"
