"""The TFF client optimizer takes the same steps as the compiled Keras optimizer."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.federated
tff = pytest.importorskip("tensorflow_federated")

import tensorflow as tf  # noqa: E402

from kerasfed._compat import keras  # noqa: E402
from kerasfed.federated.client_optimizers import (  # noqa: E402
    SUPPORTED_KERAS_OPTIMIZERS,
    ClientOptimizerError,
    ClientOptimizerTypeError,
    client_optimizer_from_keras,
)

_STEPS = 6
_RNG = np.random.default_rng(0)
_INITIAL = [_RNG.normal(size=(3,)).astype(np.float32), _RNG.normal(size=(2, 2)).astype(np.float32)]
_TARGET = [_RNG.normal(size=(3,)).astype(np.float32), _RNG.normal(size=(2, 2)).astype(np.float32)]
_SCALE = [np.array([0.1, 1.0, 5.0], np.float32), np.array([[2.0, 0.5], [0.01, 3.0]], np.float32)]


def _loss(weights):
    # A badly conditioned quartic: gradients of very different sizes per coordinate,
    # so that epsilon, momentum and the second-moment terms all matter.
    return sum(
        tf.reduce_sum(s * (w - t) ** 2 + 0.1 * (w - t) ** 4)
        for w, t, s in zip(weights, _TARGET, _SCALE)
    )


def _gradients(weights):
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = _loss(weights)
    return tape.gradient(loss, weights)


def _keras_steps(optimizer) -> list[np.ndarray]:
    variables = [tf.Variable(w) for w in _INITIAL]
    for _ in range(_STEPS):
        optimizer.apply_gradients(zip(_gradients(variables), variables))
    return [v.numpy() for v in variables]


def _tff_steps(optimizer) -> list[np.ndarray]:
    weights = [tf.constant(w) for w in _INITIAL]
    state = optimizer.initialize([tf.TensorSpec(w.shape, tf.float32) for w in _INITIAL])
    state = tf.nest.map_structure(tf.convert_to_tensor, state)  # as TFF passes it

    @tf.function  # TFF runs client optimizers inside graphs
    def step(state, weights):
        return optimizer.next(state, weights, _gradients(weights))

    for _ in range(_STEPS):
        state, weights = step(state, weights)
    return [np.asarray(w) for w in weights]


def _config(optimizer) -> dict:
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


_MATCHING = {
    "sgd": lambda: keras.optimizers.SGD(0.05),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "sgd_nesterov_no_momentum": lambda: keras.optimizers.SGD(0.05, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(0.05),
    "adam_params": lambda: keras.optimizers.Adam(0.05, beta_1=0.8, beta_2=0.95, epsilon=1e-3),
    "adam_weight_decay": lambda: keras.optimizers.Adam(0.05, weight_decay=0.2),
    "adamw": lambda: keras.optimizers.AdamW(0.05, weight_decay=0.2, beta_2=0.9),
    "adagrad": lambda: keras.optimizers.Adagrad(0.1),
    "adagrad_params": lambda: keras.optimizers.Adagrad(
        0.1, initial_accumulator_value=0.01, epsilon=1e-2
    ),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01),
    "rmsprop_epsilon": lambda: keras.optimizers.RMSprop(0.01, epsilon=0.1),
    "rmsprop_momentum": lambda: keras.optimizers.RMSprop(0.01, momentum=0.9),
    "rmsprop_centered": lambda: keras.optimizers.RMSprop(0.01, centered=True),
    "rmsprop_all": lambda: keras.optimizers.RMSprop(
        0.01, rho=0.8, momentum=0.5, epsilon=1e-3, centered=True
    ),
    "legacy_sgd_nesterov": lambda: keras.optimizers.legacy.SGD(0.05, momentum=0.9, nesterov=True),
    "legacy_adam": lambda: keras.optimizers.legacy.Adam(0.05),
    "legacy_rmsprop": lambda: keras.optimizers.legacy.RMSprop(0.01, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("make", _MATCHING.values(), ids=_MATCHING.keys())
def test_tff_optimizer_takes_the_keras_steps(make):
    expected = _keras_steps(make())
    got = _tff_steps(client_optimizer_from_keras(_config(make())))
    assert not np.allclose(expected[0], _INITIAL[0])  # the optimizer did move
    # float32 rounding in a different order drifts by ~3e-5 over 6 Adam steps; a
    # different rule (e.g. epsilon outside the square root) is far above this.
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


def test_every_supported_name_is_covered():
    covered = {type(make()).__name__ for make in _MATCHING.values()}
    assert covered == set(SUPPORTED_KERAS_OPTIMIZERS)


def test_rejects_a_config_that_is_not_a_dict():
    with pytest.raises(ClientOptimizerTypeError, match=r"expected the optimizer as a dict.*str"):
        client_optimizer_from_keras("adam")
    with pytest.raises(ClientOptimizerTypeError, match="class_name"):
        client_optimizer_from_keras({"config": {}})


def test_rejects_an_optimizer_tff_lacks():
    with pytest.raises(
        ClientOptimizerError, match=r"'Adafactor'.*Supported: SGD, Adam, AdamW, Adagrad, RMSprop"
    ):
        client_optimizer_from_keras(_config(keras.optimizers.Adafactor()))


def test_error_names_the_caller():
    with pytest.raises(ClientOptimizerError, match=r"^my_fit: .*'Nadam'"):
        client_optimizer_from_keras(_config(keras.optimizers.Nadam()), caller="my_fit")


@pytest.mark.parametrize(
    ("setting", "value"),
    [("clipnorm", 1.0), ("clipvalue", 0.5), ("global_clipnorm", 1.0), ("use_ema", True)],
)
def test_rejects_settings_tff_cannot_reproduce(setting, value):
    optimizer = keras.optimizers.SGD(0.1, **{setting: value})
    with pytest.raises(ClientOptimizerError, match=rf"sets {setting}={value}.*without `{setting}`"):
        client_optimizer_from_keras(_config(optimizer))


def test_rejects_legacy_clipnorm():
    optimizer = keras.optimizers.legacy.Adam(0.1, clipnorm=1.0)
    with pytest.raises(ClientOptimizerError, match="clipnorm=1.0"):
        client_optimizer_from_keras(_config(optimizer))


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop"])
def test_rejects_weight_decay_where_tff_has_none(name):
    optimizer = getattr(keras.optimizers, name)(0.1, weight_decay=0.01)
    message = rf"{name} optimizer sets weight_decay=0.01.*AdamW"
    with pytest.raises(ClientOptimizerError, match=message):
        client_optimizer_from_keras(_config(optimizer))


def test_rejects_legacy_decay():
    optimizer = keras.optimizers.legacy.SGD(0.1, decay=0.01)
    with pytest.raises(ClientOptimizerError, match="decay=0.01.*constant learning rate"):
        client_optimizer_from_keras(_config(optimizer))


def test_rejects_legacy_adagrad():
    message = r"legacy.Adagrad.*keras.optimizers.Adagrad\(...\)"
    with pytest.raises(ClientOptimizerError, match=message):
        client_optimizer_from_keras(_config(keras.optimizers.legacy.Adagrad(0.1)))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_rejects_amsgrad(name):
    optimizer = getattr(keras.optimizers, name)(0.1, amsgrad=True)
    with pytest.raises(ClientOptimizerError, match="amsgrad=True; TFF has no AMSGrad"):
        client_optimizer_from_keras(_config(optimizer))


def test_rejects_learning_rate_schedules():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
    with pytest.raises(ClientOptimizerError, match="schedule ExponentialDecay.*constant float"):
        client_optimizer_from_keras(_config(keras.optimizers.Adam(schedule)))


@pytest.mark.parametrize("lr", [0.0, -0.1, "0.1", None])
def test_rejects_a_non_positive_learning_rate(lr):
    config = _config(keras.optimizers.SGD())
    config["config"]["learning_rate"] = lr
    with pytest.raises(ClientOptimizerError, match=r"learning_rate to be a positive float"):
        client_optimizer_from_keras(config)


def test_rejects_settings_it_does_not_know():
    config = _config(keras.optimizers.Adam())
    config["config"]["lookahead"] = 5  # e.g. a subclass that changes the rule
    with pytest.raises(ClientOptimizerError, match=r"cannot translate to TFF: \['lookahead'\]"):
        client_optimizer_from_keras(config)
