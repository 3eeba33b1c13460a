"""A user's own algorithm: written on kerasfed.Algorithm, run by the native engine.

A user-written FedAvg trains exactly as the built-in one in both forms; an
algorithm with server state and client state of its own (FedDyn, Acar et al.
2021) matches a numpy reference; mistakes in an algorithm's pieces fail before
training with a message naming the piece.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import keras, tff_available

pytestmark = pytest.mark.native
needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")

FEATURES, OUTPUTS, BATCH, LR = 3, 2, 4, 0.05
SIZES = (5, 9, 12, 7)


def _data():
    rng = np.random.default_rng(1)
    out = {}
    for i, n in enumerate(SIZES):
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        out[f"c{i}"] = (x, (x @ rng.normal(size=(FEATURES, OUTPUTS)) + i).astype(np.float32))
    return out


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(OUTPUTS)])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model


@dataclasses.dataclass(frozen=True)
class MyFedAvg(kerasfed.Algorithm):
    """FedAvg written out by hand: the model delta, weighted by examples."""

    def client_end(self, ctx, weights):
        return kerasfed.ClientOutput(
            update=[w - w0 for w, w0 in zip(weights, ctx.broadcast_weights)])

    def server_update(self, ctx):
        state, weights = ctx.optimizer.step(ctx.optimizer_state, ctx.weights,
                                            [-u for u in ctx.update])
        return weights, state


@dataclasses.dataclass(frozen=True)
class FedDyn(kerasfed.Algorithm):
    """Acar et al. 2021: a dynamic regularizer per client, a server correction h."""

    alpha: float = 0.1
    weighted = False

    def client_state(self, weights):
        return [tf.zeros_like(w) for w in weights]  # the client's gradient correction

    def server_init(self, weights, client_optimizer):
        return {"h": [tf.zeros_like(w) for w in weights]}

    def broadcast(self, state):
        return {}

    def correct_gradient(self, ctx, weights, grads):
        return [g - h + self.alpha * (w - w0)
                for g, h, w, w0 in zip(grads, ctx.state, weights, ctx.broadcast_weights)]

    def client_end(self, ctx, weights):
        delta = [w - w0 for w, w0 in zip(weights, ctx.broadcast_weights)]
        return kerasfed.ClientOutput(
            update=delta, state=[h - self.alpha * d for h, d in zip(ctx.state, delta)])

    def _h(self, ctx):
        share = ctx.participants / ctx.population
        return [h - self.alpha * share * u for h, u in zip(ctx.state["h"], ctx.update)]

    def server_update(self, ctx):
        return ([w + u - h / self.alpha for w, u, h in zip(ctx.weights, ctx.update, self._h(ctx))],
                ctx.optimizer_state)

    def server_state_update(self, ctx):
        return ctx.state if ctx.update is None else {"h": self._h(ctx)}


def _fit(algorithm, form=None, monkeypatch=None, **kwargs):
    if form is not None:
        from kerasfed.federated.engines.native import engine as native

        monkeypatch.setattr(native, "_choose_form", lambda model, requested: (form, "test"))
    model = _model()
    history = kerasfed.fit_federated(
        model, _data(), rounds=3, local_epochs=2, batch_size=BATCH, shuffle=False,
        algorithm=algorithm, engine="native", verbose=0, **kwargs)
    return model, history


@pytest.mark.parametrize("form", ["lockstep", "sequential"])
def test_a_user_written_fedavg_trains_exactly_as_the_built_in(form, monkeypatch):
    mine, history = _fit(MyFedAvg(), form, monkeypatch)
    built_in, reference = _fit(kerasfed.FedAvg(), form, monkeypatch)
    for a, b in zip(mine.get_weights(), built_in.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history.history["loss"] == reference.history["loss"]
    assert history.history["bytes_to_clients"] == reference.history["bytes_to_clients"]


def _mse_grads(w, b, x, y):
    err = x @ w + b - y
    g = 2.0 * err / err.size
    return x.T @ g, g.sum(axis=0)


def test_feddyn_with_client_and_server_state_equals_numpy():
    alpha, rounds = 0.1, 3
    model, history = _fit(FedDyn(alpha=alpha), clients_per_round=2, seed=3)
    start = _model().get_weights()
    data = _data()
    w, b = (np.asarray(a, np.float64) for a in start)
    h = [np.zeros_like(w), np.zeros_like(b)]
    corr = {cid: [np.zeros_like(w), np.zeros_like(b)] for cid in data}
    assert len(history.participants) == rounds
    for sampled in history.participants:
        deltas = []
        for cid in sampled:
            x, y = data[cid]
            yw, yb = w.copy(), b.copy()
            for _ in range(2):
                for s in range(0, len(x), BATCH):
                    gw, gb = _mse_grads(yw, yb, x[s:s + BATCH], y[s:s + BATCH])
                    yw = yw - LR * (gw - corr[cid][0] + alpha * (yw - w))
                    yb = yb - LR * (gb - corr[cid][1] + alpha * (yb - b))
            d = [yw - w, yb - b]
            corr[cid] = [c - alpha * di for c, di in zip(corr[cid], d)]
            deltas.append(d)
        mean = [sum(d[k] for d in deltas) / len(deltas) for k in range(2)]
        h = [hk - alpha * len(sampled) / len(data) * m for hk, m in zip(h, mean)]
        w, b = w + mean[0] - h[0] / alpha, b + mean[1] - h[1] / alpha
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.get_weights()[1], b, rtol=1e-4, atol=1e-5)


def test_engine_auto_runs_a_user_algorithm_natively():
    _, history = _fit(MyFedAvg())
    assert history.params["engine"] == "native"


@dataclasses.dataclass(frozen=True)
class _WrongUpdate(kerasfed.Algorithm):
    def client_end(self, ctx, weights):
        return kerasfed.ClientOutput(update=weights[:1])


@dataclasses.dataclass(frozen=True)
class _TupleOut(kerasfed.Algorithm):
    def client_end(self, ctx, weights):
        return weights, []


@dataclasses.dataclass(frozen=True)
class _ListServer(kerasfed.Algorithm):
    def server_init(self, weights, client_optimizer):
        return [tf.zeros_like(w) for w in weights]


@dataclasses.dataclass(frozen=True)
class _BadStep(kerasfed.Algorithm):
    def local_step(self, ctx, weights, grads, optimizer, optimizer_state):
        return weights


@dataclasses.dataclass(frozen=True)
class _BrokenStep(kerasfed.Algorithm):
    def correct_gradient(self, ctx, weights, grads):
        return grads + ctx.server["missing"]


@dataclasses.dataclass(frozen=True)
class _StateMismatch(kerasfed.Algorithm):
    def client_state(self, weights):
        return [tf.zeros_like(weights[0])]

    def client_end(self, ctx, weights):
        return kerasfed.ClientOutput(update=[w - w0 for w, w0 in zip(weights, ctx.broadcast_weights)],
                                     state=[])


@pytest.mark.parametrize("algorithm,match", [
    (_WrongUpdate(), r"_WrongUpdate.client_end's update to hold 2 tensors"),
    (_TupleOut(), r"_TupleOut.client_end to return a kerasfed.ClientOutput"),
    (_ListServer(), r"_ListServer.server_init to return a dict of tensors. Received: list"),
    (_BadStep(), r"_BadStep.local_step to return \(weights, optimizer_state\)"),
    (_BrokenStep(), r"_BrokenStep.local_step failed on the model's weights before training: "
                    r"KeyError"),
    (_StateMismatch(), r"_StateMismatch.client_end's state to hold 1 tensors"),
])
def test_a_mistake_in_an_algorithm_fails_before_training_naming_the_piece(algorithm, match):
    model = _model()
    before = model.get_weights()
    with pytest.raises(kerasfed.AlgorithmError, match=match):
        kerasfed.fit_federated(model, _data(), rounds=1, algorithm=algorithm, engine="native",
                               verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@needs_tff
def test_the_tff_engine_refuses_a_user_algorithm_naming_the_native_engine():
    with pytest.raises(kerasfed.AlgorithmError, match=r"runs on engine='native'"):
        kerasfed.fit_federated(_model(), _data(), rounds=1, algorithm=MyFedAvg(), engine="tff",
                               verbose=0)


def test_the_readmes_algorithm_trains_exactly_as_the_built_in_fedprox():
    # The README's example class, run as written: FedProx's proximal term by hand.
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(import dataclasses\n.*?class MyProx.*?)\nhistory = ",
                      readme, re.DOTALL).group(1)
    namespace: dict = {"kerasfed": kerasfed}
    exec(block, namespace)  # noqa: S102
    mine, _ = _fit(namespace["MyProx"](mu=0.1))
    built_in, _ = _fit(kerasfed.FedProx(mu=0.1, weighted=True))
    for a, b in zip(mine.get_weights(), built_in.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
