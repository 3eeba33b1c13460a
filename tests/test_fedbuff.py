"""FedBuff (``kerasfed.FedBuff``): buffered asynchronous aggregation on the simulated clock.

With equal client durations and ``buffer_size == concurrency == clients_per_round``
it must equal synchronous unweighted FedAvg; with unequal speeds the staleness
of each buffered update and the server step are checked against a replay done
by hand (numpy SGD deltas); a run killed with SIGKILL
resumes bit-identically (with dropout, deadlines and FedBuff).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import tff_available

from test_devices import BATCH, _local_sgd, _model

needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")


def _clients(sizes=(8,) * 6) -> dict:
    rng = np.random.default_rng(0)
    return {f"c{i}": (rng.normal(size=(n, 3)).astype(np.float32),
                      rng.normal(size=(n, 1)).astype(np.float32))
            for i, n in enumerate(sizes)}


def _delta(weights, data):
    """A client's update: plain SGD on the mean squared error, in order (numpy)."""
    return [a - b for a, b in zip(_local_sgd(weights, *data), weights)]


@pytest.mark.native
def test_equal_speeds_with_buffer_equal_to_concurrency_is_unweighted_fedavg():
    clients = _clients()
    common = dict(rounds=3, clients_per_round=3, batch_size=BATCH, seed=4, engine="native",
                  verbose=0)
    buffered = kerasfed.fit_federated(
        _model(), clients, algorithm=kerasfed.FedBuff(buffer_size=3, concurrency=3),
        devices=kerasfed.Devices(speed=2.0), **common)
    synchronous = kerasfed.fit_federated(_model(), clients, algorithm="fedavg_unweighted",
                                         **common)
    assert buffered.participants == synchronous.participants
    for a, b in zip(buffered.model.get_weights(), synchronous.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(buffered.history["loss"], synchronous.history["loss"],
                               rtol=1e-5)
    assert buffered.history["staleness_max"] == [0.0] * 3
    assert buffered.history["simulated_seconds_total"] == [4.0, 8.0, 12.0]  # 8 examples at 2/s


@pytest.mark.newest_tf_only
def test_stale_updates_are_down_weighted_as_a_hand_replay_says():
    # Two clients train at once, one update per server step: c0 takes 1 s, c1 3 s.
    clients = _clients((8, 8))
    speeds = {"c0": 8.0, "c1": 8.0 / 3.0}
    history = kerasfed.fit_federated(
        _model(), clients, rounds=3, batch_size=BATCH, shuffle=False, seed=0,
        engine="native", verbose=0,
        algorithm=kerasfed.FedBuff(buffer_size=1, concurrency=2),
        devices=kerasfed.Devices(speed=speeds))
    # t=1: c0 (from w0) -> w1; c0 restarts from w1. t=2: c0 (from w1) -> w2; restarts.
    # t=3: c1 (from w0, two steps stale) and c0 (from w2) finish at once; c1 started
    # first, so it is taken: w3 = w2 + (1 + 2) ** -0.5 * delta(c1 at w0).
    assert history.participants == [["c0"], ["c0"], ["c1"]]
    assert history.history["staleness_max"] == [0.0, 0.0, 2.0]
    assert history.history["simulated_seconds_total"] == [1.0, 2.0, 3.0]
    w0 = _model().get_weights()
    w1 = [w + d for w, d in zip(w0, _delta(w0, clients["c0"]))]
    w2 = [w + d for w, d in zip(w1, _delta(w1, clients["c0"]))]
    w3 = [w + 3 ** -0.5 * d for w, d in zip(w2, _delta(w0, clients["c1"]))]
    for a, b in zip(history.model.get_weights(), w3):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.newest_tf_only
def test_fedbuff_settings_are_checked_before_training():
    def fit(algorithm, **kwargs):
        args = dict(rounds=1, batch_size=BATCH, engine="native", verbose=0)
        args.update(kwargs)
        return kerasfed.fit_federated(_model(), _clients(), algorithm=algorithm, **args)

    with pytest.raises(kerasfed.AlgorithmError, match="`buffer_size` of FedBuff"):
        kerasfed.FedBuff(buffer_size=0)
    with pytest.raises(kerasfed.AlgorithmTypeError, match="`concurrency` of FedBuff"):
        kerasfed.FedBuff(concurrency=2.5)
    with pytest.raises(kerasfed.AlgorithmError, match="`staleness` of FedBuff"):
        kerasfed.FedBuff(staleness="hinge")
    with pytest.raises(kerasfed.AlgorithmError, match="`exponent`"):
        kerasfed.FedBuff(exponent=-1.0)
    with pytest.raises(kerasfed.FederatedArgumentError, match="there are 6"):
        fit(kerasfed.FedBuff(concurrency=7))
    with pytest.raises(kerasfed.FederatedArgumentError, match="clients_per_round=2"):
        fit(kerasfed.FedBuff(concurrency=3), clients_per_round=2)
    with pytest.raises(kerasfed.FederatedArgumentError, match="aggregator='mean'"):
        fit(kerasfed.FedBuff(concurrency=3), aggregator="median")
    with pytest.raises(kerasfed.FederatedArgumentError, match="deadline"):
        fit(kerasfed.FedBuff(concurrency=3),
            devices=kerasfed.Devices(speed=1.0, deadline=2.0))
    with pytest.raises(kerasfed.FederatedArgumentError, match="poisson"):
        fit(kerasfed.FedBuff(concurrency=3), client_sampling="poisson", clients_per_round=3)
    with pytest.raises(kerasfed.FederatedArgumentError, match="without attacks"):
        fit(kerasfed.FedBuff(concurrency=3), attack=kerasfed.Attack("sign_flip", fraction=0.3))
    bad = kerasfed.FedBuff(buffer_size=1, concurrency=2, staleness=lambda tau: -1.0)
    with pytest.raises(kerasfed.AlgorithmError, match="returned -1.0"):
        fit(bad, rounds=2)


@needs_tff
@pytest.mark.federated
def test_the_tff_engine_refuses_fedbuff_and_auto_picks_native():
    with pytest.raises(kerasfed.AlgorithmError, match="engine='native'"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="tff", verbose=0,
                               algorithm=kerasfed.FedBuff(buffer_size=2, concurrency=2))
    history = kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="auto", verbose=0,
                                     algorithm=kerasfed.FedBuff(buffer_size=2, concurrency=2))
    assert history.params["engine"] == "native"


