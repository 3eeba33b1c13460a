"""FedNova (Wang et al. 2020) against a numpy reference.

A linear model with mean squared error, so that every local step can be written
in numpy: clients of different sizes take different numbers of local steps
``tau_i``, and the reference normalizes each client's delta by the summed weight
of its gradients (``||a_i||_1``, counted gradient by gradient rather than with
the closed form FedNova uses), averages with the weights p_i and rescales by
``tau_eff``. Both forms of the native engine, both TensorFlow versions.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.federated.algorithms import ClientContext, get_algorithm
from kerasfed.federated.engines.native import engine as native

pytestmark = pytest.mark.native
needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")

FEATURES, BATCH, LR, ROUNDS = 3, 4, 0.05, 2
UNEQUAL = (5, 9, 16, 7)  # tau_i = 2, 3, 4, 2 steps per epoch
EQUAL = (8, 5, 7, 6)  # tau_i = 2 each, but different weights p_i


def _data(sizes):
    rng = np.random.default_rng(4)
    out = {}
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        # Clients with different optima, so that unequal work pulls the model apart.
        w = rng.normal(size=(FEATURES, 1)) * (1 + i)
        out[f"c{i}"] = (x, (x @ w + i).astype(np.float32))
    return out


def _model(momentum=0.0, nesterov=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=momentum, nesterov=nesterov),
                  loss="mse")
    return model


def _fit(algorithm, sizes, *, form=None, monkeypatch=None, momentum=0.0, nesterov=False,
         server_lr=1.0, engine="native"):
    if form is not None:
        monkeypatch.setattr(native, "_choose_form", lambda model, requested: (form, "test"))
    model = _model(momentum, nesterov)
    start = model.get_weights()
    kerasfed.fit_federated(model, _data(sizes), rounds=ROUNDS, batch_size=BATCH, shuffle=False,
                           algorithm=algorithm, engine=engine, server_learning_rate=server_lr,
                           verbose=0)
    return start, model.get_weights()


def _grads(w, b, x, y):
    """Gradient of Keras' mean squared error over one batch."""
    err = x @ w + b - y
    g = 2.0 * err / err.size
    return x.T @ g, g.sum(axis=0)


def _gradient_weights(steps, momentum, nesterov):
    """a_i: how much each of the ``steps`` gradients counts in the client's delta / lr."""
    weights = []
    for k in range(steps):
        # Gradient k enters the momentum buffer at step k and decays by rho after.
        in_buffer = sum(momentum ** (j - k) for j in range(k, steps))
        weights.append(1.0 + momentum * in_buffer if nesterov else in_buffer)
    return np.asarray(weights)


def _numpy_fednova(start, data, *, momentum=0.0, nesterov=False, server_lr=1.0, normalize=True,
                   weighted=True):
    w, b = (np.asarray(a, np.float64) for a in start)
    for _ in range(ROUNDS):
        deltas, norms, sizes = [], [], []
        for x, y in data.values():
            yw, yb = w.copy(), b.copy()
            acc = [np.zeros_like(w), np.zeros_like(b)]
            steps = 0
            for s in range(0, len(x), BATCH):
                g = _grads(yw, yb, x[s:s + BATCH], y[s:s + BATCH])
                acc = [momentum * a + gi for a, gi in zip(acc, g)]
                step = [momentum * a + gi for a, gi in zip(acc, g)] if nesterov else acc
                yw, yb = yw - LR * step[0], yb - LR * step[1]
                steps += 1
            deltas.append([yw - w, yb - b])
            norms.append(_gradient_weights(steps, momentum, nesterov).sum())
            sizes.append(len(x))
        p = np.asarray(sizes if weighted else np.ones(len(sizes)), np.float64)
        p = p / p.sum()
        if normalize:  # FedNova
            tau_eff = float(p @ np.asarray(norms))
            mean = [tau_eff * sum(pi * d[k] / n for pi, d, n in zip(p, deltas, norms))
                    for k in range(2)]
        else:  # FedAvg
            mean = [sum(pi * d[k] for pi, d in zip(p, deltas)) for k in range(2)]
        w, b = w + server_lr * mean[0], b + server_lr * mean[1]
    return [w, b]


def _assert_close(got, want):
    for g, v in zip(got, want):
        np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["lockstep", "sequential"])
def test_fednova_with_unequal_steps_equals_numpy_and_differs_from_fedavg(form, monkeypatch):
    start, got = _fit("fednova", UNEQUAL, form=form, monkeypatch=monkeypatch)
    _assert_close(got, _numpy_fednova(start, _data(UNEQUAL)))
    # FedAvg lets the clients that took more steps pull harder (objective inconsistency).
    fedavg = _numpy_fednova(start, _data(UNEQUAL), normalize=False)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(got, fedavg)) > 1e-2


# engine="auto": with TFF installed (.venv) too, the TFF engine refuses FedNova and
# "auto" picks the native one.
@pytest.mark.parametrize("momentum,nesterov,server_lr,weighted,engine",
                         [(0.9, False, 1.0, True, "auto"), (0.5, True, 0.7, False, "native")])
def test_fednova_normalizes_momentum_sgd_work_and_composes_with_the_server_rate(
        momentum, nesterov, server_lr, weighted, engine):
    start, got = _fit(kerasfed.FedNova(weighted=weighted), UNEQUAL, momentum=momentum,
                      nesterov=nesterov, server_lr=server_lr, engine=engine)
    want = _numpy_fednova(start, _data(UNEQUAL), momentum=momentum, nesterov=nesterov,
                          server_lr=server_lr, weighted=weighted)
    _assert_close(got, want)


def test_fednova_with_equal_steps_is_fedavg():
    # Equal tau_i but unequal p_i: the example weighting itself is FedAvg's.
    start, fednova = _fit("fednova", EQUAL)
    _assert_close(fednova, _numpy_fednova(start, _data(EQUAL), normalize=False))


def test_a_client_without_steps_sends_zeros_and_no_work():
    algorithm = kerasfed.FedNova()
    weights = [tf.constant([[1.0], [2.0]]), tf.constant([0.5])]
    ctx = ClientContext(broadcast_weights=weights, server={"momentum": tf.constant(0.9),
                                                           "nesterov": tf.constant(0.0)},
                        state=[], learning_rate=tf.constant(LR), local_steps=tf.constant(0.0),
                        examples=tf.constant(0.0))
    out = algorithm.client_end(ctx, weights)
    for u in out.update:
        np.testing.assert_array_equal(u.numpy(), np.zeros(u.shape))
    assert float(out.extras["tau"][0]) == 0.0


def test_fednova_is_registered_and_checks_its_settings():
    assert get_algorithm("fednova") == kerasfed.FedNova(weighted=True)
    assert kerasfed.FedNova(weighted=False).name == "fednova_unweighted"
    with pytest.raises(kerasfed.AlgorithmTypeError, match=r"`weighted` of FedNova.*'yes'"):
        kerasfed.FedNova(weighted="yes")


@needs_tff
def test_fednova_is_refused_by_the_tff_engine_with_the_way_out():
    with pytest.raises(kerasfed.AlgorithmError,
                       match=r"algorithm=FedNova\(weighted=True\) runs on engine='native'"):
        kerasfed.fit_federated(_model(), _data(UNEQUAL), rounds=1, algorithm="fednova",
                               engine="tff", verbose=0)
