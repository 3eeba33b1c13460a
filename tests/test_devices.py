"""Simulated devices (``kerasfed.Devices``): dropout, a clock, deadlines, over-selection;
unequal local work (``local_steps``, ``local_epochs`` per client).

Training runs are checked against an independent reference that replays
``history.participants`` with numpy (local SGD on a linear model, then the
FedAvg of the clients that reported); the schedule (who reports, partial steps, simulated seconds) against
numbers worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.federated.devices import Devices, LogNormal, schedule_round
from kerasfed.federated.engines.base import ClientRound

needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
SIZES = (6, 10, 8, 4, 12, 7)
BATCH = 4
LR = 0.1


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model


def _clients() -> dict:
    rng = np.random.default_rng(0)
    return {f"c{i}": (rng.normal(size=(n, 3)).astype(np.float32),
                      rng.normal(size=(n, 1)).astype(np.float32))
            for i, n in enumerate(SIZES)}


def _local_sgd(weights, x, y, epochs=1):
    """Plain SGD on the mean squared error of ``x @ kernel + bias``, in order, batches
    of ``BATCH``: what Keras ``fit(shuffle=False)`` does to ``_model()``."""
    kernel, bias = (np.array(w, np.float64) for w in weights)
    for _ in range(epochs):
        for start in range(0, len(x), BATCH):
            xb, yb = x[start:start + BATCH], y[start:start + BATCH]
            err = xb @ kernel + bias - yb
            kernel = kernel - LR * 2 * xb.T @ err / err.size
            bias = bias - LR * 2 * err.sum(axis=0) / err.size
    return [kernel, bias]


def _keras_fedavg(weights, clients, participants, *, epochs=1, steps=None):
    """FedAvg of ``participants`` from ``weights``, each trained by local SGD (the
    reference above), weighted by the examples each trained on."""
    total, deltas = 0.0, []
    for cid in participants:
        x, y = clients[cid]
        e = epochs(cid) if callable(epochs) else epochs
        if steps is not None:  # the first `steps` batches of the first epoch
            x, y = x[:steps * BATCH], y[:steps * BATCH]
        trained = _local_sgd(weights, x, y, e)
        n = len(x) * e
        deltas.append([n * (a - b) for a, b in zip(trained, weights)])
        total += n
    return [w + sum(d[i] for d in deltas) / total for i, w in enumerate(weights)]


def _replay(history, clients, **work):
    weights = _model().get_weights()
    for participants in history.participants:
        if participants:
            weights = _keras_fedavg(weights, clients, participants, **work)
    return weights


def _close(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)


# -- Dropout ------------------------------------------------------------------------

@pytest.mark.native
def test_a_dropout_run_equals_fedavg_of_the_clients_that_reported():
    clients = _clients()
    history = kerasfed.fit_federated(
        _model(), clients, rounds=3, clients_per_round=4, batch_size=BATCH, shuffle=False,
        seed=3, engine="native", verbose=0, devices=kerasfed.Devices(dropout=0.4))
    dropped = history.history["dropped"]
    assert sum(dropped) > 0  # the seed makes some clients drop out
    assert [len(p) for p in history.participants] == [4 - d for d in dropped]
    _close(history.model.get_weights(), _replay(history, clients))
    assert history.params["devices"]["dropout"] == "0.4"
    assert "simulated_seconds" not in history.history  # no speed: no clock


@pytest.mark.newest_tf_only
def test_dropout_draws_repeat_with_the_seed_and_have_the_asked_rate():
    clients = [ClientRound(cid=f"c{i}", x=np.zeros((4, 1)), y=np.zeros(4),
                           order=np.arange(4)[None]) for i in range(200)]
    devices = Devices(dropout=0.3)

    def dropped(seed, round_num):
        return schedule_round(devices, clients, round_num=round_num, seed=seed, batch_size=2,
                              target=None, bytes_to=0, bytes_from=0).dropped

    assert dropped(1, 0) == dropped(1, 0)
    assert dropped(1, 0) != dropped(1, 1) and dropped(1, 0) != dropped(2, 0)
    rate = np.mean([len(dropped(1, r)) / 200 for r in range(10)])
    assert 0.25 < rate < 0.35


@pytest.mark.newest_tf_only
def test_a_round_where_every_client_drops_out_keeps_the_weights_and_says_so():
    model = _model()
    before = model.get_weights()
    with pytest.warns(RuntimeWarning, match="none of the 2 sampled clients reported"):
        history = kerasfed.fit_federated(
            model, _clients(), rounds=1, clients_per_round=2, batch_size=BATCH, seed=0,
            engine="native", verbose=0, devices=kerasfed.Devices(dropout=0.999999))
    assert history.participants == [[]]
    assert history.history["dropped"] == [2.0]
    _close(model.get_weights(), before)


# -- The clock, deadlines, partial work, over-selection -----------------------------

def _round(sizes, epochs=1):
    return [ClientRound(cid=f"c{i}", x=np.zeros((n, 1)), y=np.zeros(n),
                        order=np.tile(np.arange(n), (epochs, 1))) for i, n in enumerate(sizes)]


@pytest.mark.newest_tf_only
def test_simulated_durations_are_examples_over_speed_plus_payload_over_bandwidth():
    speeds = {"c0": 2.0, "c1": 4.0, "c2": 1.0}
    devices = Devices(speed=speeds, bandwidth=lambda cid: 100.0)
    out = schedule_round(devices, _round([8, 8, 3]), round_num=0, seed=0, batch_size=4,
                         target=None, bytes_to=150, bytes_from=50)
    # (150 + 50) / 100 = 2 s of communication each; 8/2, 8/4, 3/1 s of training.
    assert out.durations == {"c0": 6.0, "c1": 4.0, "c2": 5.0}
    assert out.seconds == 6.0  # the server waits for the slowest
    assert [c.cid for c in out.reporting] == ["c0", "c1", "c2"]
    assert out.dropped == out.late == out.partial == []


@pytest.mark.newest_tf_only
def test_a_deadline_drops_late_clients_or_keeps_their_finished_steps():
    speeds = {"c0": 1.0, "c1": 4.0, "c2": 1.0}
    clients = _round([8, 8, 3], epochs=2)  # steps of 4, 4 | 4, 4 examples; c2: 3 | 3
    drop = schedule_round(Devices(speed=speeds, deadline=5.0), clients, round_num=0, seed=0,
                          batch_size=4, target=None, bytes_to=0, bytes_from=0)
    assert [c.cid for c in drop.reporting] == ["c1"]  # 16/4 = 4 s; c0: 16 s, c2: 6 s
    assert drop.late == ["c0", "c2"] and drop.seconds == 5.0
    partial = schedule_round(Devices(speed=speeds, deadline=5.0, stragglers="partial"),
                             clients, round_num=0, seed=0, batch_size=4, target=None,
                             bytes_to=0, bytes_from=0)
    steps = {c.cid: c.max_steps for c in partial.reporting}
    assert steps == {"c0": 1, "c1": None, "c2": 1}  # 4 s and 3 s of work fit in 5 s
    assert partial.partial == ["c0", "c2"] and partial.late == []
    assert partial.seconds == 5.0


@pytest.mark.newest_tf_only
def test_over_selection_keeps_the_first_to_finish():
    speeds = {"c0": 1.0, "c1": 8.0, "c2": 2.0, "c3": 4.0}
    out = schedule_round(Devices(speed=speeds, over_selection=0.5), _round([8, 8, 8, 8]),
                         round_num=0, seed=0, batch_size=4, target=2, bytes_to=0, bytes_from=0)
    assert [c.cid for c in out.reporting] == ["c1", "c3"]  # 1 s and 2 s
    assert out.late == ["c2", "c0"] and out.seconds == 2.0
    assert Devices(speed=1.0, over_selection=0.3).sampled(10, 100) == 13
    assert Devices(speed=1.0, over_selection=0.3).sampled(10, 11) == 11


@pytest.mark.native
def test_partial_work_at_a_deadline_equals_sgd_on_the_finished_batches():
    clients = _clients()
    speeds = dict.fromkeys(clients, 1.0)
    history = kerasfed.fit_federated(
        _model(), clients, rounds=2, batch_size=BATCH, shuffle=False, seed=0, engine="native",
        verbose=0, devices=kerasfed.Devices(speed=speeds, deadline=9.0, stragglers="partial"))
    # Every client trains at 1 example/s: 9 s finish two steps of 4 (8 examples).
    assert history.history["partial_clients"] == [2.0, 2.0]  # c1 (10) and c4 (12)
    assert history.history["simulated_seconds"] == [9.0, 9.0]
    assert history.history["simulated_seconds_total"] == [9.0, 18.0]
    weights = _model().get_weights()
    for _ in range(2):
        total, acc = 0, None
        for cid in clients:
            n = min(len(clients[cid][0]), 8)
            out = _keras_fedavg(weights, clients, [cid], steps=2)
            acc = [n * (o - w) for o, w in zip(out, weights)] if acc is None else [
                a + n * (o - w) for a, o, w in zip(acc, out, weights)]
            total += n
        weights = [w + a / total for w, a in zip(weights, acc)]
    _close(history.model.get_weights(), weights)


@pytest.mark.native
def test_local_steps_and_local_epochs_per_client_equal_a_numpy_reference():
    clients = _clients()
    epochs = {cid: 1 + i % 3 for i, cid in enumerate(clients)}
    history = kerasfed.fit_federated(
        _model(), clients, rounds=2, batch_size=BATCH, shuffle=False, seed=0, engine="native",
        verbose=0, local_epochs=epochs.__getitem__)
    _close(history.model.get_weights(), _replay(history, clients, epochs=epochs.__getitem__))
    capped = kerasfed.fit_federated(
        _model(), clients, rounds=2, batch_size=BATCH, shuffle=False, seed=0, engine="native",
        verbose=0, local_steps=1)
    assert capped.history["num_examples"] == [BATCH * len(clients)] * 2
    _close(capped.model.get_weights(), _replay(capped, clients, steps=1))


@pytest.mark.parametrize("engine", [
    pytest.param("native", marks=pytest.mark.native),
    pytest.param("tff", marks=[needs_tff, pytest.mark.federated]),
])
def test_both_engines_run_dropout_deadlines_and_step_caps_alike(engine):
    clients = _clients()
    devices = kerasfed.Devices(dropout=0.3, speed=LogNormal(median=2.0, sigma=1.0),
                               deadline=6.0, stragglers="partial", over_selection=0.5)
    history = kerasfed.fit_federated(
        _model(), clients, rounds=3, clients_per_round=3, batch_size=BATCH, seed=5,
        engine=engine, verbose=0, devices=devices, local_steps=2)
    reference = kerasfed.fit_federated(
        _model(), clients, rounds=3, clients_per_round=3, batch_size=BATCH, seed=5,
        engine="native", verbose=0, devices=devices, local_steps=2)
    assert history.participants == reference.participants
    for key in ("dropped", "stragglers", "partial_clients", "simulated_seconds"):
        assert history.history[key] == reference.history[key]
    _close(history.model.get_weights(), reference.model.get_weights())


# -- Errors -------------------------------------------------------------------------

@pytest.mark.newest_tf_only
@pytest.mark.parametrize("kwargs, error, match", [
    ({"dropout": 1.0}, kerasfed.FederatedArgumentError, r"dropout.*\[0, 1\)"),
    ({"dropout": "a"}, kerasfed.FederatedArgumentTypeError, "`dropout` to be a number"),
    ({"speed": "fast"}, kerasfed.FederatedArgumentTypeError, "`speed` to be a number > 0"),
    ({"speed": -1.0}, kerasfed.FederatedArgumentError, "`speed` to be"),
    ({"speed": {"a": 0.0}}, kerasfed.FederatedArgumentError, "client 'a'.*> 0"),
    ({"deadline": 3.0}, kerasfed.FederatedArgumentError, "needs a simulated clock"),
    ({"speed": 1.0, "deadline": 0.0}, kerasfed.FederatedArgumentError, "`deadline` to be > 0"),
    ({"speed": 1.0, "stragglers": "wait"}, kerasfed.FederatedArgumentError, "'drop', 'partial'"),
    ({"speed": 1.0, "stragglers": "partial"}, kerasfed.FederatedArgumentError, "no `deadline`"),
    ({"speed": 1.0, "over_selection": -0.1}, kerasfed.FederatedArgumentError,
     "over_selection"),
    ({"speed": LogNormal(1.0), "bandwidth": True}, kerasfed.FederatedArgumentTypeError,
     "bandwidth"),
])
def test_bad_devices_are_refused_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        kerasfed.Devices(**kwargs)


@pytest.mark.newest_tf_only
def test_bad_device_settings_are_refused_before_training():
    def fit(**kwargs):
        args = dict(rounds=1, batch_size=BATCH, engine="native", verbose=0)
        args.update(kwargs)
        return kerasfed.fit_federated(_model(), _clients(), **args)

    with pytest.raises(kerasfed.FederatedArgumentTypeError, match="kerasfed.Devices"):
        fit(devices={"dropout": 0.1})
    with pytest.raises(kerasfed.FederatedArgumentError, match="dict without client 'c1'"):
        fit(devices=Devices(speed={"c0": 1.0}))
    with pytest.raises(kerasfed.FederatedArgumentError, match="returned|client 'c0'"):
        fit(devices=Devices(speed=lambda cid: 0))
    with pytest.raises(kerasfed.FederatedArgumentError, match="clients_per_round=None"):
        fit(devices=Devices(speed=1.0, over_selection=0.3))
    with pytest.raises(kerasfed.FederatedArgumentError, match="poisson"):
        fit(devices=Devices(speed=1.0, over_selection=0.3), clients_per_round=2,
            client_sampling="poisson")
    with pytest.raises(kerasfed.FederatedArgumentError, match="local_steps.*>= 1"):
        fit(local_steps=0)
    with pytest.raises(kerasfed.FederatedArgumentTypeError, match="local_steps"):
        fit(local_steps=1.5)
    with pytest.raises(kerasfed.FederatedArgumentError, match="returned 0 for client 'c0'"):
        fit(local_epochs=lambda cid: 0)
    with pytest.raises(kerasfed.FederatedArgumentError, match="take none"):
        fit(local_steps=2, algorithm="fedsgd")


@pytest.mark.newest_tf_only
def test_a_secure_sum_is_told_which_sampled_clients_dropped_out(monkeypatch):
    from kerasfed.federated.aggregators.secure_sum import SecureSum

    seen = []
    combine = SecureSum.combine

    def recording(self, updates, context, state):
        seen.append((list(context.cids), list(context.dropped)))
        return combine(self, updates, context, state)

    monkeypatch.setattr(SecureSum, "combine", recording)
    history = kerasfed.fit_federated(
        _model(), _clients(), rounds=3, clients_per_round=4, batch_size=BATCH, seed=3,
        engine="native", verbose=0, aggregator=kerasfed.SecureSum(bits=16),
        devices=kerasfed.Devices(dropout=0.4))
    rounds = [r for r, p in enumerate(history.participants) if p]
    assert [cids for cids, _ in seen] == [history.participants[r] for r in rounds]
    assert [len(dropped) for _, dropped in seen] == [history.history["dropped"][r]
                                                       for r in rounds]
    assert sum(len(d) for _, d in seen) > 0
