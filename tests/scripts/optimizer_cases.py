"""The compiled Keras optimizers whose steps every engine's client rule must take.

Shared by tests/test_client_optimizers.py (the TFF optimizers) and
tests/test_native_optimizers.py (the native engine's rules), so both check the
same cases against the same Keras reference. Needs no TFF.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerasfed._compat import KERAS_3, keras

STEPS = 6
_RNG = np.random.default_rng(0)
INITIAL = [_RNG.normal(size=(3,)).astype(np.float32), _RNG.normal(size=(2, 2)).astype(np.float32)]
_TARGET = [_RNG.normal(size=(3,)).astype(np.float32), _RNG.normal(size=(2, 2)).astype(np.float32)]
_SCALE = [np.array([0.1, 1.0, 5.0], np.float32), np.array([[2.0, 0.5], [0.01, 3.0]], np.float32)]


def _loss(weights):
    # A badly conditioned quartic: gradients of very different sizes per coordinate,
    # so that epsilon, momentum and the second-moment terms all matter.
    return sum(
        tf.reduce_sum(s * (w - t) ** 2 + 0.1 * (w - t) ** 4)
        for w, t, s in zip(weights, _TARGET, _SCALE)
    )


def gradients(weights):
    """The loss's gradients at ``weights`` (tensors or variables)."""
    weights = [tf.convert_to_tensor(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = _loss(weights)
    return tape.gradient(loss, weights)


def keras_steps(optimizer) -> list[np.ndarray]:
    """``STEPS`` steps of the Keras ``optimizer`` from ``INITIAL``: the reference."""
    make_variable = keras.Variable if KERAS_3 else tf.Variable
    variables = [make_variable(w) for w in INITIAL]
    for _ in range(STEPS):
        optimizer.apply_gradients(zip(gradients(variables), variables))
    return [np.asarray(v) for v in variables]


def config(optimizer) -> dict:
    """What ``client_optimizer_from_keras`` reads (as ``ModelRecipe.optimizer_config()``)."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def assert_close_to_keras(got, expected) -> None:
    assert not np.allclose(expected[0], INITIAL[0])  # the optimizer did move
    # float32 rounding in a different order drifts by ~3e-5 over 6 Adam steps; a
    # different rule (e.g. epsilon outside the square root) is far above this.
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


MATCHING = {
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
}
if not KERAS_3:  # Keras 3 has no legacy optimizers
    MATCHING.update({
        "legacy_sgd_nesterov": lambda: keras.optimizers.legacy.SGD(0.05, momentum=0.9, nesterov=True),
        "legacy_adam": lambda: keras.optimizers.legacy.Adam(0.05),
        "legacy_rmsprop": lambda: keras.optimizers.legacy.RMSprop(0.01, momentum=0.5, centered=True),
    })
