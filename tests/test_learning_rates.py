"""Learning rates by round (``client_learning_rate=``, ``server_learning_rate=``).

The weights after each round are checked against numpy (one client, a linear
model, squared error: every local SGD step is written out), against plain Keras
(a client rate overriding a compiled Adam's rate), and the TFF engine against the
native engine. Every error path of ``round_schedule`` has its own test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.errors import (
    ArgumentError,
    ArgumentTypeError,
    CheckpointMismatchError,
    ServerOptimizerError,
    ServerOptimizerTypeError,
)
from kerasfed.federated.learning_rates import RoundSchedule, round_schedule

needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
ENGINES = [
    pytest.param("native", marks=pytest.mark.native),
    pytest.param("tff", marks=[needs_tff, pytest.mark.federated]),
]
FEATURES, EXAMPLES, BATCH = 3, 8, 4


def _linear_model(optimizer=None) -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(size=(FEATURES, 1)).astype(np.float32),
                       rng.normal(size=(1,)).astype(np.float32)])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.5), loss="mse")
    return model


def _one_client(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"a": (rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32),
                  rng.normal(size=(EXAMPLES, 1)).astype(np.float32))}


def _numpy_rounds(weights, client, rounds, client_rate, server_rate):
    """Weights after each round: one client, local SGD over batches of BATCH in
    order, the server moving by server_rate(r) times the client's delta."""
    x, y = (a.astype(np.float64) for a in client)
    kernel, bias = (w.astype(np.float64) for w in weights)
    after = []
    for r in range(rounds):
        k, b = kernel.copy(), bias.copy()
        for start in range(0, EXAMPLES, BATCH):
            xb, yb = x[start:start + BATCH], y[start:start + BATCH]
            err = xb @ k + b - yb
            k = k - client_rate(r) * 2 / len(xb) * xb.T @ err
            b = b - client_rate(r) * 2 / len(xb) * err.sum(0)
        kernel = kernel + server_rate(r) * (k - kernel)
        bias = bias + server_rate(r) * (b - bias)
        after.append([kernel, bias])
    return after


