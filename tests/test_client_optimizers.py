"""The TFF client optimizer takes the same steps as the compiled Keras optimizer.

(The native engine's rules are checked on the same cases in test_native_optimizers.py.)
"""

from __future__ import annotations

import sys
from pathlib import Path

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
from kerasfed.federated.engines.tff.optimizers import tff_client_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from optimizer_cases import (  # noqa: E402  (shared with test_native_optimizers.py)
    INITIAL,
    MATCHING,
    STEPS,
    assert_close_to_keras,
    gradients,
    keras_steps,
)
from optimizer_cases import config as _config  # noqa: E402


def _tff_steps(optimizer) -> list[np.ndarray]:
    weights = [tf.constant(w) for w in INITIAL]
    state = optimizer.initialize([tf.TensorSpec(w.shape, tf.float32) for w in INITIAL])
    state = tf.nest.map_structure(tf.convert_to_tensor, state)  # as TFF passes it

    @tf.function  # TFF runs client optimizers inside graphs
    def step(state, weights):
        return optimizer.next(state, weights, gradients(weights))

    for _ in range(STEPS):
        state, weights = step(state, weights)
    return [np.asarray(w) for w in weights]


@pytest.mark.parametrize("make", MATCHING.values(), ids=MATCHING.keys())
def test_tff_optimizer_takes_the_keras_steps(make):
    expected = keras_steps(make())
    got = _tff_steps(tff_client_optimizer(client_optimizer_from_keras(_config(make()))))
    assert_close_to_keras(got, expected)


@pytest.mark.parametrize("make", MATCHING.values(), ids=MATCHING.keys())
def test_native_rule_keeps_tffs_state_slots(make):
    # Mime-lite's server keeps the client optimizer's state; checkpoints carry it
    # between the engines under TFF's slot names, so the native rule's slots must be
    # TFF's state keys (less its hyper-parameters), with the same dtypes and values.
    # (That the native rule takes the Keras steps: test_native_optimizers.py.)
    from kerasfed.federated.engines.native.optimizers import client_rule  # noqa: PLC0415

    spec = client_optimizer_from_keras(_config(make()))
    optimizer, rule = tff_client_optimizer(spec), client_rule(spec)
    tff_state = optimizer.initialize([tf.TensorSpec(w.shape, tf.float32) for w in INITIAL])
    tff_state = tf.nest.map_structure(tf.convert_to_tensor, tff_state)
    hyperparameters = set(optimizer.get_hparams(tff_state))
    tff_weights = native_weights = [tf.constant(w) for w in INITIAL]
    native_state = rule.init(native_weights)
    tff_step, native_step = tf.function(optimizer.next), tf.function(rule.step)
    # Gradients that do not depend on the weights, so float32 rounding cannot feed
    # back through the loss.
    rng = np.random.default_rng(3)
    for _ in range(3):
        grads = [tf.constant(rng.normal(size=w.shape).astype(np.float32)) for w in INITIAL]
        tff_state, tff_weights = tff_step(tff_state, tff_weights, grads)
        native_state, native_weights = native_step(native_state, native_weights, grads)
    for n, t in zip(native_weights, tff_weights):
        np.testing.assert_allclose(np.asarray(n), np.asarray(t), rtol=1e-5, atol=1e-6)
    slots = set(tff_state) - hyperparameters
    assert set(native_state) == slots == set(rule.slots())
    assert rule.num_hyperparameters() == len(hyperparameters)
    for slot in slots:
        want, have = tf.nest.flatten(tff_state[slot]), tf.nest.flatten(native_state[slot])
        assert len(have) == len(want), slot
        for h, w in zip(have, want):
            assert h.dtype == tf.convert_to_tensor(w).dtype, slot
            np.testing.assert_allclose(np.asarray(h), np.asarray(w), rtol=1e-5, atol=1e-6)


def test_every_supported_name_is_covered():
    covered = {type(make()).__name__ for make in MATCHING.values()}
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
