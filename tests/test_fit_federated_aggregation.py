"""``fit_federated(aggregator=..., attack=..., client_sampling=...)`` end to end.

Robustness on digits under attacks, DP against its definition, compression,
checkpoints of aggregator state, and the TFF engine's translations against the
native engine (within 1e-5 where nothing is random).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import KERAS_3, keras, tff_available
from kerasfed.federated import aggregators as agg

pytestmark = pytest.mark.native
needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype("float32"), y.astype("int32")
    clients = {f"c{i}": (x[i:1400:10], y[i:1400:10]) for i in range(10)}
    return clients, (x[1400:], y[1400:])


def _model(seed=0, lr=0.3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _fit(clients, test, **kwargs):
    args = dict(rounds=8, local_epochs=2, batch_size=16, seed=3, engine="native",
                validation_data=test, evaluate_every=8, verbose=0)
    args.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return kerasfed.fit_federated(_model(), clients, **args)


def _accuracy(history):
    return history.history["val_accuracy"][-1]


# The aggregators are engine-neutral numpy (tested alone in test_aggregators.py),
# so the end-to-end runs happen once, under Keras 3, to keep the suite short; the
# Keras 2 native engine runs them in the comparisons with the TFF engine below.
keras_3_only = pytest.mark.skipif(not KERAS_3, reason="run in the Keras 3 environment")
ROBUST = ["median", agg.TrimmedMean(beta=0.3), agg.Krum(byzantine=3), agg.Bulyan(byzantine=1)]


@keras_3_only
def test_robust_combiners_survive_sign_flipping_where_the_mean_collapses(digits):
    clients, test = digits
    clean = _accuracy(_fit(clients, test))
    attack = kerasfed.Attack("sign_flip", fraction=0.3, scale=10.0)
    attacked = _fit(clients, test, attack=attack)
    assert attacked.history["attackers"] == [3] * 8  # all 10 clients every round
    assert clean > 0.85 and _accuracy(attacked) < 0.3
    for aggregator in ROBUST:
        accuracy = _accuracy(_fit(clients, test, attack=attack, aggregator=aggregator))
        assert accuracy > clean - 0.06, (aggregator, accuracy, clean)


@keras_3_only
def test_robust_combiners_survive_label_flipping(digits):
    clients, test = digits
    clean = _accuracy(_fit(clients, test))
    attack = kerasfed.Attack("label_flip", fraction=0.3)
    mean = _accuracy(_fit(clients, test, attack=attack))
    for aggregator in ROBUST:
        accuracy = _accuracy(_fit(clients, test, attack=attack, aggregator=aggregator))
        assert accuracy > clean - 0.06 and accuracy >= mean - 0.02, (aggregator, accuracy)


def test_dp_without_noise_and_a_huge_clip_is_unweighted_fedavg(digits):
    clients, test = digits
    plain = _fit(clients, test, algorithm="fedavg_unweighted", rounds=2)
    dp = _fit(clients, test, rounds=2,
              aggregator=kerasfed.DPMean(noise_multiplier=0.0, clip_norm=1e6))
    for a, b in zip(plain.model.get_weights(), dp.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert dp.history["epsilon"] == [float("inf")] * 2


@keras_3_only
def test_dp_history_has_epsilon_per_round_from_dp_accounting(digits):
    from kerasfed.federated.aggregators import accounting

    clients, test = digits
    dp = kerasfed.DPMean(noise_multiplier=0.8, clip_norm=0.5, target_quantile=0.5,
                         clipped_count_stddev=1.0)
    history = _fit(clients, test, rounds=3, clients_per_round=5, client_sampling="poisson",
                   aggregator=dp)
    h = history.history
    delta = min(1e-5, 10 ** -1.1)
    assert h["dp_delta"] == [delta] * 3 and history.params["dp_delta"] == delta
    expected = [accounting.epsilon(0.8, r, delta=delta, sampling="poisson", num_clients=10,
                                   clients_per_round=5) for r in (1, 2, 3)]
    assert h["epsilon"] == pytest.approx(expected)
    assert h["epsilon"][0] < h["epsilon"][2]
    assert h["clip_norm"][0] == 0.5 and h["clip_norm"][1] != 0.5  # adaptive
    assert all(0.0 <= f <= 1.0 for f in h["clipped_fraction"])
    assert len(h["clients"]) == 3 and len(h["noise_std"]) == 3


@keras_3_only
def test_quantize_8_bits_keeps_accuracy_and_shrinks_bytes(digits):
    clients, test = digits
    dense = _fit(clients, test)
    quantized = _fit(clients, test, aggregator=[kerasfed.Quantize(bits=8), "mean"])
    assert abs(_accuracy(dense) - _accuracy(quantized)) <= 0.01 + 1e-9
    ratio = dense.history["bytes_from_clients"][0] / quantized.history["bytes_from_clients"][0]
    assert 3.0 < ratio <= 4.0  # 32/8 for the update; metric sums stay dense


@keras_3_only
def test_top_k_and_adaptive_clip_resume_from_a_checkpoint_exactly(digits, tmp_path):
    clients, test = digits
    chain = [kerasfed.ClipNorm(0.5, target_quantile=0.5), kerasfed.TopK(0.1), "mean"]
    whole = _fit(clients, test, rounds=4, aggregator=chain, clients_per_round=6)
    _fit(clients, test, rounds=2, aggregator=chain, clients_per_round=6,
         checkpoint_dir=tmp_path)
    resumed = _fit(clients, test, rounds=4, aggregator=chain, clients_per_round=6,
                   checkpoint_dir=tmp_path)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert whole.history["clip_norm"] == resumed.history["clip_norm"]


@keras_3_only
def test_poisson_sampling_varies_the_round_size(digits):
    clients, test = digits
    history = _fit(clients, test, rounds=6, clients_per_round=5, client_sampling="poisson")
    sizes = history.history["clients"]
    assert len(set(sizes)) > 1 and all(0 <= s <= 10 for s in sizes)


@keras_3_only
def test_a_round_with_too_few_clients_for_krum_keeps_the_weights(digits):
    clients, test = digits
    with pytest.warns(RuntimeWarning, match="needs at least 5 clients"):
        kerasfed.fit_federated(_model(), clients, rounds=3, clients_per_round=2,
                               client_sampling="poisson", aggregator=agg.Krum(byzantine=1),
                               engine="native", seed=0, verbose=0)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"aggregator": agg.Krum(byzantine=4), "clients_per_round": 9},
     kerasfed.FederatedArgumentError, "at least 11 clients"),
    ({"aggregator": "average"}, kerasfed.AggregatorError, "unknown aggregator"),
    ({"client_sampling": "stratified"}, kerasfed.FederatedArgumentError, "client_sampling"),
    ({"attack": "sign_flip"}, kerasfed.FederatedArgumentTypeError, "kerasfed.Attack"),
    ({"aggregator": kerasfed.DPMean(1.0, 1.0, accountant="pld")},
     kerasfed.AggregatorError, "poisson"),
])
def test_bad_aggregation_arguments_fail_before_training(digits, kwargs, error, match):
    clients, _ = digits
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=match):
        kerasfed.fit_federated(model, clients, rounds=1, engine="native", verbose=0, **kwargs)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_label_flip_needs_class_labels():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    clients = {"a": (np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32"))}
    with pytest.raises(kerasfed.FederatedArgumentError, match="label_flip"):
        kerasfed.fit_federated(model, clients, rounds=1, engine="native", verbose=0,
                               attack=kerasfed.Attack("label_flip", 0.5))


# -- the TFF engine ---------------------------------------------------------------------------
@needs_tff
@pytest.mark.federated
@pytest.mark.parametrize("aggregator,algorithm", [
    ([kerasfed.ClipNorm(0.3), "mean"], "fedavg"),
    ([kerasfed.ClipNorm(0.3, target_quantile=0.5), "mean"], "fedavg_unweighted"),
    ([kerasfed.Zeroing(0.6), "mean"], "fedavg"),
    (kerasfed.DPMean(noise_multiplier=0.0, clip_norm=0.3), "fedavg"),
])
def test_tff_engine_equals_native_without_randomness(digits, aggregator, algorithm):
    clients, test = digits
    runs = [_fit(clients, test, rounds=3, clients_per_round=6, algorithm=algorithm,
                 aggregator=aggregator, engine=engine) for engine in ("native", "tff")]
    for a, b in zip(*(r.model.get_weights() for r in runs)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    native, tff = (r.history for r in runs)
    for key in ("clip_norm", "clipped_fraction", "zeroed_fraction"):
        if key in tff:  # TFF's clipping and zeroing report these; its DP query does not
            assert native[key] == pytest.approx(tff[key], rel=1e-5), key


@needs_tff
@pytest.mark.federated
def test_tff_engine_runs_quantize(digits):
    clients, test = digits
    history = _fit(clients, test, rounds=4, aggregator=[kerasfed.Quantize(bits=8), "mean"],
                   engine="tff")
    assert _accuracy(history) > 0.6


@needs_tff
@pytest.mark.federated
@pytest.mark.parametrize("kwargs,match", [
    ({"aggregator": "median"}, "engine='native'"),
    ({"aggregator": [kerasfed.TopK(0.1), "mean"]}, "engine='native'"),
    ({"aggregator": kerasfed.SecureSum()}, "secure sums"),
    ({"aggregator": [kerasfed.Quantize(8, rotation=True), "mean"]}, "engine='native'"),
    ({"attack": kerasfed.Attack("sign_flip", 0.3)}, "engine='native'"),
    ({"aggregator": kerasfed.DPMean(1.0, 1.0), "algorithm": "fedsgd"}, "FedSGD"),
])
def test_tff_engine_refuses_what_tff_lacks(digits, kwargs, match):
    clients, _ = digits
    with pytest.raises(kerasfed.FederatedArgumentError, match=match):
        kerasfed.fit_federated(_model(), clients, rounds=1, engine="tff", verbose=0, **kwargs)