class _WeightsEachRound(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def _fit(engine, *, rounds=3, model=None, clients=None, **kwargs):
    record = _WeightsEachRound()
    history = kerasfed.fit_federated(
        model or _linear_model(), clients or _one_client(), rounds=rounds, batch_size=BATCH,
        shuffle=False, engine=engine, verbose=0, seed=0, callbacks=[record], **kwargs)
    return history, record.weights


def _assert_rounds_close(got, expected, atol=1e-5):
    assert len(got) == len(expected)
    for round_got, round_expected in zip(got, expected):
        for g, e in zip(round_got, round_expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=atol)


# -- Against numpy -------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_client_rate_function_gives_each_round_its_rate(engine):
    rate = lambda round_num: 0.2 * 0.5 ** round_num  # noqa: E731
    history, weights = _fit(engine, client_learning_rate=rate)
    expected = _numpy_rounds(_linear_model().get_weights(), _one_client()["a"], 3,
                             rate, lambda r: 1.0)
    _assert_rounds_close(weights, expected)
    assert history.history["num_examples"] == [EXAMPLES] * 3


@pytest.mark.parametrize("engine", ENGINES)
def test_keras_schedule_is_evaluated_at_the_round(engine):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.3, decay_steps=1, decay_rate=0.6)
    _, weights = _fit(engine, client_learning_rate=schedule)
    expected = _numpy_rounds(_linear_model().get_weights(), _one_client()["a"], 3,
                             lambda r: 0.3 * 0.6 ** r, lambda r: 1.0)
    _assert_rounds_close(weights, expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_server_rate_function_scales_each_rounds_update(engine):
    server = lambda round_num: [1.0, 0.5, 2.0][round_num]  # noqa: E731
    _, weights = _fit(engine, server_learning_rate=server)
    expected = _numpy_rounds(_linear_model().get_weights(), _one_client()["a"], 3,
                             lambda r: 0.5, server)
    _assert_rounds_close(weights, expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_constant_client_rate_replaces_the_compiled_rate(engine):
    _, weights = _fit(engine, rounds=2, client_learning_rate=0.05)
    expected = _numpy_rounds(_linear_model().get_weights(), _one_client()["a"], 2,
                             lambda r: 0.05, lambda r: 1.0)
    _assert_rounds_close(weights, expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_client_rate_overrides_adams_rate_and_keeps_its_other_settings(engine):
    def adam(lr):
        return keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.9, epsilon=1e-3)

    _, weights = _fit(engine, rounds=1, model=_linear_model(adam(0.5)),
                      client_learning_rate=0.01)
    reference = _linear_model(adam(0.01))  # plain Keras with the overriding rate
    x, y = _one_client()["a"]
    reference.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    _assert_rounds_close(weights, [reference.get_weights()])
    wrong = _linear_model(adam(0.5))  # the compiled rate would end elsewhere
    wrong.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(weights[0][0], wrong.get_weights()[0], atol=1e-4)


# -- The TFF engine against the native engine ----------------------------------------------


def _three_clients():
    rng = np.random.default_rng(5)
    return {f"c{i}": (rng.normal(size=(n, FEATURES)).astype(np.float32),
                      rng.normal(size=(n, 1)).astype(np.float32))
            for i, n in enumerate((5, 8, 11))}


@needs_tff
@pytest.mark.federated
@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "mime"])
def test_tff_schedules_equal_the_native_engines(algorithm):
    kwargs = dict(
        rounds=3, clients=_three_clients(), clients_per_round=2, algorithm=algorithm,
        client_learning_rate=keras.optimizers.schedules.PolynomialDecay(0.1, 2, 0.02),
        server_optimizer=kerasfed.ServerSGD(momentum=0.5),
        server_learning_rate=lambda r: 1.0 + 0.25 * r,
    )
    momentum = keras.optimizers.SGD(0.3, momentum=0.9)
    _, tff_weights = _fit("tff", model=_linear_model(momentum), **kwargs)
    _, native_weights = _fit("native", model=_linear_model(momentum), **kwargs)
    _assert_rounds_close(tff_weights, native_weights)


@needs_tff
@pytest.mark.federated
def test_resumed_tff_run_takes_the_rates_of_its_rounds(tmp_path):
    kwargs = dict(client_learning_rate=lambda r: 0.2 / (1 + r),
                  server_learning_rate=lambda r: 1.0 + 0.5 * r)
    _fit("tff", rounds=2, checkpoint_dir=tmp_path, **kwargs)
    _, resumed = _fit("tff", rounds=4, checkpoint_dir=tmp_path, **kwargs)
    expected = _numpy_rounds(_linear_model().get_weights(), _one_client()["a"], 4,
                             kwargs["client_learning_rate"], kwargs["server_learning_rate"])
    _assert_rounds_close(resumed, expected[2:])


@pytest.mark.native
def test_a_checkpoint_of_another_schedule_is_not_resumed(tmp_path):
    _fit("auto", rounds=1, checkpoint_dir=tmp_path, client_learning_rate=lambda r: 0.1)
    with pytest.raises(CheckpointMismatchError, match="client_learning_rate"):
        _fit("auto", rounds=2, checkpoint_dir=tmp_path, client_learning_rate=0.1)
    with pytest.raises(CheckpointMismatchError, match=r"server_optimizer.*function"):
        _fit("auto", rounds=2, checkpoint_dir=tmp_path, client_learning_rate=lambda r: 0.1,
             server_learning_rate=lambda r: 1.0)


# -- RoundSchedule -------------------------------------------------------------------------