# -- Resume after SIGKILL -----------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import kerasfed
    from test_fedbuff import _clients, _model, SETTINGS, SIZES

    class Kill(kerasfed._compat.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:  # after round 2's checkpoint was written
                os.kill(os.getpid(), signal.SIGKILL)

    # One process for both settings (a TensorFlow start is most of its time): the
    # first stops after 2 of its 4 rounds, the second is killed after round 2.
    first, second = sorted(SETTINGS)
    kerasfed.fit_federated(_model(), _clients(SIZES), checkpoint_dir=sys.argv[1] + first,
                           **(SETTINGS[first]() | {{"rounds": 2}}))
    kerasfed.fit_federated(_model(), _clients(SIZES), checkpoint_dir=sys.argv[1] + second,
                           callbacks=[Kill()], **SETTINGS[second]())
""")

SIZES = (8, 6, 9, 5, 7, 8)
SETTINGS = {
    "devices": lambda: dict(
        rounds=4, clients_per_round=3, batch_size=BATCH, seed=2, engine="native", verbose=0,
        devices=kerasfed.Devices(dropout=0.3, speed=kerasfed.LogNormal(2.0, 1.0),
                                 deadline=3.0, stragglers="partial", over_selection=0.4)),
    "fedbuff": lambda: dict(
        rounds=4, batch_size=BATCH, seed=2, engine="native", verbose=0,
        algorithm=kerasfed.FedBuff(buffer_size=2, concurrency=3),
        devices=kerasfed.Devices(dropout=0.2, speed=kerasfed.LogNormal(2.0, 1.0))),
}


@pytest.mark.newest_tf_only
def test_a_run_killed_mid_training_resumes_bit_identically(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=os.path.dirname(__file__)))
    prefix = str(tmp_path / "checkpoints-")
    killed = subprocess.run([sys.executable, str(script), prefix],
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    for name in sorted(SETTINGS):
        # Resumed here, from the dead process's checkpoint, against an uninterrupted run.
        resumed = kerasfed.fit_federated(_model(), _clients(SIZES),
                                         checkpoint_dir=prefix + name, **SETTINGS[name]())
        whole = kerasfed.fit_federated(_model(), _clients(SIZES), **SETTINGS[name]())
        for a, b in zip(resumed.model.get_weights(), whole.model.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert resumed.participants == whole.participants
        np.testing.assert_equal(  # NaN: a round where no client reported has no loss
            resumed.history,
            whole.history | {"round_seconds": resumed.history["round_seconds"]})
