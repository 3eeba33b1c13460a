"""``History.participants``: per round, the clients whose updates were aggregated.

Checked against the run's client sampler (which depends only on the seed and
the round), with clients left out as non-finite, with empty Poisson rounds, and
across a checkpoint resume.
"""

from __future__ import annotations

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.federated.clients import sample_clients

needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
ENGINES = [
    pytest.param("native", marks=pytest.mark.native),
    pytest.param("tff", marks=[needs_tff, pytest.mark.federated]),
]
SIZES = (5, 9, 6, 7, 4, 8)


def _model(lr: float = 0.1) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def _clients() -> dict:
    rng = np.random.default_rng(0)
    return {f"client-{i}": (rng.normal(size=(n, 3)).astype(np.float32),
                            rng.normal(size=(n, 1)).astype(np.float32))
            for i, n in enumerate(SIZES)}


@pytest.mark.parametrize("engine", ENGINES)
def test_participants_are_each_rounds_sampled_clients(engine):
    history = kerasfed.fit_federated(_model(), _clients(), rounds=3, clients_per_round=3,
                                     batch_size=4, seed=7, engine=engine, verbose=0)
    ids = list(_clients())
    expected = [sample_clients(ids, 3, r, 7) for r in range(3)]
    assert history.participants == expected
    assert all(len(set(p)) == 3 and set(p) <= set(ids) for p in history.participants)
    assert "participants" not in history.history  # Keras callbacks expect numbers there
    assert len(history.history["loss"]) == 3


@pytest.mark.native
def test_a_client_left_out_as_non_finite_is_not_a_participant():
    clients = _clients()
    x, y = clients["client-2"]
    clients["client-2"] = (x, np.full_like(y, 3e38))  # its squared error overflows
    with pytest.warns(RuntimeWarning, match="left out"):
        history = kerasfed.fit_federated(_model(), clients, rounds=1, batch_size=4, seed=0,
                                         engine="native", verbose=0)
    assert history.participants == [[c for c in clients if c != "client-2"]]
    assert history.history["num_examples"] == [sum(SIZES) - SIZES[2]]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_round_whose_every_update_was_left_out_has_no_participants(engine):
    with pytest.warns(RuntimeWarning, match="every client's update had NaN"):
        history = kerasfed.fit_federated(_model(lr=1e38), _clients(), rounds=1, local_epochs=3,
                                         batch_size=2, seed=0, engine=engine, verbose=0)
    assert history.participants == [[]]


@pytest.mark.native
def test_empty_poisson_rounds_have_no_participants():
    ids = list(_clients())
    sample = sample_clients
    # A seed whose first four Poisson rounds (probability 1/6 each) include an empty one.
    seed = next(s for s in range(100)
                if any(not sample(ids, 1, r, s, poisson=True) for r in range(4)))
    with pytest.warns(RuntimeWarning, match="no client was sampled"):
        history = kerasfed.fit_federated(_model(), _clients(), rounds=4, clients_per_round=1,
                                         client_sampling="poisson", batch_size=4, seed=seed,
                                         engine="native", verbose=0)
    assert history.participants == [sample(ids, 1, r, seed, poisson=True) for r in range(4)]
    assert [] in history.participants


@pytest.mark.native
def test_a_resumed_run_lists_every_rounds_participants(tmp_path):
    def run(rounds, directory=None):
        return kerasfed.fit_federated(_model(), _clients(), rounds=rounds, clients_per_round=2,
                                      batch_size=4, seed=3, engine="native", verbose=0,
                                      checkpoint_dir=directory)

    whole = run(4)
    run(2, tmp_path)
    resumed = run(4, tmp_path)
    assert resumed.participants == whole.participants
    assert len(resumed.participants) == 4
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"], rel=1e-5)
    again = run(4, tmp_path)  # nothing left to run: every round read back
    assert again.participants == whole.participants