@pytest.mark.native
def test_round_schedule_kinds():
    constant = round_schedule(3, name="server_learning_rate")
    assert isinstance(constant, RoundSchedule)
    assert constant.constant == 3.0 and constant(7) == 3.0 and constant.description == "3.0"
    decay = round_schedule(lambda r: np.float32(0.5) ** r, name="client_learning_rate",
                           rounds=5)
    assert decay.constant is None and decay(3) == 0.125
    assert decay.description.startswith("function ") and decay.description.endswith(", ...")
    keras_schedule = round_schedule(
        keras.optimizers.schedules.InverseTimeDecay(1.0, 1, 1.0), name="client_learning_rate")
    assert math.isclose(keras_schedule(3), 0.25, rel_tol=1e-6)
    assert keras_schedule.description.startswith("InverseTimeDecay(")
    warmup = round_schedule(lambda r: 0.1 * r, name="server_learning_rate", rounds=3)
    assert warmup(0) == 0.0  # a schedule may pass through 0 (warm-up)


# -- Errors --------------------------------------------------------------------------------


@pytest.mark.native
@pytest.mark.parametrize("value", ["0.1", None, [0.1], True, keras.optimizers.SGD])
def test_client_rate_of_a_wrong_type_is_refused(value):
    with pytest.raises(ArgumentTypeError, match=r"`client_learning_rate` to be a positive "
                       r"float, a function of the round index .*Received: "):
        round_schedule(value, name="client_learning_rate")


@pytest.mark.native
def test_server_rate_of_a_wrong_type_keeps_its_error_class():
    with pytest.raises(ServerOptimizerTypeError, match=r"server_learning_rate='fast' of type str"):
        round_schedule("fast", name="server_learning_rate")


@pytest.mark.native
@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), float("inf")])
def test_constant_rates_must_be_finite_and_positive(value):
    with pytest.raises(ArgumentError, match=r"`client_learning_rate` to be a positive float"):
        round_schedule(value, name="client_learning_rate")
    with pytest.raises(ServerOptimizerError, match=r"`server_learning_rate` to be a positive"):
        round_schedule(value, name="server_learning_rate")


@pytest.mark.native
def test_a_function_that_fails_is_reported_with_its_round():
    def broken(round_num):
        return [0.1, 0.1][round_num]

    with pytest.raises(ArgumentError, match=r"failed at round 2 \(IndexError: list index"):
        round_schedule(broken, name="client_learning_rate", rounds=3)


@pytest.mark.native
@pytest.mark.parametrize("returned, shown", [
    ("0.1", r"'0.1' of type str"), (None, "None of type NoneType"),
    (-0.5, "-0.5"), (float("nan"), "nan"), (np.ones(2), r"array\(\[1., 1.\]\)"),
])
def test_a_function_must_return_a_finite_float_at_least_zero(returned, shown):
    with pytest.raises(ArgumentError, match=r"`client_learning_rate`: expected the function to "
                       rf"return a finite float >= 0 for every round. Received at round 0: {shown}"):
        round_schedule(lambda r: returned, name="client_learning_rate")


@pytest.mark.native
def test_every_round_of_the_run_is_checked_before_training():
    with pytest.raises(ServerOptimizerError, match="Received at round 4: -0.1"):
        kerasfed.fit_federated(_linear_model(), _one_client(), rounds=5, engine="native",
                               server_learning_rate=lambda r: 1.0 if r < 4 else -0.1,
                               verbose=0)


@pytest.mark.native
def test_fit_federated_refuses_a_bad_client_rate():
    with pytest.raises(ArgumentTypeError, match="client_learning_rate='0.1' of type str"):
        kerasfed.fit_federated(_linear_model(), _one_client(), rounds=1, engine="native",
                               client_learning_rate="0.1", verbose=0)


@pytest.mark.native
def test_client_rate_with_fedsgd_warns_that_it_has_no_effect():
    with pytest.warns(UserWarning, match="client_learning_rate has no effect with "
                      "algorithm='fedsgd'"):
        kerasfed.fit_federated(_linear_model(), _one_client(), rounds=1, engine="native",
                               algorithm="fedsgd", client_learning_rate=0.1, verbose=0)
